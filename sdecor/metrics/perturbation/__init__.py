"""Perturbation curves: deletion / insertion (RISE), pixel flipping, region perturbation, and the
Saliency-Guided-Training masked-accuracy curve.

``engine`` holds what they share (rank-once masking, chunked scoring, the result builder),
``substrates`` what replaces removed positions; each family has its own module.
"""

from .deletion_insertion import deletion_auc, deletion_curve, insertion_auc, insertion_curve
from .engine import OUTPUTS
from .masked_accuracy import MaskedAccuracyCurve, masked_accuracy_curve
from .pixel_flipping import ORDERS, pixel_flipping, region_perturbation
from .substrates import rise_blur

__all__ = [
    "deletion_curve",
    "deletion_auc",
    "insertion_curve",
    "insertion_auc",
    "pixel_flipping",
    "region_perturbation",
    "masked_accuracy_curve",
    "MaskedAccuracyCurve",
    "rise_blur",
    "OUTPUTS",
    "ORDERS",
]
