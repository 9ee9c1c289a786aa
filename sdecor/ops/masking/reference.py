"""Pure-torch reference of batched saliency masking (any device, every float dtype).

Two pieces, shared with the compiled backends so that every backend gives the same answer:

* :func:`mask_select_reference`: the selection. Per sample (row of a (B, F) saliency matrix),
  the positions whose (value, flat index) pair ranks below k in ascending order (``largest``:
  descending value, still ascending index) are masked. A stable sort gives exactly that order:
  ties go to the lower flat index. ``-0.0`` and ``+0.0`` are equal values (a tie).
* :func:`uniform_fill_reference`: the "uniform" fill. The masked elements of ``x`` taken in
  row-major order of ``x`` (sample, channel, position) consume ``u`` (one uniform [0, 1) draw per
  masked element, drawn by the caller with its generator) in that order; the value is
  ``lo[b, c] + scale[b, c] * u`` computed in the op-math dtype (float32; float64 for float64 x)
  and rounded once to x's dtype. The C++ and CUDA fill kernels compute the same expression with
  the same roundings (no fused multiply-add), so the results are bitwise identical.
  ``lo``/``scale`` are the per sample and channel min and max - min of x (:func:`channel_range`).

The whole op on this backend is ``mask_features(..., backend="reference")``
(:func:`sdecor.ops.masking.dispatch.mask_features_reference`).
"""

from __future__ import annotations

import torch

__all__ = [
    "mask_select_reference",
    "uniform_fill_reference",
    "channel_range",
    "mask_view_for",
]


def mask_select_reference(saliency_flat: torch.Tensor, k: torch.Tensor, largest: bool) -> torch.Tensor:
    """Bool (B, F) mask with exactly ``k[b]`` True entries in row b (stable-sort order, see module doc).

    ``saliency_flat``: (B, F) floating tensor without NaN; ``k``: (B,) int64 on the same device,
    0 <= k[b] <= F (not checked here; the dispatcher, :func:`sdecor.ops.masking.dispatch.mask_features`, checks).
    """
    B, F = saliency_flat.shape
    order = torch.sort(saliency_flat, dim=1, stable=True, descending=bool(largest)).indices
    keep_rank = torch.arange(F, device=saliency_flat.device).unsqueeze(0) < k.to(saliency_flat.device).unsqueeze(1)
    mask = torch.empty((B, F), dtype=torch.bool, device=saliency_flat.device)
    return mask.scatter_(1, order, keep_rank)


def mask_view_for(x_shape, mask_flat: torch.Tensor) -> torch.Tensor:
    """View of a (B, F) mask that broadcasts against a tensor of shape ``x_shape``.

    F equal to the per-sample element count of x: element masking, the view has x's shape.
    Otherwise F must equal prod(x.shape[2:]) (pixel masking across the channels of dim 1): the view
    is (B, 1, *x.shape[2:]).
    """
    x_shape = tuple(x_shape)
    per_sample = 1
    for d in x_shape[1:]:
        per_sample *= d
    if mask_flat.shape[1] == per_sample:
        return mask_flat.view(x_shape)
    return mask_flat.view(x_shape[:1] + (1,) + x_shape[2:])


def _channels_view(x: torch.Tensor) -> torch.Tensor:
    """x as (B, C, S): C = x.shape[1] for x.ndim >= 3, one channel per sample otherwise."""
    B = x.shape[0]
    if x.ndim >= 3:
        return x.reshape(B, x.shape[1], -1)
    return x.reshape(B, 1, -1)


def channel_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, scale) of the "uniform" fill: per sample and channel min and max - min, (B, C), op-math dtype.

    Channels are dim 1 of x for x.ndim >= 3; for x.ndim < 3 each sample is one channel. NaN in a
    channel propagates (torch.aminmax).
    """
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        lo, hi = torch.aminmax(_channels_view(x.detach()), dim=2)
        lo = lo.to(opmath)
        return lo, hi.to(opmath) - lo


def uniform_fill_reference(x: torch.Tensor, mask_flat: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``x`` with its masked elements replaced by ``lo + scale * u`` (see module doc).

    ``u``: (n,) draws in the op-math dtype, n = masked elements of x. Differentiable in ``x``
    (gradient: the keep-mask); the fill values are constants.
    """
    mask_x = mask_view_for(x.shape, mask_flat).expand(x.shape)
    out = x.clone()
    if u.numel() == 0:
        return out
    lo, scale = channel_range(x)
    B, C, S = _channels_view(x).shape
    lo_e = lo.view(B, C, 1).expand(B, C, S).reshape(x.shape)[mask_x]
    scale_e = scale.view(B, C, 1).expand(B, C, S).reshape(x.shape)[mask_x]
    out[mask_x] = (lo_e + scale_e * u).to(x.dtype)
    return out
