"""Public API of the Barlow Twins loss: validation, backend dispatch, the nn.Module.

``barlow_twins_loss(z1, z2, *, lambd, eps, backend, process_group)`` returns
L = sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2 of the cross-correlation C = A^T B / n of the
batch-standardised views (see :mod:`sdecor.ops.barlow_twins.reference` for the math).

Backends:

* ``"reference"``: pure torch (any device, float64 too), differentiable by autograd.
* ``"triton"``: the fused Triton kernels (CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1``); the gradients are produced in the forward pass.
* ``"auto"``: triton for CUDA tensors when triton is importable, the reference otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from ..._validation import check_choice, check_positive_float
from .reference import barlow_twins_reference
from .validation import BACKENDS, validate_views

__all__ = ["barlow_twins_loss", "BarlowTwinsLoss"]


def _resolve_backend(z: torch.Tensor, backend: str) -> str:
    if backend == "reference":
        return "reference"
    from . import triton as fused

    ok, why = fused.can_run(z)
    if backend == "triton":
        if not ok:
            raise ValueError(f"backend='triton' cannot run here: {why}")
        return "triton"
    return "triton" if ok and z.is_cuda else "reference"


def barlow_twins_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    lambd: float = 0.0051,
    eps: float = 1e-5,
    backend: str = "auto",
    process_group=None,
) -> torch.Tensor:
    """Barlow Twins loss of two views' embeddings (Zbontar et al. 2021).

    Args:
        z1, z2: (N, D) embeddings of the two views, same shape, dtype and device; float16,
            bfloat16, float32 (computed in float32) or float64 (reference backend). Each view is
            standardised per feature over the batch (biased variance plus ``eps``, as the
            original's ``BatchNorm1d(D, affine=False)`` in training mode).
        lambd: weight of the off-diagonal terms (the original's default 0.0051).
        eps: added to the variances (BatchNorm1d's default 1e-5).
        backend: ``"auto"``, ``"reference"`` or ``"triton"``.
        process_group: a ``torch.distributed.ProcessGroup``: the loss of the global batch (every
            rank's views concatenated along the samples; the standardisation uses the global
            statistics, as the original's SyncBatchNorm, and C is summed over ranks, as its
            all_reduce). Every rank returns the same value, and each rank's views receive their
            slice of the single-process gradient. See :mod:`sdecor.ops.barlow_twins.distributed`.

    Returns:
        A 0-dim tensor: float32 for float16/bfloat16/float32 views, float64 for float64 views.

    Raises:
        TypeError: a view is not a floating tensor; the views' dtypes differ; an option of the
            wrong type.
        ValueError: a view is not 2-D; the shapes or devices differ; fewer than 2 samples;
            negative lambd or eps; unknown backend; backend="triton" where it cannot run (or
            with a process_group); process_group given but torch.distributed not initialised.
    """
    if process_group is not None:
        from .distributed import distributed_barlow_twins_loss

        return distributed_barlow_twins_loss(z1, z2, process_group, lambd=lambd, eps=eps, backend=backend)
    validate_views(z1, z2, lambd, eps, backend)
    if _resolve_backend(z1, backend) == "triton":
        from .triton import barlow_twins_triton

        return barlow_twins_triton(z1, z2, lambd=lambd, eps=eps)
    return barlow_twins_reference(z1, z2, lambd=float(lambd), eps=float(eps))


class BarlowTwinsLoss(nn.Module):
    """``nn.Module`` form of :func:`barlow_twins_loss` with the same options; calling it on
    ``(z1, z2)`` returns ``barlow_twins_loss(z1, z2, ...)``."""

    def __init__(self, lambd: float = 0.0051, eps: float = 1e-5, backend: str = "auto", process_group=None) -> None:
        super().__init__()
        self.lambd = check_positive_float(lambd, "lambd", allow_zero=True)
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.process_group = process_group

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return barlow_twins_loss(
            z1, z2, lambd=self.lambd, eps=self.eps, backend=self.backend, process_group=self.process_group
        )

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}, backend={self.backend!r}"
