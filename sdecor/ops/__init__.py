"""Ops: one module per op (reference, fused backend, dispatch)."""

from .decorrelation import DecorrelationLoss, decorrelation_loss
from .decorrelation_reference import decorrelation_reference
from .mask_features import mask_features
from .mask_features_reference import mask_features_reference
from .ranked_masking import mask_fill_ranked, mask_ranks

__all__ = [
    "decorrelation_loss",
    "DecorrelationLoss",
    "decorrelation_reference",
    "mask_features",
    "mask_features_reference",
    "mask_ranks",
    "mask_fill_ranked",
]
