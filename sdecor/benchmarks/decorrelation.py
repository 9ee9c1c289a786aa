"""Benchmark suite ``decorrelation``: the fused Triton penalty against the torch reference.

Every implementation times one forward + backward of the penalty (default options:
correlation mode, mean reduction, correction 1, one group) of an (N, D) input that requires
grad:

* ``triton``: ``decorrelation_loss(x, backend="triton")`` (CUDA only: on CPU the Triton
  interpreter is not a performance path, so it is listed as skipped);
* ``reference``: the pure-torch reference, eager (the baseline of the ratios);
* ``compiled``: ``torch.compile(reference, dynamic=False)``;
* ``matmul_floor`` (CUDA): the two cuBLAS matmuls the chosen route needs, in x's dtype, nothing
  else: route D (N >= D) ``(D,N)@(N,D)`` then ``(N,D)@(D,D)``; route N ``(N,D)@(D,N)`` then
  ``(N,N)@(N,D)``. A fused kernel cannot beat this by much; the tables print every
  implementation's time / this floor's time.

Groups: N in {256, 1024, 8192} x D in {128, 512, 2048, 8192}, plus (8192, 4096), in float32 and
bfloat16 on CUDA (``quick``: N in {256, 1024} x D in {128, 512}); on CPU, float32 only, with
``quick`` N in {256, 1024} x D in {128, 512}. Settings that would not fit in free GPU memory are
left out.

Memory: ``peak MB`` is the peak allocation of one forward + backward above what was allocated
before it, the returned gradient included (CUDA only). The ``bound MB`` column is what the fused
kernels should stay within: N*D + min(N, D)^2 elements of the input's dtype (:func:`bound_mb`);
the eager reference's and the matmul floor's peaks stand beside it in the same table.
"""

from __future__ import annotations

import torch

from .common import Group, Impl

__all__ = ["run", "SUITE", "SIZES", "QUICK_SIZES", "bound_mb"]

SUITE = "decorrelation"
SIZES = [(n, d) for n in (256, 1024, 8192) for d in (128, 512, 2048, 8192)] + [(8192, 4096)]
QUICK_SIZES = [(n, d) for n in (256, 1024) for d in (128, 512)]
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _fwd_bwd(loss_fn, x: torch.Tensor):
    """Forward + backward; the gradient is returned and dropped, never kept in ``x.grad``, so the
    peak memory of a call counts the (N, D) gradient it produces (nothing is held between calls)."""

    def fn():
        return torch.autograd.grad(loss_fn(x), x)

    return fn


def bound_mb(n: int, d: int, dtype: torch.dtype) -> float:
    """Memory bound for the penalty's forward + backward: N*D + min(N, D)^2 elements of
    ``dtype`` (the gradient and one D x D or N x N block), in MiB (2**20 bytes, like ``peak MB``)."""
    return (n * d + min(n, d) ** 2) * torch.empty((), dtype=dtype).element_size() / 2**20


def _reference_loss(x):
    from ..ops.decorrelation.reference import decorrelation_reference

    return decorrelation_reference(x)


def _compiled_loss():
    """A fresh compiled function per group: each one is specialised to its shape (dynamic=False)."""
    from ..ops.decorrelation.reference import decorrelation_reference

    def loss(x):
        return decorrelation_reference(x)

    return torch.compile(loss, dynamic=False)


def _triton_loss(x):
    from ..ops.decorrelation.dispatch import decorrelation_loss

    return decorrelation_loss(x, backend="triton")


def _matmul_floor(x: torch.Tensor):
    n, d = x.shape
    if n >= d:  # route D

        def fn():
            m = x.t() @ x
            return x @ m

    else:  # route N

        def fn():
            k = x @ x.t()
            return k @ x

    return fn


def _fits(n: int, d: int, dtype: torch.dtype, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    # the reference's temporaries dominate: a few (N, D) float32 copies and (D, D) or (N, N) blocks
    need = 4 * (8 * n * d + 3 * min(n, d) ** 2) + 64 * 2**20
    free, _ = torch.cuda.mem_get_info(device)
    return need < 0.8 * free


def _raise_recompile_limit(limit: int = 256) -> None:
    """One compiled function per group and shape: keep dynamo from falling back to eager."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


def run(device: torch.device, quick: bool) -> list[Group]:
    device = torch.device(device)
    cuda = device.type == "cuda"
    sizes = QUICK_SIZES if quick else SIZES
    dtypes = (torch.float32, torch.bfloat16) if cuda else (torch.float32,)
    _raise_recompile_limit()
    triton_skip = None
    if not cuda:
        triton_skip = "Triton interpreter on CPU: not a performance path"
    else:
        from ..ops.decorrelation.triton import can_run

        ok, why = can_run(torch.empty(2, 2, device=device))
        triton_skip = None if ok else why
    gen = torch.Generator(device="cpu").manual_seed(0)
    groups = []
    for dtype in dtypes:
        for n, d in sizes:
            if not _fits(n, d, dtype, device):
                continue
            x = (torch.randn(n, d, generator=gen) + 0.5).to(device=device, dtype=dtype).requires_grad_(True)
            impls = []
            skipped = {}
            if triton_skip is None:
                impls.append(Impl("triton", _fwd_bwd(_triton_loss, x)))
            else:
                skipped["triton"] = triton_skip
            impls.append(Impl("reference", _fwd_bwd(_reference_loss, x)))
            impls.append(Impl("compiled", _fwd_bwd(_compiled_loss(), x)))
            if cuda:
                impls.append(Impl("matmul_floor", _matmul_floor(x.detach())))
            groups.append(
                Group(
                    suite=SUITE,
                    params={
                        "N": n,
                        "D": d,
                        "dtype": _DTYPE_NAMES[dtype],
                        "route": "D" if n >= d else "N",
                        "bound MB": round(bound_mb(n, d, dtype), 1),
                    },
                    impls=impls,
                    baseline="reference",
                    skipped=skipped,
                    floor="matmul_floor" if cuda else None,
                )
            )
    return groups
