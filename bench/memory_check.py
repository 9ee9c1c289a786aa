"""Memory of the fused decorrelation penalty against its bound, on CPU under the Triton interpreter.

    python bench/memory_check.py [--settings 256x512,1024x128,300x96,64x32x4x4] [--dtype fp32]

For each setting: forward + ``torch.autograd.grad`` of ``decorrelation_loss(x, backend="triton")``
(correlation, mean) under torch's profiler with ``profile_memory=True``; the bytes counted are
every allocation the profiler attributes to an op (self CPU memory, allocations only), the
returned gradient included: an upper bound of the peak, whatever frees the profiler sees.
The bound: (N x D + min(n, D)^2) elements of x's dtype (n = N x H x W samples). Prints one row per
setting: bytes, bound, ratio. Slow: the interpreter runs every kernel on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def allocated_bytes(fn) -> int:
    """Bytes of every CPU allocation the profiler records while ``fn`` runs (the self CPU memory
    of every op, allocations only); the tensors ``fn`` returns are included."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())


def bound_bytes(x) -> int:
    """(N x D + min(n, D)^2) elements of x's dtype for x of shape (N, D, *spatial)."""
    n = x.shape[0] * (x[0, 0].numel() if x.ndim > 2 else 1)
    D = x.shape[1]
    return (x.numel() + min(n, D) ** 2) * x.element_size()


def loss_and_grad(x):
    import torch

    import sdecor

    loss = sdecor.decorrelation_loss(x, backend="triton")
    (grad,) = torch.autograd.grad(loss, x)
    return loss, grad


def measure(shape, dtype=None, seed: int = 3) -> tuple[int, int]:
    """(allocated bytes of one forward + autograd.grad after a warm-up call, bound bytes)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) + 2.0).to(dtype or torch.float32).requires_grad_(True)
    loss_and_grad(x)  # first call: launch plan, interpreter warm-up
    return allocated_bytes(lambda: loss_and_grad(x)), bound_bytes(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/memory_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="256x512,1024x128,300x96,64x32x4x4", help="comma list of NxD[xHxW]")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    args = p.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import torch

    dtype = getattr(torch, DTYPES[args.dtype])
    print("| shape | dtype | allocated B | bound B | ratio |\n|---|---|---|---|---|")
    for text in args.settings.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        got, bound = measure(shape, dtype)
        print(f"| {text} | {args.dtype} | {got} | {bound} | {got / bound:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
