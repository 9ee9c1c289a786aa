"""Ops: one folder per op (reference, fused backend, dispatch)."""

from .decorrelation import DecorrelationLoss, decorrelation_loss, decorrelation_reference
from .masking import mask_features, mask_features_reference, mask_fill_ranked, mask_ranks

__all__ = [
    "decorrelation_loss",
    "DecorrelationLoss",
    "decorrelation_reference",
    "mask_features",
    "mask_features_reference",
    "mask_ranks",
    "mask_fill_ranked",
]
