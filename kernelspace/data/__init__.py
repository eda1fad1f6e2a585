"""Training data: image folders (clean photos, sharp/blurry pairs) and realistic synthetic blur."""

from .folders import ImagePair, PairedFolder, PhotoFolder, find_pairs, list_images
from .synthetic import BlurParams, SyntheticBlur

__all__ = ["BlurParams", "ImagePair", "PairedFolder", "PhotoFolder", "SyntheticBlur", "find_pairs", "list_images"]
