"""The collectives of the global-batch losses (decorrelation, Barlow Twins) and their adjoints.

Both losses feed every collective's output only into computation replicated identically on
every rank, so the exact adjoint of "sum over ranks" is the identity on each rank's own piece, and
of "gather the ranks' rows" this rank's slice of the upstream gradient: backward issues no
collective (ranks cannot deadlock in backward, and a rank that skips backward blocks nobody).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["check_process_group", "all_reduce_replicated", "all_gather_rows"]


def check_process_group(process_group) -> None:
    """Raise ``ValueError`` unless torch.distributed is initialised; ``TypeError`` unless a ProcessGroup."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "process_group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first (or pass process_group=None)"
        )
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            f"process_group must be a torch.distributed.ProcessGroup (e.g. torch.distributed.group.WORLD), "
            f"got {type(process_group).__name__}"
        )


class _AllReduceReplicated(torch.autograd.Function):
    """Sum over ranks; backward: identity (the output feeds computation replicated on every rank)."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _AllGatherRows(torch.autograd.Function):
    """Concatenate the ranks' rows (sizes may differ); backward: this rank's slice of the gradient."""

    @staticmethod
    def forward(ctx, x, sizes, rank, group):
        padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        ctx.start, ctx.n = sum(sizes[:rank]), sizes[rank]
        return torch.cat([p[:s] for p, s in zip(pieces, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.start : ctx.start + ctx.n], None, None, None


def all_reduce_replicated(x: torch.Tensor, group) -> torch.Tensor:
    """The sum of ``x`` over the ranks of ``group``; its gradient is the upstream gradient itself."""
    return _AllReduceReplicated.apply(x, group)


def all_gather_rows(x: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
    """The ranks' ``x`` (rank r has ``sizes[r]`` rows) concatenated along dim 0 in rank order; the
    gradient of this rank's ``x`` is its slice of the upstream gradient."""
    return _AllGatherRows.apply(x, sizes, rank, group)
