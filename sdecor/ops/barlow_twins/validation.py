"""Argument checks of the Barlow Twins loss (shared by the dispatch and the distributed path)."""

from __future__ import annotations

from ..._validation import FLOAT_DTYPES, check_choice, check_float_tensor, check_positive_float

__all__ = ["validate_views", "BACKENDS"]

BACKENDS = ("auto", "reference", "triton")


def validate_views(z1, z2, lambd, eps, backend, min_samples: int = 2) -> None:
    """Check the two views and the options (``min_samples``: 0 where samples are counted globally)."""
    check_float_tensor(z1, "z1", FLOAT_DTYPES)
    check_float_tensor(z2, "z2", FLOAT_DTYPES)
    if z1.ndim != 2:
        raise ValueError(f"z1 must be an (N, D) matrix of embeddings, got shape {tuple(z1.shape)}")
    if z2.shape != z1.shape:
        raise ValueError(f"z2 must have the shape of z1 {tuple(z1.shape)}, got {tuple(z2.shape)}")
    if z2.dtype != z1.dtype:
        raise TypeError(f"z2 must have the dtype of z1 ({z1.dtype}), got {z2.dtype}")
    if z2.device != z1.device:
        raise ValueError(f"z2 must be on the device of z1 ({z1.device}), got {z2.device}")
    if z1.shape[1] < 1:
        raise ValueError(f"z1 must have at least one feature, got shape {tuple(z1.shape)}")
    if z1.shape[0] < min_samples:
        raise ValueError(f"the views need at least {min_samples} samples for batch standardisation, got {z1.shape[0]}")
    check_positive_float(lambd, "lambd", allow_zero=True)
    check_positive_float(eps, "eps", allow_zero=True)
    check_choice(backend, "backend", BACKENDS)
