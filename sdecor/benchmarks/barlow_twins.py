"""Benchmark suite ``barlow_twins``: our Barlow Twins loss against the original's eager formula.

Every implementation times one forward + backward (gradients of both views) of the loss
(lambd = 0.0051, eps = 1e-5) of two (N, D) views that require grad:

* ``original``: the formula of Barlow Twins' training script (facebookresearch/barlowtwins,
  ``main.py``), eager: ``BatchNorm1d(D, affine=False)`` in training mode on each view, the D x D
  matrix ``c = bn(z1).T @ bn(z2) / N``, ``(diag(c) - 1)^2`` summed plus lambd times the squared
  off-diagonal entries (selected by its flatten/view trick); the baseline of the ratios;
* ``compiled``: ``torch.compile(original, dynamic=False)``;
* ``ours``: :func:`sdecor.ops.barlow_twins_loss` with ``backend="reference"``: the same loss by
  the route that fits the shape (two N x N Gram matrices when N < D, no D x D matrix);
* ``triton`` (CUDA only): ``barlow_twins_loss(backend="triton")``, the fused kernels (on CPU the
  Triton interpreter is not a performance path, so it is listed as skipped).

Sizes: Barlow Twins projects to D = 8192 and trains with batches of 256-2048. CUDA (default
full): N in {256, 1024, 2048} x D in {2048, 8192} plus (8192, 1024), float32 and bfloat16; CPU
and ``quick``: (256, 1024), (256, 4096), (1024, 256), float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Group, Impl

__all__ = ["run", "SUITE", "SIZES", "QUICK_SIZES", "original_loss"]

SUITE = "barlow_twins"
SIZES = [(n, d) for n in (256, 1024, 2048) for d in (2048, 8192)] + [(8192, 1024)]
QUICK_SIZES = [(256, 1024), (256, 4096), (1024, 256)]
LAMBD = 0.0051
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def original_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = LAMBD) -> torch.Tensor:
    """The original's forward, written out: batch norm (train mode, no affine), c = a^T b / N,
    on-diagonal (c_ii - 1)^2 and lambd * off-diagonal c_ij^2 (flatten/view selection)."""
    n, d = z1.shape
    a = F.batch_norm(z1, None, None, training=True, eps=1e-5)
    b = F.batch_norm(z2, None, None, training=True, eps=1e-5)
    c = a.T @ b / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten().pow(2).sum()
    return on_diag + lambd * off_diag


def _ours(z1, z2):
    from ..ops.barlow_twins import barlow_twins_loss

    return barlow_twins_loss(z1, z2, lambd=LAMBD, backend="reference")


def _triton(z1, z2):
    from ..ops.barlow_twins import barlow_twins_loss

    return barlow_twins_loss(z1, z2, lambd=LAMBD, backend="triton")


def _fwd_bwd(loss_fn, z1, z2):
    def fn():
        return torch.autograd.grad(loss_fn(z1, z2), (z1, z2))

    return fn


def _fits(n: int, d: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    need = 4 * (10 * n * d + 4 * d * d) + 64 * 2**20  # the original's D x D matrix and its gradient dominate
    free, _ = torch.cuda.mem_get_info(device)
    return need < 0.8 * free


def run(device: torch.device, quick: bool) -> list[Group]:
    device = torch.device(device)
    cuda = device.type == "cuda"
    sizes = SIZES if cuda and not quick else QUICK_SIZES
    dtypes = (torch.float32, torch.bfloat16) if cuda else (torch.float32,)
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # one compiled function per shape
        if hasattr(cfg, name) and getattr(cfg, name) < 256:
            setattr(cfg, name, 256)
    triton_skip = "Triton interpreter on CPU: not a performance path"
    if cuda:
        from ..ops.barlow_twins.triton import can_run

        ok, why = can_run(torch.empty(2, 2, device=device))
        triton_skip = None if ok else why
    gen = torch.Generator(device="cpu").manual_seed(0)
    groups = []
    for dtype in dtypes:
        for n, d in sizes:
            if not _fits(n, d, device):
                continue
            z1 = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
            z2 = (0.5 * z1.detach() + torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)).requires_grad_()
            impls = [
                Impl("original", _fwd_bwd(original_loss, z1, z2)),
                Impl("compiled", _fwd_bwd(torch.compile(original_loss, dynamic=False), z1, z2)),
                Impl("ours", _fwd_bwd(_ours, z1, z2)),
            ]
            skipped = {}
            if triton_skip is None:
                impls.append(Impl("triton", _fwd_bwd(_triton, z1, z2)))
            else:
                skipped["triton"] = triton_skip
            params = {"N": n, "D": d, "dtype": _DTYPE_NAMES[dtype], "route": "D" if n >= d else "N"}
            groups.append(Group(suite=SUITE, params=params, impls=impls, baseline="original", skipped=skipped))
    return groups
