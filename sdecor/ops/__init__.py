"""Ops: one folder per op (reference, fused backend, dispatch)."""

from .barlow_twins import BarlowTwinsLoss, barlow_twins_loss, barlow_twins_reference
from .decorrelation import DecorrelationLoss, decorrelation_loss, decorrelation_reference
from .masking import mask_features, mask_features_reference, mask_fill_ranked, mask_ranks

__all__ = [
    "barlow_twins_loss",
    "BarlowTwinsLoss",
    "barlow_twins_reference",
    "decorrelation_loss",
    "DecorrelationLoss",
    "decorrelation_reference",
    "mask_features",
    "mask_features_reference",
    "mask_ranks",
    "mask_fill_ranked",
]
