"""Barlow Twins loss on the global batch of a process group (``barlow_twins_loss(..., process_group=pg)``).

Every rank holds a slice of both views (rows; ranks may hold different numbers of samples, even
zero). Every rank returns the same scalar, the single-process loss of the concatenated batch, and
the gradient reaching each rank's views is that rank's slice of the single-process gradient. This
is what the original training script computes under DistributedDataParallel: its
``SyncBatchNorm`` standardises with the global batch statistics, and it all-reduces
``bn(z1).T @ bn(z2) / batch_size`` (the global batch size) before the loss.

What is communicated (W ranks, n global samples, D features; the route is chosen by the global n):

* always: one all_gather of the per-rank sample counts (W int64).
* route "D" (n >= D): one all_reduce of the column sums of both views (2 D floats, no gradient:
  the loss does not depend on the mean to first order, see below), then one all_reduce of this
  rank's centred sums of squares (2 D) and centred cross products Z1c^T Z2c (D x D): D^2 + 2 D
  floats. Standardisation and C = s1 R s2 / n are then formed identically on every rank.
* route "N" (n < D): one all_gather of each view's samples (2 W max_r(n_r) D elements), then every
  rank evaluates the single-process route-N formula (n x n Gram matrices).
* backward: nothing. Every collective's output feeds only computation replicated identically on
  every rank, so the adjoint of "sum over ranks" is the identity on each rank's own term (and of
  "gather" the rank's own slice). The global means are used as constants: C and the variances
  depend on the mean m1 only through Z1c^T 1 terms that vanish at the global mean (sum_k Z2c_k = 0,
  sum_k Z1c_k = 0), so the total gradient through the means is exactly zero.

Under DistributedDataParallel, whose gradient averaging weights a per-rank slice 1/W too little,
multiply the returned loss's gradient by W (as ``ddp_grad=True`` does for the decorrelation
penalty), or use the loss as the original does, where the per-rank loss is the global loss and
DDP's average of the slices' parameter gradients is 1/W of the single-process gradient (the
original's learning rate absorbs that constant).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..collectives import all_gather_rows, all_reduce_replicated, check_process_group
from .reference import barlow_twins_reference, select_route
from .validation import validate_views

__all__ = ["distributed_barlow_twins_loss"]


def distributed_barlow_twins_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    process_group,
    *,
    lambd: float = 0.0051,
    eps: float = 1e-5,
    backend: str = "auto",
    route: str | None = None,
) -> torch.Tensor:
    """Barlow Twins loss of the global batch across the ranks of ``process_group``.

    Same options and return value as :func:`sdecor.ops.barlow_twins_loss` (which calls this when
    its ``process_group`` is given). ``route`` forces ``"D"`` or ``"N"`` (tests); by default it is
    chosen from the global number of samples. The per-rank math is plain torch on the views'
    device (backend "triton" is refused).

    Raises:
        ValueError: torch.distributed not initialised; fewer than 2 samples in the global batch;
            backend="triton"; route not "D" or "N"; the checks of barlow_twins_loss.
        TypeError: process_group is not a ProcessGroup; the type checks of barlow_twins_loss.
    """
    check_process_group(process_group)
    validate_views(z1, z2, lambd, eps, backend, min_samples=0)
    if backend == "triton":
        raise ValueError("backend='triton' does not support process_group; use backend='auto' or 'reference'")
    if route is not None and route not in ("D", "N"):
        raise ValueError(f"route must be 'D' or 'N', got {route!r}")
    group = process_group
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n_local, D = z1.shape
    counts = [torch.zeros(1, dtype=torch.int64, device=z1.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([n_local], dtype=torch.int64, device=z1.device), group=group)
    sizes = [int(c.item()) for c in counts]
    n = sum(sizes)
    if n < 2:
        raise ValueError(f"the global batch needs at least 2 samples for batch standardisation, got {n}")
    lambd, eps = float(lambd), float(eps)
    route = route or select_route(n, D)
    if route == "N":
        z1_all = all_gather_rows(z1, sizes, rank, group)
        z2_all = all_gather_rows(z2, sizes, rank, group)
        return barlow_twins_reference(z1_all, z2_all, lambd=lambd, eps=eps, route="N")

    compute = torch.float64 if z1.dtype == torch.float64 else torch.float32
    a, b = z1.to(compute), z2.to(compute)
    with torch.no_grad():
        sums = torch.cat([a.sum(dim=0), b.sum(dim=0)])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        mean1, mean2 = (sums / n).split(D)
    ac, bc = a - mean1, b - mean2
    local = torch.cat([ac.square().sum(dim=0), bc.square().sum(dim=0), (ac.transpose(0, 1) @ bc).reshape(-1)])
    total = all_reduce_replicated(local, group)
    ss1, ss2, R = total[:D], total[D : 2 * D], total[2 * D :].reshape(D, D)
    s1 = torch.rsqrt(ss1 / n + eps)
    s2 = torch.rsqrt(ss2 / n + eps)
    C = s1[:, None] * R * s2[None, :] / n
    diag = torch.diagonal(C)
    return (1.0 - diag).square().sum() + lambd * (C.square().sum() - diag.square().sum())
