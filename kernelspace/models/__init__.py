"""Kernel-space networks: each pairs a kernel extractor G(x, y) -> k with a blur operator F(x, k) -> y."""

from .base import ARCHITECTURES, KernelSpaceModel
from .bks import BKSNet
from .kernel_field import KernelField

__all__ = ["ARCHITECTURES", "KernelSpaceModel", "BKSNet", "KernelField"]
