"""Perturbation curves: deletion / insertion (RISE), pixel flipping, region perturbation, and the
Saliency-Guided-Training masked-accuracy curve.

All of them share one engine: the (steps + 1) x B perturbed inputs are enumerated step-major
(all samples of step 0, then of step 1, ...) and cut into chunks of ``batch_size`` inputs, each
evaluated by one model call. Each sample's positions are ranked once
(:func:`sdecor.ops.ranked_masking.mask_ranks`, the selection order of
:func:`sdecor.ops.mask_features.mask_features`), and a chunk is built by ONE fused pass
``where(ranks < k, fill, x)`` with a per-input count ``k`` (the random "uniform" fill instead
takes one ``mask_features`` call per chunk, which draws the values). There is no Python loop over
samples, and memory is bounded by the chunk. The model runs under ``torch.no_grad()`` in whatever mode the caller left
it (train or eval; most users pass ``model.eval()``: in train mode dropout and batch-norm make the
curves noisy and batch-norm statistics are updated by the perturbed inputs).

Layout of the saliency (``attributions``), as :func:`mask_features` accepts it: the inputs' shape
(each element is one position: channels are removed separately), or (B, 1, H, W) / (B, H, W) for
(B, C, H, W) inputs (each pixel is one position, removed across all channels, as RISE does).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._validation import broadcasts_to, check_choice, check_int, check_positive_float
from ..ops.masking.dispatch import mask_features
from ..ops.masking.ranked import RankedFill, cpp_available, mask_ranks
from ._common import (
    PerturbationCurve,
    check_attributions,
    check_batch_size,
    check_generator,
    check_inputs,
    check_targets,
    progress_bar,
    same_batch,
    trapezoid_auc,
)

__all__ = [
    "deletion_curve",
    "deletion_auc",
    "insertion_curve",
    "insertion_auc",
    "pixel_flipping",
    "region_perturbation",
    "masked_accuracy_curve",
    "MaskedAccuracyCurve",
    "rise_blur",
    "OUTPUTS",
    "ORDERS",
]

OUTPUTS = ("probability", "logit")
ORDERS = ("morf", "lerf", "random")


# --------------------------------------------------------------------------- substrates


def _rise_kernel_1d(size: int, sigma: float) -> torch.Tensor:
    """1-D factor of RISE's ``gkern(size, sigma)``: scipy's ``gaussian_filter`` of a centred delta.

    scipy filters with a Gaussian truncated at 4 sigma and reflects at the borders (mode
    "reflect", half-sample symmetric), so the tails fold back into the ``size`` taps; this
    reproduces that in float64 without scipy. The 2-D kernel is the outer product.
    """
    radius = int(4.0 * sigma + 0.5)
    j = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (j / sigma) ** 2)
    w = w / w.sum()
    centre = size // 2
    out = torch.zeros(size, dtype=torch.float64)
    period = 2 * size
    for i in range(size):
        for jj in range(-radius, radius + 1):
            m = (i + jj) % period
            src = m if m < size else period - 1 - m
            if src == centre:
                out[i] += w[jj + radius]
    return out


def rise_blur(inputs: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion substrate: each channel convolved with ``gkern(11, 5)``, zero padding.

    ``inputs``: (B, C, H, W). The kernel is RISE's (a Gaussian of ``sigma`` applied by scipy to a
    ``kernel_size`` x ``kernel_size`` delta, tails reflected back), the convolution pads with
    zeros (``conv2d(..., padding=kernel_size // 2)``), exactly as in RISE's evaluation code.
    """
    check_inputs(inputs, "inputs", min_ndim=4)
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (B, C, H, W) images to blur, got shape {tuple(inputs.shape)}")
    kernel_size = check_int(kernel_size, "kernel_size", low=1)
    sigma = check_positive_float(sigma, "sigma")
    k1 = _rise_kernel_1d(kernel_size, sigma)
    kern = torch.outer(k1, k1).to(device=inputs.device, dtype=inputs.dtype)
    c = inputs.shape[1]
    weight = kern.expand(c, 1, kernel_size, kernel_size).contiguous()
    return F.conv2d(inputs, weight, padding=kernel_size // 2, groups=c)


def _substrate(spec, inputs: torch.Tensor, name: str, generator) -> float | torch.Tensor:
    """A float (constant fill) or a tensor broadcastable to ``inputs`` (B, ...) for the spec.

    Strings: "zero" (0.0), "blur" (:func:`rise_blur`), "black" / "white" (each sample's minimum /
    maximum over all its elements, Quantus's baselines), "mean" (per sample and channel mean),
    "uniform" (per sample and channel uniform draws between the channel's min and max, drawn once,
    so the same substrate serves every step).
    """
    if isinstance(spec, torch.Tensor):
        if spec.device != inputs.device and spec.ndim > 0:
            raise ValueError(f"{name} must be on the inputs' device ({inputs.device}), got {spec.device}")
        if not spec.is_floating_point():
            raise TypeError(f"a {name} tensor must be floating, got {spec.dtype}")
        if not broadcasts_to(spec.shape, inputs.shape):
            raise ValueError(
                f"a {name} tensor must broadcast to the inputs' shape {tuple(inputs.shape)}, got {tuple(spec.shape)}"
            )
        if not bool(torch.isfinite(spec).all()):
            raise ValueError(f"{name} must be finite, but it contains NaN or inf")
        return spec.to(inputs.dtype)
    if isinstance(spec, bool) or not isinstance(spec, (str, numbers.Real)):
        raise TypeError(f"{name} must be a string, a number or a tensor, got {type(spec).__name__}")
    if isinstance(spec, numbers.Real):
        return float(spec)
    check_choice(spec, name, ("zero", "blur", "black", "white", "mean", "uniform"))
    b = inputs.shape[0]
    if spec == "zero":
        return 0.0
    if spec == "blur":
        return rise_blur(inputs)
    if spec in ("black", "white"):
        flat = inputs.reshape(b, -1)
        v = flat.amin(dim=1) if spec == "black" else flat.amax(dim=1)
        return v.view((b,) + (1,) * (inputs.ndim - 1))
    # "mean" / "uniform": mask_features' per-channel fills applied to every element, once.
    everything = torch.zeros(inputs.shape, dtype=inputs.dtype, device=inputs.device)
    full, _ = mask_features(inputs, everything, inputs[0].numel(), fill=spec, generator=generator)
    return full


# --------------------------------------------------------------------------- engine


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable (an nn.Module), got {type(model).__name__}")


def _check_saliency_layout(inputs: torch.Tensor, saliency: torch.Tensor, name: str) -> int:
    """Positions per sample of a saliency map accepted by mask_features for these inputs."""
    same_batch(inputs, "inputs", saliency, name)
    if saliency.shape == inputs.shape:
        return inputs[0].numel()
    if inputs.ndim == 4:
        b, _, h, w = inputs.shape
        if tuple(saliency.shape) in ((b, 1, h, w), (b, h, w)):
            return h * w
    allowed = f"the inputs' shape {tuple(inputs.shape)}"
    if inputs.ndim == 4:
        allowed += f", ({inputs.shape[0]}, 1, H, W) or ({inputs.shape[0]}, H, W)"
    raise ValueError(f"{name} must have {allowed}, got shape {tuple(saliency.shape)}")


def _forward(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return (N, num_classes) logits for N inputs, got {shape}")
    return out


def _scores(logits: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    if output == "probability":
        logits = torch.softmax(logits.float(), dim=1)
    return logits.gather(1, targets[:, None]).squeeze(1)


def _predict(model, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of the unperturbed inputs, chunked."""
    outs = [_forward(model, inputs[lo : lo + batch_size]) for lo in range(0, inputs.shape[0], batch_size)]
    return torch.cat(outs)


def _check_target_range(targets: torch.Tensor, num_classes: int) -> None:
    if bool((targets >= num_classes).any()):
        raise ValueError(
            f"targets must be class indices below the model's {num_classes} outputs, got {int(targets.max())}"
        )


_SCORE_ROWS = 8192  # logits rows gathered before scoring them in one call (bounds that buffer)


def _run(
    model,
    base: torch.Tensor,
    saliency: torch.Tensor,
    counts: torch.Tensor,
    *,
    largest: bool,
    fill,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    batch_size: int,
    generator,
    progress: bool,
    desc: str,
    first_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Evaluate ``score(model(perturbed), targets)`` for every (step, sample) pair.

    ``counts``: (S + 1, B) int64, the positions masked in sample b at step t. ``fill``: a float,
    a mask_features fill string, or a tensor broadcastable to ``base`` (a tensor with a batch
    dimension of B is gathered per pair). ``first_rows``: precomputed scores of step 0 (skipped).
    Returns (B, S + 1).

    Constant and tensor fills rank each sample's positions once
    (:func:`sdecor.ops.ranked_masking.mask_ranks`) and build every perturbed input as
    ``where(ranks < k, fill, x)`` (:class:`~sdecor.ops.ranked_masking.RankedFill`: one fused pass
    on CPU); the string fills ("uniform", "mean") go through :func:`mask_features` per chunk,
    which draws the random values. Logits are scored in batches of up to ``_SCORE_ROWS`` rows.
    """
    steps1, b = counts.shape
    total = steps1 * b
    out = torch.empty(total, dtype=torch.float32, device=base.device)
    start = 0
    if first_rows is not None:
        out[:b] = first_rows.float()
        start = b
    if isinstance(fill, float):
        fill = torch.tensor(fill, dtype=base.dtype, device=base.device)
    ranked = not isinstance(fill, str)
    if ranked:
        build = RankedFill(base, mask_ranks(saliency, largest=largest), fill.to(base.dtype), cpp_available(base.device))
    flat_counts = counts.reshape(-1)
    all_targets = targets.repeat(steps1)
    pending: list[torch.Tensor] = []
    pending_lo = start
    pending_rows = 0

    def flush(upto: int) -> None:
        nonlocal pending, pending_lo, pending_rows
        if pending:
            logits = pending[0] if len(pending) == 1 else torch.cat(pending)
            out[pending_lo:upto] = score(logits, all_targets[pending_lo:upto]).float()
        pending, pending_lo, pending_rows = [], upto, 0

    n_chunks = max(0, math.ceil((total - start) / batch_size))
    bar = progress_bar(n_chunks, progress, desc)
    for lo in range(start, total, batch_size):
        hi = min(lo + batch_size, total)
        rows = None if (hi - lo == b and lo % b == 0) else torch.arange(lo, hi, device=base.device) % b
        if ranked:
            masked = build(flat_counts[lo:hi], rows)
        else:  # a fill string: mask_features draws or computes the values
            x_rep, s_rep = (
                (base, saliency) if rows is None else (base.index_select(0, rows), saliency.index_select(0, rows))
            )
            masked, _ = mask_features(x_rep, s_rep, flat_counts[lo:hi], largest=largest, fill=fill, generator=generator)
        logits = _forward(model, masked)
        if lo == start:
            _check_target_range(targets, logits.shape[1])
        pending.append(logits)
        pending_rows += hi - lo
        if pending_rows >= _SCORE_ROWS:
            flush(hi)
        bar.update(1)
    flush(total)
    bar.close()
    return out.view(steps1, b).t().contiguous()


def _curve(curves: torch.Tensor, fractions: torch.Tensor, targets: torch.Tensor) -> PerturbationCurve:
    """The result: (B, S + 1) curves, float64 fractions (for the AUC), the followed targets."""
    return PerturbationCurve(
        curves=curves,
        fractions=fractions.float(),
        auc=trapezoid_auc(curves.double(), fractions).float(),
        targets=targets,
    )


def _common_args(model, inputs, attributions, targets, batch_size, output, generator=None, att_name="attributions"):
    _check_model(model)
    check_inputs(inputs)
    check_generator(generator, inputs.device)
    check_attributions(attributions, att_name)
    positions = _check_saliency_layout(inputs, attributions, att_name)
    b = inputs.shape[0]
    batch_size = check_batch_size(batch_size) or b
    check_choice(output, "output", OUTPUTS)
    if targets is not None:
        targets = check_targets(targets, b, inputs.device)
    return positions, batch_size, targets


def _step_counts(positions: int, step: int, name: str = "step") -> torch.Tensor:
    step = check_int(step, name, low=1)
    n_steps = math.ceil(positions / step)
    return torch.clamp(torch.arange(n_steps + 1, dtype=torch.int64) * step, max=positions)


def _default_step(inputs: torch.Tensor, positions: int) -> int:
    """One image row of positions per step (RISE uses 224 for 224 x 224 images)."""
    if inputs.ndim >= 3:
        return max(1, positions // inputs.shape[-2])
    return max(1, math.ceil(positions / 100))


# --------------------------------------------------------------------------- deletion / insertion


def _causal_curve(
    mode, model, inputs, attributions, *, targets, step, substrate, output, batch_size, generator, progress
):
    positions, batch_size, targets = _common_args(model, inputs, attributions, targets, batch_size, output, generator)
    step = _default_step(inputs, positions) if step is None else step
    ks = _step_counts(positions, step)
    fractions = ks.to(torch.float64) / positions
    b = inputs.shape[0]
    sub = _substrate(substrate, inputs, "substrate", generator)
    saliency = attributions.detach()
    score = lambda logits, t: _scores(logits, t, output)  # noqa: E731
    with torch.no_grad():
        first = None
        if targets is None or mode == "deletion":
            logits0 = _predict(model, inputs, batch_size)
            if targets is None:
                targets = logits0.argmax(dim=1)
            _check_target_range(targets, logits0.shape[1])
            if mode == "deletion":
                first = score(logits0, targets)
        counts = ks.to(inputs.device)[:, None].expand(-1, b).contiguous()
        if mode == "deletion":
            curves = _run(
                model,
                inputs,
                saliency,
                counts,
                largest=True,
                fill=sub,
                score=score,
                targets=targets,
                batch_size=batch_size,
                generator=generator,
                progress=progress,
                desc="deletion",
                first_rows=first,
            )
        else:
            start = torch.full_like(inputs, sub) if isinstance(sub, float) else sub.expand(inputs.shape).contiguous()
            curves = _run(
                model,
                start,
                saliency,
                counts,
                largest=True,
                fill=inputs,
                score=score,
                targets=targets,
                batch_size=batch_size,
                generator=generator,
                progress=progress,
                desc="insertion",
            )
    return _curve(curves, fractions.to(inputs.device), targets)


def deletion_curve(
    model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    step: int | None = None,
    substrate="zero",
    output: str = "probability",
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PerturbationCurve:
    """Deletion curve (Petsiuk et al. 2018, RISE): remove the most salient positions first.

    **Lower AUC is better** (the class probability should collapse fast).

    Step t replaces the ``min(t * step, n)`` most salient positions of each input with the
    substrate (RISE: zeros) and records the probability of the class the model predicts for the
    unperturbed input (``targets`` overrides the class). Steps run from t = 0 (the input itself)
    to the fully deleted input; the AUC is the trapezoid area over the deleted fraction, in [0, 1]
    for probabilities (RISE's ``auc``: identical when ``step`` divides n).

    Parameters
    ----------
    model:
        Classifier returning (N, num_classes) logits; run under ``torch.no_grad()`` in the mode
        the caller left it (pass ``model.eval()`` for the usual protocol).
    inputs:
        (B, ...) inputs on the model's device.
    attributions:
        Saliency: the inputs' shape (per element) or (B, 1, H, W) / (B, H, W) for (B, C, H, W)
        inputs (per pixel, across channels, as RISE does). Ties: lower flat index first.
    targets:
        (B,) classes to follow; default the top-1 prediction on the unperturbed inputs.
    step:
        Positions removed per step; default one image row (H*W / H pixels), i.e. RISE's 224 for
        224 x 224 images.
    substrate:
        What replaces removed positions: "zero" (default, RISE), "blur", "black", "white",
        "mean", "uniform", a number, or a tensor broadcastable to the inputs.
    output:
        "probability" (softmax, RISE) or "logit".
    batch_size:
        Perturbed inputs per model call (bounds memory); default B.
    generator:
        Random stream for the "uniform" substrate.
    progress:
        Show a progress bar over the model calls.

    Returns
    -------
    :class:`PerturbationCurve`: curves (B, steps + 1), fractions (steps + 1,), auc (B,), targets (B,).
    """
    return _causal_curve(
        "deletion",
        model,
        inputs,
        attributions,
        targets=targets,
        step=step,
        substrate=substrate,
        output=output,
        batch_size=batch_size,
        generator=generator,
        progress=progress,
    )


def insertion_curve(
    model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    step: int | None = None,
    substrate="blur",
    output: str = "probability",
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> PerturbationCurve:
    """Insertion curve (Petsiuk et al. 2018, RISE): start from the substrate, insert the most salient positions first.

    **Higher AUC is better** (the class probability should recover fast).

    Step t shows the ``min(t * step, n)`` most salient positions of the input over the substrate
    (RISE: the input blurred by :func:`rise_blur`), from the bare substrate (t = 0) to the full
    input. The class is the top-1 prediction on the unperturbed input (one extra forward pass
    of the B inputs) unless ``targets`` is given. Parameters as for :func:`deletion_curve`,
    except ``substrate`` defaults to "blur".
    """
    return _causal_curve(
        "insertion",
        model,
        inputs,
        attributions,
        targets=targets,
        step=step,
        substrate=substrate,
        output=output,
        batch_size=batch_size,
        generator=generator,
        progress=progress,
    )


def deletion_auc(model, inputs, attributions, **kwargs) -> torch.Tensor:
    """(B,) deletion AUC (**lower is better**); keyword arguments as :func:`deletion_curve`."""
    return deletion_curve(model, inputs, attributions, **kwargs).auc


def insertion_auc(model, inputs, attributions, **kwargs) -> torch.Tensor:
    """(B,) insertion AUC (**higher is better**); keyword arguments as :func:`insertion_curve`."""
    return insertion_curve(model, inputs, attributions, **kwargs).auc


# --------------------------------------------------------------------------- pixel flipping / regions


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
    positions, batch_size, targets = _common_args(model, inputs, attributions, targets, batch_size, output, generator)
    step = _default_step(inputs, positions) if step is None else step
    ks = _step_counts(positions, step)
    saliency, largest = _ordering_saliency(attributions, order, abs, generator)
    sub = _substrate(fill, inputs, "fill", generator)
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
    score = lambda logits, t: _scores(logits, t, output)  # noqa: E731
    with torch.no_grad():
        logits0 = _predict(model, inputs, batch_size)
        if targets is None:
            targets = logits0.argmax(dim=1)
        _check_target_range(targets, logits0.shape[1])
        counts = counts.to(inputs.device).contiguous()
        curves = _run(
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
    return _curve(curves, fractions.to(inputs.device), targets)


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
    _check_model(model)
    check_inputs(inputs, min_ndim=4)
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (B, C, H, W) images for region perturbation, got shape {tuple(inputs.shape)}")
    positions, batch_size, targets = _common_args(model, inputs, attributions, targets, batch_size, output, generator)
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
    sub = _substrate(fill, inputs, "fill", generator)
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


# --------------------------------------------------------------------------- SGT masked accuracy


@dataclass
class MaskedAccuracyCurve:
    """Accuracy as the top d% most salient positions are masked (Saliency Guided Training).

    Attributes
    ----------
    fractions: (D,) the masked fractions d.
    accuracy: (D,) accuracy over the batch at each d.
    correct: (B, D) bool, whether each sample is still classified correctly at each d.
    auc: 0-dim tensor, trapezoid area under ``accuracy`` over ``fractions`` divided by the span
        (the mean accuracy over the range).
    """

    fractions: torch.Tensor
    accuracy: torch.Tensor
    correct: torch.Tensor
    auc: torch.Tensor


def masked_accuracy_curve(
    model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    targets: torch.Tensor,
    *,
    fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    fill="uniform",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> MaskedAccuracyCurve:
    """Saliency-Guided-Training accuracy-drop curve (Ismail et al. 2021).

    **Lower is better** (masking the most salient positions of a faithful map hurts accuracy
    most: a steeper drop).

    For each fraction d, the floor(d * n) most salient positions of every input are replaced and
    the batch is classified against ``targets`` (labels). The default fill is SGT's: per sample
    and channel, uniform random values within that channel's [min, max] in the image, drawn
    afresh at each d (``generator`` makes it repeatable for the same ``batch_size``: the chunks
    consume the random stream in order); "mean", the substrate strings of
    :func:`deletion_curve`, a number or a tensor are accepted too.

    Parameters
    ----------
    fractions:
        Masked fractions in [0, 1], increasing or not (kept in the given order).
    Other parameters as for :func:`deletion_curve`.
    """
    positions, batch_size, targets_checked = _common_args(
        model, inputs, attributions, targets, batch_size, "logit", generator
    )
    if targets is None:
        raise TypeError("targets (the labels) are required for the masked-accuracy curve")
    targets = targets_checked
    fr = torch.as_tensor(list(fractions), dtype=torch.float64)
    if fr.ndim != 1 or fr.numel() == 0:
        raise ValueError("fractions must be a non-empty sequence of numbers in [0, 1]")
    if not bool(((fr >= 0) & (fr <= 1)).all()):
        raise ValueError(f"fractions must lie in [0, 1], got {fr.tolist()}")
    if isinstance(fill, str) and fill == "uniform":
        sub = "uniform"
    else:
        sub = _substrate(fill, inputs, "fill", generator)
    b = inputs.shape[0]
    ks = torch.floor(fr * positions).to(torch.int64)
    counts = ks.to(inputs.device)[:, None].expand(-1, b).contiguous()
    correct_fn = lambda logits, t: (logits.argmax(dim=1) == t).float()  # noqa: E731
    with torch.no_grad():
        correct = _run(
            model,
            inputs,
            attributions.detach(),
            counts,
            largest=True,
            fill=sub,
            score=correct_fn,
            targets=targets,
            batch_size=batch_size,
            generator=generator,
            progress=progress,
            desc="masked_accuracy",
        )
    correct = correct > 0.5
    acc = correct.double().mean(dim=0)
    fr_d = fr.to(inputs.device)
    auc = trapezoid_auc(acc[None, :], fr_d)[0] if fr.numel() > 1 and float(fr[-1] - fr[0]) != 0 else acc[0].clone()
    return MaskedAccuracyCurve(fractions=fr_d.float(), accuracy=acc.float(), correct=correct, auc=auc.float())
