"""Localisation against ground-truth masks: pointing game, relevance mass and rank accuracy.

Semantics follow Quantus (``PointingGame``, ``RelevanceMassAccuracy``, ``RelevanceRankAccuracy``):
masks are boolean (or {0, 1}) and cover the object; every element of the (broadcast) map is one
feature. Quantus's default ``normalise=True`` divides by a positive number and changes none of
these scores, so only ``abs`` (Quantus default False) is a parameter here. A sample whose mask
is empty scores NaN (Quantus's pointing game means to return NaN too, but stores it in a boolean
array, where it becomes True).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_int
from ._common import align_masks, check_attributions, check_masks, chunked_map_scores

__all__ = ["pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy"]


def _prepare(attributions, masks):
    check_attributions(attributions)
    masks = check_masks(masks)
    masks = align_masks(attributions, masks)
    return masks


def _dilate(masks: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Grow boolean masks by a Euclidean disk of radius ``tolerance`` over the last two dimensions."""
    if tolerance == 0:
        return masks
    shape = masks.shape
    m = masks.reshape(-1, 1, shape[-2], shape[-1]).to(torch.float32)
    r = torch.arange(-tolerance, tolerance + 1, device=masks.device, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= tolerance**2).to(torch.float32)[None, None]
    grown = F.conv2d(m, disk, padding=tolerance) > 0.5
    return grown.reshape(shape)


def pointing_game(
    attributions: torch.Tensor,
    masks: torch.Tensor,
    tolerance: int = 0,
    *,
    abs: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Pointing game (Zhang et al. 2018; Quantus ``PointingGame``): is the map's maximum on the object?

    **Higher is better**; 1.0 for a hit, 0.0 for a miss, NaN for an empty mask.

    A hit is counted when any position holding the per-sample maximum of the (optionally
    absolute) attribution lies inside the mask, as in Quantus. ``tolerance`` (pixels, default 0
    = Quantus) counts positions within that Euclidean distance of the mask as inside (Zhang et
    al. use 15 pixels); it grows the mask over the last two dimensions, so it needs spatial maps.

    Parameters
    ----------
    attributions:
        (B, ...) maps, e.g. (B, 1, H, W), (B, H, W) or (B, C, H, W).
    masks:
        Ground truth, boolean or {0, 1}: the attributions' shape, or (B, 1, *spatial) /
        (B, *spatial) for (B, C, *spatial) maps (broadcast over channels).
    batch_size, progress:
        Samples per chunk (None: all) and a progress bar over the chunks.

    Returns
    -------
    (B,) float tensor on the attributions' device.
    """
    masks = _prepare(attributions, masks)
    tolerance = check_int(tolerance, "tolerance", low=0)
    if tolerance and attributions.ndim < 3:
        raise ValueError(
            f"tolerance > 0 needs spatial attributions (B, [C,] H, W), got shape {tuple(attributions.shape)}"
        )

    def hit(a, lo, hi):
        m = masks[lo:hi]
        empty = ~m.reshape(hi - lo, -1).any(dim=1)
        m = _dilate(m, tolerance).reshape(hi - lo, -1)
        at_max = a == a.amax(dim=1, keepdim=True)
        found = (at_max & m).any(dim=1).to(a.dtype)
        return torch.where(empty, torch.full_like(found, float("nan")), found)

    return chunked_map_scores(
        attributions, hit, abs=abs, normalise=False, batch_size=batch_size, progress=progress, desc="pointing_game"
    )


def relevance_mass_accuracy(
    attributions: torch.Tensor,
    masks: torch.Tensor,
    *,
    abs: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Relevance mass accuracy (Arras et al. 2022; Quantus ``RelevanceMassAccuracy``).

    **Higher is better**; the share of the total attribution that falls inside the mask,
    ``sum(a * mask) / sum(a)`` per sample (in [0, 1] for non-negative maps; pass ``abs=True``
    or non-negative maps for that reading). NaN for an empty mask.

    Parameters, shapes and return value as for :func:`pointing_game`.
    """
    masks = _prepare(attributions, masks)

    def mass(a, lo, hi):
        m = masks[lo:hi].reshape(hi - lo, -1)
        score = (a * m).sum(dim=1) / a.sum(dim=1)
        return torch.where(m.any(dim=1), score, torch.full_like(score, float("nan")))

    return chunked_map_scores(
        attributions,
        mass,
        abs=abs,
        normalise=False,
        batch_size=batch_size,
        progress=progress,
        desc="relevance_mass_accuracy",
    )


def relevance_rank_accuracy(
    attributions: torch.Tensor,
    masks: torch.Tensor,
    *,
    abs: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Relevance rank accuracy (Arras et al. 2022; Quantus ``RelevanceRankAccuracy``).

    **Higher is better**; with K the number of mask positions of a sample, the fraction of its
    K highest-attributed positions that lie inside the mask. NaN for an empty mask. Ties in the
    attribution are ranked by the lower flat index first (Quantus's ``np.argsort`` leaves their
    order to the sort algorithm).

    Parameters, shapes and return value as for :func:`pointing_game`.
    """
    masks = _prepare(attributions, masks)

    def rank(a, lo, hi):
        m = masks[lo:hi].reshape(hi - lo, -1)
        k = m.sum(dim=1, keepdim=True)
        order = torch.sort(a, dim=1, descending=True, stable=True).indices
        in_mask = torch.gather(m, 1, order)
        top = torch.arange(a.shape[1], device=a.device)[None, :] < k
        score = (in_mask & top).sum(dim=1).to(a.dtype) / k.squeeze(1).to(a.dtype)
        return torch.where(k.squeeze(1) > 0, score, torch.full_like(score, float("nan")))

    return chunked_map_scores(
        attributions,
        rank,
        abs=abs,
        normalise=False,
        batch_size=batch_size,
        progress=progress,
        desc="relevance_rank_accuracy",
    )
