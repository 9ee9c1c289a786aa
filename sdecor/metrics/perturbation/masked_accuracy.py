"""The masked-accuracy curve of Saliency Guided Training (Ismail et al. 2021).

Accuracy against the labels as the most salient positions are masked (by default with SGT's
uniform random fill); it runs on the engine of :mod:`sdecor.metrics.perturbation.engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._common import trapezoid_auc
from .engine import check_common_args, perturbed_scores
from .substrates import make_substrate

__all__ = ["masked_accuracy_curve", "MaskedAccuracyCurve"]


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
    positions, batch_size, targets_checked = check_common_args(
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
        sub = make_substrate(fill, inputs, "fill", generator)
    b = inputs.shape[0]
    ks = torch.floor(fr * positions).to(torch.int64)
    counts = ks.to(inputs.device)[:, None].expand(-1, b).contiguous()
    correct_fn = lambda logits, t: (logits.argmax(dim=1) == t).float()  # noqa: E731
    with torch.no_grad():
        correct = perturbed_scores(
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
