"""Benchmark suite ``masking``: batched saliency masking, ours against the torch baselines.

Every implementation produces ``(masked, mask)`` for the same inputs: per sample, the k least
salient positions replaced by a uniform draw between the channel's min and max (the Saliency
Guided Training fill). Implementations:

* ``ours``: ``mask_features(..., backend="auto")``: the C++ kernels on CPU (``cpp``), the CUDA
  kernels on GPU (``cuda``) when the extension was built with them; otherwise it falls back to
  the reference and the group notes which backend ran.
* ``topk_scatter`` (baseline of the ratios): the usual vectorised torch code: ``topk`` of the
  flattened saliency, ``scatter`` into a mask, ``rand_like(x)`` draws, ``where``. Its ties are
  whatever topk returns (no tie rule).
* ``reference``: our pure-torch backend (stable sort + scatter; draws only for masked elements),
  the exact-tie-rule baseline.
* ``sgt_loop``: a per-sample Python loop like Saliency Guided Training's: sort each sample's
  saliency, take the first k indices, fill them with per-channel uniform draws.
* ``copy_floor``: no masking at all, only the memory traffic any implementation must pay: x read
  once and the masked output written once (``out.copy_(x)``), the saliency read once and the
  bool mask written once (``torch.lt(saliency, 0.5, out=mask)``), into outputs allocated before
  the timing. Its GB/s is this device's copy bandwidth for these bytes; it is the groups'
  ``floor``, so the tables print time / floor (2 or less: at least 50% of the copy bandwidth).

``MB moved`` in the group params is that traffic, x and saliency read plus masked output and
mask written (``(2 * x.numel() + saliency.numel()) * 4 + saliency.numel()`` bytes for float32,
in 10^6 bytes), so ``MB moved / ms`` is an implementation's achieved GB/s.

Groups: images of 3 x 224 x 224 and 3 x 32 x 32, B in {32, 256}, saliency per pixel (B, H, W)
(masks all channels) and per element (B, 3, H, W), k in {10%, 50%}. ``quick`` (the CPU default,
about a minute): B = 32 (224 x 224 per element only at k = 10%) plus B = 256 at 32 x 32 per pixel.
"""

from __future__ import annotations

import torch

from .common import Group, Impl

__all__ = [
    "run",
    "SUITE",
    "FULL_SETTINGS",
    "QUICK_SETTINGS",
    "topk_scatter",
    "sgt_loop",
    "copy_floor",
    "bytes_moved",
]

SUITE = "masking"
# (B, H, W, saliency layout, k fraction); images have 3 channels
FULL_SETTINGS = [
    (b, hw, hw, layout, frac)
    for b in (32, 256)
    for hw in (224, 32)
    for layout in ("pixel", "element")
    for frac in (0.1, 0.5)
]
QUICK_SETTINGS = [
    (32, 224, 224, "pixel", 0.1),
    (32, 224, 224, "pixel", 0.5),
    (32, 224, 224, "element", 0.1),
    (32, 32, 32, "pixel", 0.1),
    (32, 32, 32, "element", 0.5),
    (256, 32, 32, "pixel", 0.1),
    (256, 32, 32, "pixel", 0.5),
]


def _channel_range(x: torch.Tensor):
    xs = x.reshape(x.shape[0], x.shape[1], -1)
    lo, hi = torch.aminmax(xs, dim=2)
    return lo, hi


def topk_scatter(x: torch.Tensor, saliency: torch.Tensor, k: int, generator=None):
    """Vectorised torch baseline: topk + scatter mask, draws for every element, one where."""
    B = x.shape[0]
    flat = saliency.reshape(B, -1)
    idx = torch.topk(flat, k, dim=1, largest=False, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view(saliency.shape)
    mask_x = mask.unsqueeze(1) if saliency.ndim == x.ndim - 1 else mask
    lo, hi = _channel_range(x)
    lo = lo[:, :, None, None]
    hi = hi[:, :, None, None]
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(mask_x, lo + (hi - lo) * u, x), mask


def sgt_loop(x: torch.Tensor, saliency: torch.Tensor, k: int, generator=None):
    """Per-sample loop in the style of Saliency Guided Training's masking code."""
    B, C = x.shape[0], x.shape[1]
    out = x.clone()
    mask = torch.zeros(saliency.shape, dtype=torch.bool, device=x.device)
    pixel = saliency.ndim == x.ndim - 1
    for b in range(B):
        flat = saliency[b].reshape(-1)
        idx = torch.sort(flat).indices[:k]
        mask[b].view(-1)[idx] = True
        xb = out[b].view(C, -1)
        lo, hi = torch.aminmax(x[b].reshape(C, -1), dim=1)
        if pixel:
            u = torch.rand((C, k), generator=generator, device=x.device, dtype=x.dtype)
            xb[:, idx] = lo[:, None] + (hi - lo)[:, None] * u
        else:
            S = xb.shape[1]
            ch = idx // S
            u = torch.rand(k, generator=generator, device=x.device, dtype=x.dtype)
            out[b].view(-1)[idx] = lo[ch] + (hi - lo)[ch] * u
    return out, mask


def bytes_moved(x: torch.Tensor, saliency: torch.Tensor) -> int:
    """Bytes any masking must move: x and saliency read once, the masked output (x's dtype) and
    the bool mask (saliency's shape) written once."""
    return 2 * x.numel() * x.element_size() + saliency.numel() * (saliency.element_size() + 1)


def copy_floor(x: torch.Tensor, saliency: torch.Tensor):
    """A call that moves exactly :func:`bytes_moved` bytes and does nothing else (the floor).

    Returns ``fn()``: ``out.copy_(x)`` (read x, write the output) and ``torch.lt(saliency, 0.5,
    out=mask)`` (read the saliency, write a bool mask), outputs allocated once, before the timing.
    """
    out = torch.empty_like(x)
    mask = torch.empty(saliency.shape, dtype=torch.bool, device=saliency.device)

    def fn():
        out.copy_(x)
        torch.lt(saliency, 0.5, out=mask)
        return out, mask

    return fn


def _ours(backend: str):
    from ..ops.masking.dispatch import mask_features

    def fn(x, saliency, k, generator=None):
        return mask_features(x, saliency, k, fill="uniform", generator=generator, backend=backend)

    return fn


def _fits(B: int, H: int, W: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    # inputs + outputs + the reference's sort temporaries (values + int64 indices per element)
    need = B * 3 * H * W * 4 * 10 + 64 * 2**20
    free, _ = torch.cuda.mem_get_info(device)
    return need < 0.8 * free


def run(device: torch.device, quick: bool, settings=None) -> list[Group]:
    """Groups of the suite; ``settings`` (a list of (B, H, W, layout, fraction)) overrides the sizes."""
    device = torch.device(device)
    from ..ops.masking import extension as _extension

    if device.type == "cuda":
        ours_backend = "cuda" if _extension.has_cuda() else "reference"
    else:
        ours_backend = "cpp" if _extension.has_cpu() else "reference"
    if settings is None:
        settings = QUICK_SETTINGS if quick else FULL_SETTINGS
    gen = torch.Generator(device="cpu").manual_seed(0)
    groups = []
    for B, H, W, layout, frac in settings:
        if not _fits(B, H, W, device):
            continue
        x = torch.randn(B, 3, H, W, generator=gen).to(device)
        sal_shape = (B, H, W) if layout == "pixel" else (B, 3, H, W)
        saliency = torch.rand(sal_shape, generator=gen).to(device)
        F = H * W if layout == "pixel" else 3 * H * W
        k = int(frac * F)
        g = torch.Generator(device=device).manual_seed(1)
        ours = _ours(ours_backend)
        reference = _ours("reference")
        impls = [
            Impl("ours", lambda x=x, s=saliency, k=k, fn=ours, g=g: fn(x, s, k, g)),
            Impl("topk_scatter", lambda x=x, s=saliency, k=k, g=g: topk_scatter(x, s, k, g)),
            Impl("reference", lambda x=x, s=saliency, k=k, fn=reference, g=g: fn(x, s, k, g)),
            Impl("sgt_loop", lambda x=x, s=saliency, k=k, g=g: sgt_loop(x, s, k, g)),
            Impl("copy_floor", copy_floor(x, saliency)),
        ]
        groups.append(
            Group(
                suite=SUITE,
                params={
                    "B": B,
                    "image": f"3x{H}x{W}",
                    "saliency": layout,
                    "k": f"{int(frac * 100)}%",
                    "backend": ours_backend,
                    "MB moved": round(bytes_moved(x, saliency) / 1e6, 1),
                },
                impls=impls,
                baseline="topk_scatter",
                floor="copy_floor",
            )
        )
    return groups


def _cpu_time_table(settings, threads: int = 1, repeats: int = 5) -> str:
    """Median per-call CPU time of the calling thread (``time.thread_time``) with ``threads`` torch
    threads: a load-insensitive view for a shared CPU machine (wall times there swing with the
    other processes). With threads=1 every op runs in the calling thread, so this is the whole cost."""
    import statistics
    import time

    torch.set_num_threads(threads)
    lines = [
        "| B | image | saliency | k | backend | ours | topk_scatter | reference | sgt_loop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group in run(torch.device("cpu"), quick=True, settings=settings):
        cells = {}
        for impl in group.impls:
            impl.fn()
            times = []
            for _ in range(repeats):
                t0 = time.thread_time()
                impl.fn()
                times.append((time.thread_time() - t0) * 1e3)
            cells[impl.name] = statistics.median(times)
        base = cells["topk_scatter"]
        p = group.params
        row = [str(p["B"]), p["image"], p["saliency"], p["k"], p["backend"]]
        row += [
            f"{cells[n]:.2f} ms ({base / cells[n]:.2f}x)" for n in ("ours", "topk_scatter", "reference", "sgt_loop")
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m sdecor.benchmarks.masking [--full]
    import sys

    print(_cpu_time_table(FULL_SETTINGS if "--full" in sys.argv else QUICK_SETTINGS))
