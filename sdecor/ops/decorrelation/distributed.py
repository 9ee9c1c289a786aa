"""Decorrelation penalty on the global batch of a process group (``decorrelation_loss(..., process_group=pg)``).

Every rank holds a slice ``x_r`` of the global batch ``X = cat(x_0, ..., x_{W-1})`` (rows, i.e.
samples; ranks may hold different numbers of samples, even zero). Every rank returns the same
scalar: the penalty of the *global* batch, exactly what the single-process
:func:`sdecor.decorrelation_loss` returns on ``X``; and the gradient that reaches ``x_r`` is the
slice ``dP/dx_r`` of the single-process gradient (``ddp_grad=False``, the default), or ``W`` times
that slice (``ddp_grad=True``, the scaling that DistributedDataParallel wants; see below).

What is communicated (W ranks, D = G * g features, n = global number of samples; the route is
chosen by the *global* n, as in the single-process op):

* always: one all_gather of the per-rank sample counts (W int64).
* route "D" (n >= g): one all_reduce of the column sums (D floats) for the global mean, then each
  rank centres its slice with the global mean, forms its G partial g x g blocks
  ``Xc_r^T Xc_r`` and one all_reduce sums their upper triangles: G * g * (g + 1) / 2 floats
  (about D * g / 2). The penalty (correlation mode: the variances are the blocks' diagonals) is
  then computed identically on every rank from the summed blocks.
* route "N" (n < g): one all_gather of the samples themselves: W * max_r(n_r) * D elements in the
  input dtype (half for float16/bfloat16 input), fewer than route D's blocks because n < g. Every
  rank then evaluates the single-process route-N formula (n x n Gram matrices, about 4 n^2 D flops,
  replicated on every rank; with n < g this is small).
* backward: nothing. Every collective's output feeds only computation that is replicated
  identically on every rank, so the exact adjoint of "sum over ranks" is the identity on each
  rank's own piece (and of "gather" the rank's own slice of the upstream gradient); no backward
  collective is issued, so ranks cannot deadlock in backward and a rank that does not call
  backward blocks nobody. Route D uses the global mean as a constant: the penalty is a function of
  the covariance, and C(m) = (X - 1 m^T)^T (X - 1 m^T) has dC = -(Xc^T 1) dm^T - dm (1^T Xc) = 0
  at the mean (Xc^T 1 = 0), so the total gradient through the mean is exactly zero (rank r's own
  share of it is not zero, which is why it is dropped rather than propagated from one rank only).

The per-rank math is plain torch on ``x``'s device (the same formulas as
:mod:`sdecor.ops.decorrelation.reference`); when the Triton backend is present the distributed
path still uses it (``backend="auto"`` and ``"reference"`` are accepted, ``"triton"`` is refused):
the fused kernels produce a per-rank gradient in their forward pass, which needs the global
statistics first.

Assumptions: every rank of ``process_group`` calls this op the same number of times with the same
options and the same D, and (for the gradient statement) backpropagates the same multiple of the
returned scalar, as is the case when every rank runs the same training step. The backend of the
group must support ``x``'s device (gloo: CPU, NCCL: CUDA).

How it combines with DistributedDataParallel (DDP)
---------------------------------------------------
DDP all-reduces parameter gradients and divides by W, i.e. it optimises the mean over ranks of the
per-rank losses. A cross-entropy averaged over each rank's slice is correct under that rule. The
global penalty is not a per-rank average: every rank already holds the whole penalty P, and rank r
can only backpropagate ``dP/dx_r``, its own samples' share. With the exact slices
(``ddp_grad=False``), rank r's parameter gradient is ``sum_{k in r} dP/dx_k dx_k/dtheta`` and DDP's
average is ``(1/W) sum_r ... = (1/W) dP/dtheta``: the penalty is weighted W times too little. (The
naive argument "each rank's loss equals the global loss, so the averaged gradient equals the
single-process gradient" would need each rank's gradient to be the *whole* dP/dtheta, which no
rank can compute from its own samples.) With ``ddp_grad=True`` the returned scalar is unchanged
but its gradient is multiplied by W, so that after DDP's averaging the parameters receive exactly
``dP/dtheta`` of the single-process penalty on the concatenated batch (this is also what
``torch.distributed.nn.functional.all_reduce``'s sum-backward convention would give). Use
``ddp_grad=True`` (or :func:`scale_grad` with ``world_size``) inside a DDP training step; use the
default when comparing with single-process gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..._validation import check_choice
from ..collectives import all_gather_rows, all_reduce_replicated, check_process_group
from .options import validate_options
from .reference import as_sample_matrix, decorrelation_reference, select_route

__all__ = ["distributed_decorrelation_loss", "check_process_group", "scale_grad", "communication_volume"]


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Return ``x`` unchanged, with the gradient flowing back through it multiplied by ``factor``."""
    return _ScaleGrad.apply(x, float(factor))


def communication_volume(n: int, features: int, groups: int = 1, world_size: int = 2) -> dict:
    """Elements each rank sends into collectives (forward only; backward sends nothing), by route.

    ``n`` is the global number of samples; route "N" assumes equal slices (n / W per rank).
    """
    g = features // groups
    route = select_route(n, g)
    if route == "D":
        elems = features + groups * g * (g + 1) // 2
    else:
        elems = world_size * -(-n // world_size) * features
    return {"route": route, "elements": elems, "counts": world_size}


def _validate(x, mode, reduction, correction, groups, eps, backend):
    validate_options(x, mode, reduction, correction, groups, eps, backend)
    if backend == "triton":
        raise ValueError("backend='triton' does not support process_group; use backend='auto' or 'reference'")


def _penalty_from_blocks(C, n_prime, mode, eps):
    """Penalty (sum) from the summed centred blocks C = sum_k xc_k xc_k^T, shape (G, g, g)."""
    if mode == "correlation":
        var = torch.diagonal(C, dim1=1, dim2=2) / n_prime  # (G, g)
        s = torch.rsqrt(var + eps)
        M = C * s.unsqueeze(2) * s.unsqueeze(1) / n_prime
    else:
        M = C / n_prime
    return M.square().sum() - torch.diagonal(M, dim1=1, dim2=2).square().sum()


def distributed_decorrelation_loss(
    x: torch.Tensor,
    process_group,
    *,
    mode: str = "correlation",
    reduction: str = "mean",
    correction: int = 1,
    groups: int = 1,
    eps: float = 1e-5,
    backend: str = "auto",
    route: str | None = None,
    ddp_grad: bool = False,
) -> torch.Tensor:
    """Decorrelation penalty of the global batch across the ranks of ``process_group``.

    Same options and return value as :func:`sdecor.decorrelation_loss` (which calls this when its
    ``process_group`` is given), computed on the concatenation of every rank's ``x`` along the
    sample axis. ``route`` forces ``"D"`` or ``"N"`` (tests); by default it is chosen from the
    global number of samples. ``ddp_grad=True`` multiplies the gradient (not the value) by the
    world size, for use inside a DistributedDataParallel step (see the module docstring).

    Raises:
        ValueError: torch.distributed not initialised; fewer than correction + 1 samples in the
            global batch; the checks of :func:`sdecor.decorrelation_loss`; backend="triton".
        TypeError: process_group is not a ProcessGroup; the type checks of decorrelation_loss.
    """
    check_process_group(process_group)
    _validate(x, mode, reduction, correction, groups, eps, backend)
    if route is not None:
        check_choice(route, "route", ("D", "N"))
    group = process_group
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)

    X = as_sample_matrix(x)
    n_local, D = X.shape
    g = D // groups
    sizes_t = [torch.zeros(1, dtype=torch.int64, device=X.device) for _ in range(world)]
    dist.all_gather(sizes_t, torch.tensor([n_local], dtype=torch.int64, device=X.device), group=group)
    sizes = [int(s.item()) for s in sizes_t]
    n = sum(sizes)
    if n < correction + 1:
        raise ValueError(
            f"the global batch needs at least correction + 1 = {correction + 1} samples for a covariance, "
            f"got {n} over {world} ranks (samples are N * prod(spatial))"
        )
    route = route or select_route(n, g)

    if route == "N":
        X_all = all_gather_rows(X, sizes, rank, group)
        loss = decorrelation_reference(
            X_all, mode=mode, reduction=reduction, correction=correction, groups=groups, eps=eps, route="N"
        )
    else:
        compute_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
        Xf = X.to(compute_dtype)
        with torch.no_grad():
            total = Xf.sum(dim=0)
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
            mean = total / n
        Xc = (Xf - mean).reshape(n_local, groups, g).transpose(0, 1)  # (G, n_r, g)
        C_local = Xc.transpose(1, 2) @ Xc  # (G, g, g), this rank's share of the centred blocks
        iu = torch.triu_indices(g, g, device=X.device)
        packed = all_reduce_replicated(C_local[:, iu[0], iu[1]].contiguous(), group)
        upper = packed.new_zeros(groups, g, g)
        upper = upper.index_put((torch.arange(groups, device=X.device)[:, None], iu[0], iu[1]), packed)
        C = upper + upper.transpose(1, 2) - torch.diag_embed(torch.diagonal(upper, dim1=1, dim2=2))
        loss = _penalty_from_blocks(C, n - correction, mode, eps)
        if reduction == "mean":
            loss = loss / (groups * g * (g - 1))
    if ddp_grad and world > 1:
        loss = scale_grad(loss, world)
    return loss
