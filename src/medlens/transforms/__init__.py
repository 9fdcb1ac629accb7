"""Preprocessing (deterministic, shared by training and deployment) and training augmentation."""

from medlens.transforms.augment import BatchAugment, flip_variants
from medlens.transforms.preprocess import Preprocessor

__all__ = ["BatchAugment", "Preprocessor", "flip_variants"]
