"""Options of the decorrelation penalty and their checks, shared by the single-process dispatch
(:mod:`sdecor.ops.decorrelation.dispatch`) and the global-batch path (:mod:`sdecor.ops.decorrelation.distributed`)."""

from __future__ import annotations

from ..._validation import (
    FLOAT_DTYPES,
    check_choice,
    check_float_tensor,
    check_int,
    check_min_ndim,
    check_positive_float,
)

__all__ = ["MODES", "REDUCTIONS", "BACKENDS", "validate_options"]
MODES = ("correlation", "covariance")
REDUCTIONS = ("mean", "sum")
BACKENDS = ("auto", "reference", "triton")


def validate_options(x, mode, reduction, correction, groups, eps, backend) -> None:
    """Check everything but the sample count (the distributed path counts samples globally)."""
    check_float_tensor(x, "x", FLOAT_DTYPES)
    check_min_ndim(x, "x", 2, "(N, D) or (N, C, *spatial)")
    check_choice(mode, "mode", MODES)
    check_choice(reduction, "reduction", REDUCTIONS)
    check_choice(backend, "backend", BACKENDS)
    check_int(correction, "correction", low=0)
    check_int(groups, "groups", low=1)
    check_positive_float(eps, "eps", allow_zero=True)
    features = x.shape[1]
    if features % groups != 0:
        raise ValueError(f"groups must divide the feature dimension D={features} of x, got groups={groups}")
    if features // groups < 2:
        raise ValueError(
            f"each group needs at least 2 features to decorrelate; x has D={features} features in groups={groups}"
        )
