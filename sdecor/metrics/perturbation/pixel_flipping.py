"""Pixel flipping (Bach et al. 2015) and region perturbation (Samek et al. 2017), as Quantus files them.

Both remove positions in MoRF, LeRF or random order and follow the model's score for the target
class; region perturbation removes whole patches. Both run on the engine of
:mod:`sdecor.metrics.perturbation.engine`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..._validation import check_choice, check_int
from .._common import PerturbationCurve, check_inputs
from .engine import (
    check_common_args,
    check_model,
    check_target_range,
    curve_result,
    default_step,
    perturbed_scores,
    predict,
    step_counts,
    target_scores,
)
from .substrates import make_substrate

__all__ = ["pixel_flipping", "region_perturbation", "ORDERS"]

ORDERS = ("morf", "lerf", "random")


def _ordering_saliency(attributions: torch.Tensor, order: str, abs: bool, generator) -> tuple[torch.Tensor, bool]:
    """(saliency, largest) so that mask_features removes positions in the requested order."""
    check_choice(order, "order", ORDERS)
    a = attributions.detach()
    if abs:
        a = a.abs()
    if order == "random":
        return torch.rand(a.shape, generator=generator, device=a.device, dtype=torch.float32), True
    return a, order == "morf"


def pixel_flipping(
    model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    order: str = "morf",
    step: int | None = None,
    fill="black",
    output: str = "probability",
    abs: bool = False,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PerturbationCurve:
    """Pixel flipping (Bach et al. 2015; Quantus ``PixelFlipping``), MoRF or LeRF order.

    **Direction depends on the order:** with ``order="morf"`` (most relevant first) **lower AUC
    is better**; with ``"lerf"`` (least relevant first) **higher AUC is better**; ``"random"``
    gives the reference curve.

    Step t replaces ``min(t * step, n)`` positions (the most or least relevant, after ``abs`` if
    set) with ``fill`` (default "black": each sample's minimum, Quantus's default baseline) and
    records the model's score for ``targets`` (default the top-1 prediction). Column 0 of the
    curves is the unperturbed input; columns 1.. are what Quantus PixelFlipping returns with
    ``features_in_step=step`` (elements), ``softmax=(output == "probability")`` for saliency
    of the inputs' shape. (Quantus's default is logits; ours is the probability.) The AUC is the
    trapezoid over the flipped fraction (Quantus's ``return_auc_per_sample`` integrates with
    dx = 1 over the steps instead).

    Parameters as for :func:`deletion_curve`; ``fill`` accepts the substrate values listed there;
    ``step`` defaults to one image row of positions.
    """
    positions, batch_size, targets = check_common_args(
        model, inputs, attributions, targets, batch_size, output, generator
    )
    step = default_step(inputs, positions) if step is None else step
    ks = step_counts(positions, step)
    saliency, largest = _ordering_saliency(attributions, order, abs, generator)
    sub = make_substrate(fill, inputs, "fill", generator)
    return _flip(
        model,
        inputs,
        saliency,
        ks[:, None].expand(-1, inputs.shape[0]),
        ks.to(torch.float64) / positions,
        largest=largest,
        fill=sub,
        targets=targets,
        output=output,
        batch_size=batch_size,
        generator=generator,
        progress=progress,
        desc="pixel_flipping",
    )


def _flip(
    model, inputs, saliency, counts, fractions, *, largest, fill, targets, output, batch_size, generator, progress, desc
):
    score = lambda logits, t: target_scores(logits, t, output)  # noqa: E731
    with torch.no_grad():
        logits0 = predict(model, inputs, batch_size)
        if targets is None:
            targets = logits0.argmax(dim=1)
        check_target_range(targets, logits0.shape[1])
        counts = counts.to(inputs.device).contiguous()
        curves = perturbed_scores(
            model,
            inputs,
            saliency,
            counts,
            largest=largest,
            fill=fill,
            score=score,
            targets=targets,
            batch_size=batch_size,
            generator=generator,
            progress=progress,
            desc=desc,
            first_rows=score(logits0, targets),
        )
    return curve_result(curves, fractions.to(inputs.device), targets)


def _padding(dim: int, patch: int) -> tuple[int, int]:
    """Quantus's ``get_padding_size``: pad to a multiple of ``patch``, the extra pixel at the end."""
    rem = dim % patch
    if rem == 0:
        return 0, 0
    total = patch - rem
    return total // 2, total - total // 2


def region_perturbation(
    model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    patch_size: int = 8,
    order: str = "morf",
    regions: int = 100,
    regions_per_step: int = 1,
    fill="black",
    output: str = "probability",
    abs: bool = False,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PerturbationCurve:
    """Region perturbation (Samek et al. 2017; Quantus ``RegionPerturbation``), MoRF or LeRF.

    **Direction depends on the order:** ``"morf"``: **lower AUC is better** (equivalently a
    higher :attr:`PerturbationCurve.aopc`); ``"lerf"``: **higher AUC is better**.

    The (B, C, H, W) image is cut into a grid of ``patch_size`` x ``patch_size`` patches (padded
    as Quantus does: the grid is centred, border patches are smaller); patches are ranked by
    their summed attribution (over channels and pixels) and replaced, ``regions_per_step`` at a
    time, by ``fill`` (default "black", Quantus's default) across all channels, for the first
    ``regions`` patches. Every sample has its own per-step pixel count (border patches are
    smaller), which the per-sample ``k`` of mask_features takes directly. ``curves.drop``
    (score before minus after) is Quantus's output with ``regions_evaluation=regions``.
    ``fractions`` counts patches (t regions / all patches).

    Parameters as for :func:`pixel_flipping`; ``attributions`` may be (B, C, H, W), (B, 1, H, W)
    or (B, H, W).
    """
    check_model(model)
    check_inputs(inputs, min_ndim=4)
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (B, C, H, W) images for region perturbation, got shape {tuple(inputs.shape)}")
    positions, batch_size, targets = check_common_args(
        model, inputs, attributions, targets, batch_size, output, generator
    )
    patch = check_int(patch_size, "patch_size", low=1)
    regions = check_int(regions, "regions", low=1)
    per_step = check_int(regions_per_step, "regions_per_step", low=1)
    b, _, h, w = inputs.shape
    if patch > min(h, w):
        raise ValueError(f"patch_size must be at most the image size ({h} x {w}), got {patch}")
    a = attributions.detach()
    if abs:
        a = a.abs()
    a = a.sum(dim=1) if a.ndim == 4 else a  # (B, H, W)
    (pt, pb), (pl, pr) = _padding(h, patch), _padding(w, patch)
    nh, nw = (h + pt + pb) // patch, (w + pl + pr) // patch
    n_patches = nh * nw
    sums = F.pad(a, (pl, pr, pt, pb)).reshape(b, nh, patch, nw, patch).sum(dim=(2, 4)).reshape(b, n_patches)
    check_choice(order, "order", ORDERS)
    if order == "random":
        key, descending = torch.rand(sums.shape, generator=generator, device=sums.device), False
    else:
        key, descending = sums, order == "morf"
    perm = torch.sort(key, dim=1, descending=descending, stable=True).indices  # (B, P): patch ids in removal order
    rank = torch.empty_like(perm).scatter_(1, perm, torch.arange(n_patches, device=perm.device).expand(b, -1))
    rows = (torch.arange(h, device=inputs.device) + pt) // patch
    cols = (torch.arange(w, device=inputs.device) + pl) // patch
    patch_id = (rows[:, None] * nw + cols[None, :]).reshape(-1)  # (H*W,)
    saliency = rank.gather(1, patch_id.expand(b, -1)).reshape(b, 1, h, w).to(torch.float32)
    sizes = torch.bincount(patch_id, minlength=n_patches)  # in-image pixels per patch
    cum = torch.cumsum(sizes[perm], dim=1)  # (B, P)
    n_reg = min(regions, n_patches)
    done = torch.clamp(torch.arange(math.ceil(n_reg / per_step) + 1) * per_step, max=n_reg)  # regions after step t
    counts = torch.zeros(len(done), b, dtype=torch.int64, device=inputs.device)
    counts[1:] = cum[:, (done[1:] - 1).to(inputs.device)].t()
    sub = make_substrate(fill, inputs, "fill", generator)
    return _flip(
        model,
        inputs,
        saliency,
        counts,
        done.to(torch.float64) / n_patches,
        largest=False,
        fill=sub,
        targets=targets,
        output=output,
        batch_size=batch_size,
        generator=generator,
        progress=progress,
        desc="region_perturbation",
    )
