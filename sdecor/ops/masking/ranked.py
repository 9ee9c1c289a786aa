"""Rank once, mask many times: the masking of every step of a perturbation curve.

A deletion or pixel-flipping curve masks the 1, 2, ..., n most salient positions of the same
inputs. Instead of one selection per step (:func:`sdecor.ops.masking.dispatch.mask_features`),
:func:`mask_ranks` ranks each sample's positions once, and :func:`mask_fill_ranked` builds any
step as ``where(ranks < k, fill, x)``. The positions masked for a count k are exactly those of
``mask_features(x, saliency, k, largest=...)``: ascending (value, flat index) pairs (``largest``:
descending value, still ascending index), ``-0.0 == +0.0``.

Backends: ``"cpp"`` (``torch.ops.sdecor.mask_ranks``: a per-sample stable radix sort;
``torch.ops.sdecor.mask_fill_ranked``: one fused pass), CPU tensors only; ``"reference"`` (a
stable ``torch.sort`` and ``torch.where``), any device; ``"auto"``: cpp for CPU tensors when the
extension is built, reference otherwise (on CUDA, sort and where are single kernels already).
"""

from __future__ import annotations

import math

import torch

from ..._validation import check_choice, check_tensor
from . import extension as _extension
from .checks import check_batched, check_counts, check_fill, check_largest, check_layout
from .reference import mask_view_for

__all__ = ["mask_ranks", "mask_fill_ranked", "RankedFill", "cpp_available", "BACKENDS"]

BACKENDS = ("auto", "reference", "cpp")


def cpp_available(device: torch.device) -> bool:
    """True when the C++ rank-once kernels can run on tensors of ``device`` (CPU, extension built)."""
    return device.type == "cpu" and _extension.available() and hasattr(torch.ops.sdecor, "mask_fill_ranked")


def _use_cpp(backend: str, device: torch.device) -> bool:
    check_choice(backend, "backend", BACKENDS)
    if backend == "reference":
        return False
    cpp = cpp_available(device)
    if backend == "cpp" and not cpp:
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
        raise ValueError(
            f"backend='cpp' needs the C++ extension sdecor._C ({_extension.load_error()}); {_extension.BUILD_HINT}"
        )
    return cpp


def _ranks_reference(flat: torch.Tensor, largest: bool) -> torch.Tensor:
    order = torch.sort(flat, dim=1, stable=True, descending=largest).indices
    places = torch.arange(flat.shape[1], dtype=torch.int32, device=flat.device).expand(flat.shape[0], -1)
    return torch.empty(flat.shape, dtype=torch.int32, device=flat.device).scatter_(1, order, places)


def mask_ranks(saliency: torch.Tensor, *, largest: bool = False, backend: str = "auto") -> torch.Tensor:
    """Each position's place in the masking order of its sample.

    Args:
        saliency: (B, ...) float16, bfloat16, float32 or float64, no NaN (B >= 0); each sample is
            ranked over all its elements (flattened in row-major order).
        largest: rank the largest values first (the order of ``mask_features(largest=True)``).
        backend: ``"auto"``, ``"reference"`` or ``"cpp"``.

    Returns:
        int32 tensor of saliency's shape: within each sample a permutation of 0 .. F-1, F the
        elements per sample; ``ranks < k`` masks what ``mask_features(..., k, largest=largest)``
        masks, for every k.

    Raises:
        TypeError: saliency not a floating tensor, largest not a bool.
        ValueError: saliency 0-dim, with NaN, more than 2^31 - 1 elements per sample, or a
            backend that cannot run here.
    """
    check_batched(saliency, "saliency")
    check_largest(largest)
    b = saliency.shape[0]
    flat = saliency.detach().reshape(b, saliency[0].numel() if b else math.prod(saliency.shape[1:]))
    if flat.shape[1] > 2**31 - 1:
        raise ValueError(f"saliency must have at most 2^31 - 1 elements per sample, got {flat.shape[1]}")
    if _use_cpp(backend, saliency.device):
        ranks = torch.ops.sdecor.mask_ranks(flat, largest)  # raises ValueError on NaN
    else:
        if flat.numel() and bool(torch.isnan(flat).any()):
            raise ValueError("saliency must not contain NaN")
        ranks = _ranks_reference(flat, largest)
    return ranks.view(saliency.shape)


def mask_fill_ranked(x: torch.Tensor, ranks: torch.Tensor, k, fill=0.0, *, backend: str = "auto") -> torch.Tensor:
    """``where(ranks < k, fill, x)``: the input with the first ``k`` positions of each sample filled.

    Args:
        x: (B, ...) float16, bfloat16, float32 or float64.
        ranks: int32 from :func:`mask_ranks`, of x's shape (per element) or, for x of shape
            (B, C, H, W), (B, 1, H, W) or (B, H, W) (per pixel: all channels).
        k: positions filled per sample: an int, or a (B,) integer tensor (CPU or x's device).
            Counts below 0 fill nothing, counts above the positions per sample fill everything.
        fill: a number, or a tensor broadcastable to x (cast to x's dtype).
        backend: ``"auto"``, ``"reference"`` or ``"cpp"``. With autograd recording and x or a
            fill tensor requiring grad, the reference runs (gradients as torch.where's).

    Returns:
        A new tensor of x's shape and dtype (contiguous on the cpp backend).

    Raises:
        TypeError: x not a floating tensor, ranks not int32, k or fill of the wrong type.
        ValueError: ranks of the wrong shape or device, a k tensor of the wrong shape or device,
            a fill that does not broadcast to x, a backend that cannot run here.
    """
    check_batched(x, "x")
    check_tensor(ranks, "ranks")
    if ranks.dtype != torch.int32:
        raise TypeError(f"ranks must be int32 (from mask_ranks), got {str(ranks.dtype).replace('torch.', '')}")
    if ranks.device != x.device:
        raise ValueError(f"ranks must be on x's device ({x.device}), got {ranks.device}")
    check_layout(x, ranks, "ranks")
    counts, _ = check_counts(k, x.shape[0], x.device)
    fill = check_fill(fill, x, strings=())
    if isinstance(fill, float):
        fill_t = torch.tensor(fill, dtype=x.dtype, device=x.device)
    else:
        fill_t = fill.to(dtype=x.dtype, device=x.device)
    use_cpp = _use_cpp(backend, x.device)
    if torch.is_grad_enabled() and (x.requires_grad or fill_t.requires_grad):
        use_cpp = False
    return RankedFill(x, ranks, fill_t, use_cpp)(counts)


class RankedFill:
    """Many :func:`mask_fill_ranked` calls on the same x, ranks and fill, with the layouts prepared once.

    ``x``: (B, ...) floating; ``ranks``: int32 of an accepted layout; ``fill``: a tensor of x's
    dtype broadcastable to x (all already validated). ``RankedFill(...)(counts, rows)`` returns
    ``where(ranks < counts, fill, x)`` for the samples ``rows`` ((n,) int64 indices, repeats
    allowed; None: all B in order) with ``counts`` a (n,) int64 tensor on x's device. The
    perturbation engine calls it once per chunk of perturbed inputs.
    """

    def __init__(self, x: torch.Tensor, ranks: torch.Tensor, fill: torch.Tensor, use_cpp: bool):
        b = x.shape[0]
        self.sample_shape = tuple(x.shape[1:])
        self.use_cpp = use_cpp and x.numel() > 0
        fill = fill.expand(x.shape)
        if self.use_cpp:  # (B, R, S) views: R channels per rank (pixel layout) or 1 (element layout)
            f = ranks[0].numel()
            self.x = x.reshape(b, -1, f)
            self.ranks = ranks.reshape(b, f)
            try:
                self.fill = fill.view(self.x.shape)
            except RuntimeError:  # a broadcast that cannot merge its dims: materialise it once
                self.fill = fill.reshape(self.x.shape)
        else:
            self.x = x
            self.ranks = mask_view_for(x.shape, ranks.reshape(b, -1)) if x.numel() else ranks
            self.fill = fill

    def __call__(self, counts: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        x, ranks, fill = self.x, self.ranks, self.fill
        if rows is not None:
            x, ranks = x.index_select(0, rows), ranks.index_select(0, rows)
            # a fill broadcast over the batch (stride 0) needs no gather
            fill = (
                fill[:1].expand((rows.shape[0],) + fill.shape[1:])
                if fill.stride(0) == 0
                else fill.index_select(0, rows)
            )
        n = x.shape[0]
        if x.numel() == 0:
            return x.clone().view((n,) + self.sample_shape)
        if self.use_cpp:
            return torch.ops.sdecor.mask_fill_ranked(x, ranks, counts, fill).view((n,) + self.sample_shape)
        return torch.where(ranks < counts.view((-1,) + (1,) * (x.ndim - 1)), fill, x)
