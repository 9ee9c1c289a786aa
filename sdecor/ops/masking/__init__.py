"""Batched saliency masking: reference, rank-once ops, dispatch, the extension loader."""

from .dispatch import mask_features
from .ranked import mask_fill_ranked, mask_ranks
from .reference import mask_features_reference

__all__ = ["mask_features", "mask_features_reference", "mask_ranks", "mask_fill_ranked"]
