"""Public API of the decorrelation penalty: validation, backend dispatch, the nn.Module.

``decorrelation_loss(x, *, mode, reduction, correction, groups, eps, backend)`` returns the
scalar penalty P = sum_{i != j} M_ij^2 over the diagonal blocks of the covariance or correlation
matrix M of the features of ``x`` (see :mod:`sdecor.ops.decorrelation.reference` for the math).

Backends:

* ``"reference"``: pure torch (any device, float64 too), differentiable by autograd.
* ``"triton"``: the fused Triton kernels (CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1``); the gradient is produced in the forward pass.
* ``"auto"``: triton for CUDA tensors when triton is importable, the reference otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from ..._validation import check_choice, check_int, check_positive_float
from .options import BACKENDS, MODES, REDUCTIONS, validate_options
from .reference import decorrelation_reference

__all__ = ["decorrelation_loss", "DecorrelationLoss", "MODES", "REDUCTIONS", "BACKENDS"]


def _validate(x, mode, reduction, correction, groups, eps, backend) -> None:
    validate_options(x, mode, reduction, correction, groups, eps, backend)
    features = x.shape[1]
    n = x.numel() // features if features else 0
    if n < correction + 1:
        raise ValueError(
            f"x needs at least correction + 1 = {correction + 1} samples for a covariance, got {n} "
            f"(shape {tuple(x.shape)}; samples are N * prod(spatial))"
        )


def _resolve_backend(x: torch.Tensor, backend: str) -> str:
    if backend == "reference":
        return "reference"
    from . import triton as decorrelation_triton

    ok, why = decorrelation_triton.can_run(x)
    if backend == "triton":
        if not ok:
            raise ValueError(f"backend='triton' cannot run here: {why}")
        return "triton"
    return "triton" if ok and x.is_cuda else "reference"


def decorrelation_loss(
    x: torch.Tensor,
    *,
    mode: str = "correlation",
    reduction: str = "mean",
    correction: int = 1,
    groups: int = 1,
    eps: float = 1e-5,
    backend: str = "auto",
    process_group=None,
) -> torch.Tensor:
    """Off-diagonal squared Frobenius norm of the features' covariance or correlation matrix.

    Args:
        x: (N, D) features, or (N, C, *spatial) feature maps (C features, N*prod(spatial) samples).
            float16, bfloat16, float32 (accumulated in float32) or float64 (reference backend).
        mode: ``"correlation"`` (default, scale invariant) or ``"covariance"``.
        reduction: ``"mean"`` (sum divided by G*g*(g-1), the number of penalised entries) or ``"sum"``.
        correction: n - correction divides the covariance (1: unbiased, 0: biased / DeCov).
        groups: G; the D features are split into G equal groups, and only the G diagonal g x g
            blocks (g = D / G) are penalised.
        eps: added to the variances in correlation mode (a constant feature stays finite).
        backend: ``"auto"``, ``"reference"`` or ``"triton"``.
        process_group: a ``torch.distributed.ProcessGroup`` (e.g. ``torch.distributed.group.WORLD``)
            to compute the penalty of the global batch: the concatenation of every rank's ``x``
            along the samples. Every rank returns the same value, the single-process penalty of
            the concatenated batch, and the gradient reaching ``x`` is this rank's slice of the
            single-process gradient. Under DistributedDataParallel, whose gradient averaging
            would weight this slice 1/W too little, use
            ``sdecor.ops.decorrelation.distributed.distributed_decorrelation_loss(..., ddp_grad=True)``.
            Communication: route D all-reduces the G upper triangles of the g x g blocks plus D
            column sums; route N (global n < g) all-gathers the samples; nothing in backward.
            Uses the torch math on any device (backend "triton" is refused). See
            :mod:`sdecor.ops.decorrelation.distributed`.

    Returns:
        A 0-dim tensor: float32 for float16/bfloat16/float32 input, float64 for float64 input.

    Raises:
        TypeError: x is not a tensor or not floating point; an option of the wrong type.
        ValueError: x.ndim < 2; fewer than correction + 1 samples; groups not dividing D or
            leaving fewer than 2 features per group; unknown mode, reduction or backend;
            backend="triton" where it cannot run; process_group given but torch.distributed not
            initialised.
    """
    if process_group is not None:
        from .distributed import distributed_decorrelation_loss

        return distributed_decorrelation_loss(
            x,
            process_group,
            mode=mode,
            reduction=reduction,
            correction=correction,
            groups=groups,
            eps=eps,
            backend=backend,
        )
    _validate(x, mode, reduction, correction, groups, eps, backend)
    chosen = _resolve_backend(x, backend)
    if chosen == "triton":
        from .triton import decorrelation_triton

        return decorrelation_triton(x, mode=mode, reduction=reduction, correction=correction, groups=groups, eps=eps)
    return decorrelation_reference(x, mode=mode, reduction=reduction, correction=correction, groups=groups, eps=eps)


class DecorrelationLoss(nn.Module):
    """``nn.Module`` form of :func:`decorrelation_loss` with the same options.

    ``weight`` multiplies the penalty (default 1); ``process_group`` computes it on the global
    batch across ranks (see :func:`decorrelation_loss`). Calling the module on ``x`` returns
    ``weight * decorrelation_loss(x, ...)``.
    """

    def __init__(
        self,
        mode: str = "correlation",
        reduction: str = "mean",
        correction: int = 1,
        groups: int = 1,
        eps: float = 1e-5,
        backend: str = "auto",
        weight: float = 1.0,
        process_group=None,
    ) -> None:
        super().__init__()
        check_choice(mode, "mode", MODES)
        check_choice(reduction, "reduction", REDUCTIONS)
        check_choice(backend, "backend", BACKENDS)
        check_int(correction, "correction", low=0)
        check_int(groups, "groups", low=1)
        check_positive_float(eps, "eps", allow_zero=True)
        self.mode, self.reduction, self.correction = mode, reduction, correction
        self.groups, self.eps, self.backend = groups, eps, backend
        self.weight = float(weight)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loss = decorrelation_loss(
            x,
            mode=self.mode,
            reduction=self.reduction,
            correction=self.correction,
            groups=self.groups,
            eps=self.eps,
            backend=self.backend,
            process_group=self.process_group,
        )
        return loss * self.weight if self.weight != 1.0 else loss

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, reduction={self.reduction!r}, correction={self.correction}, "
            f"groups={self.groups}, eps={self.eps}, backend={self.backend!r}, weight={self.weight}"
        )
