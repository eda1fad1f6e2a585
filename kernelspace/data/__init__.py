"""Training data: realistic synthetic blur from clean photos (:class:`SyntheticBlur`)."""

from .synthetic import BlurParams, SyntheticBlur

__all__ = ["BlurParams", "SyntheticBlur"]
