"""Deletion and insertion curves (Petsiuk et al. 2018, RISE) and their AUCs.

Deletion removes the most salient positions first (lower AUC is better); insertion shows them
first over a substrate (higher AUC is better). Both run on the engine of
:mod:`sdecor.metrics.perturbation.engine`.
"""

from __future__ import annotations

import torch

from .._common import PerturbationCurve
from .engine import (
    check_common_args,
    check_target_range,
    curve_result,
    default_step,
    perturbed_scores,
    predict,
    step_counts,
    target_scores,
)
from .substrates import make_substrate

__all__ = ["deletion_curve", "deletion_auc", "insertion_curve", "insertion_auc"]


def _causal_curve(
    mode, model, inputs, attributions, *, targets, step, substrate, output, batch_size, generator, progress
):
    positions, batch_size, targets = check_common_args(
        model, inputs, attributions, targets, batch_size, output, generator
    )
    step = default_step(inputs, positions) if step is None else step
    ks = step_counts(positions, step)
    fractions = ks.to(torch.float64) / positions
    b = inputs.shape[0]
    sub = make_substrate(substrate, inputs, "substrate", generator)
    saliency = attributions.detach()
    score = lambda logits, t: target_scores(logits, t, output)  # noqa: E731
    with torch.no_grad():
        first = None
        if targets is None or mode == "deletion":
            logits0 = predict(model, inputs, batch_size)
            if targets is None:
                targets = logits0.argmax(dim=1)
            check_target_range(targets, logits0.shape[1])
            if mode == "deletion":
                first = score(logits0, targets)
        counts = ks.to(inputs.device)[:, None].expand(-1, b).contiguous()
        if mode == "deletion":
            curves = perturbed_scores(
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
            curves = perturbed_scores(
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
    return curve_result(curves, fractions.to(inputs.device), targets)


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
