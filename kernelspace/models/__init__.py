"""Kernel-space networks: each pairs a kernel extractor G(x, y) -> k with a blur operator F(x, k) -> y."""

from .base import ARCHITECTURES, KernelSpaceModel
from .bks import BKSNet

__all__ = ["ARCHITECTURES", "KernelSpaceModel", "BKSNet"]
