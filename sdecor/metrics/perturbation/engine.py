"""The engine of the perturbation curves: rank once, mask and score every (step, sample) pair in chunks.

Every curve (deletion / insertion, pixel flipping, region perturbation, the masked-accuracy curve)
enumerates its (steps + 1) x B perturbed inputs step-major (all samples of step 0, then of step 1,
...) and cuts them into chunks of ``batch_size`` inputs, each evaluated by one model call
(:func:`perturbed_scores`). Each sample's positions are ranked once
(:func:`sdecor.ops.masking.ranked.mask_ranks`, the selection order of
:func:`sdecor.ops.masking.dispatch.mask_features`), and a chunk is built by ONE fused pass
``where(ranks < k, fill, x)`` with a per-input count ``k`` (the random "uniform" fill instead
takes one ``mask_features`` call per chunk, which draws the values). There is no Python loop over
samples, and memory is bounded by the chunk. The model runs under ``torch.no_grad()`` in whatever
mode the caller left it (train or eval; most users pass ``model.eval()``: in train mode dropout
and batch-norm make the curves noisy and batch-norm statistics are updated by the perturbed inputs).

Layout of the saliency (``attributions``), as :func:`mask_features` accepts it: the inputs' shape
(each element is one position: channels are removed separately), or (B, 1, H, W) / (B, H, W) for
(B, C, H, W) inputs (each pixel is one position, removed across all channels, as RISE does).

Also here: the argument checks every curve shares (:func:`check_common_args`), the step counts,
and the result builder (:func:`curve_result`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..._validation import check_choice, check_int
from ...ops.masking.dispatch import mask_features
from ...ops.masking.ranked import RankedFill, cpp_available, mask_ranks
from ...saliency.targets import resolve_target
from .._common import (
    PerturbationCurve,
    check_attributions,
    check_batch_size,
    check_generator,
    check_inputs,
    progress_bar,
    same_batch,
    trapezoid_auc,
)

__all__ = [
    "OUTPUTS",
    "check_model",
    "check_saliency_layout",
    "check_common_args",
    "forward_logits",
    "target_scores",
    "predict",
    "check_target_range",
    "perturbed_scores",
    "curve_result",
    "step_counts",
    "default_step",
]

OUTPUTS = ("probability", "logit")


def check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable (an nn.Module), got {type(model).__name__}")


def check_saliency_layout(inputs: torch.Tensor, saliency: torch.Tensor, name: str) -> int:
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


def forward_logits(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return (N, num_classes) logits for N inputs, got {shape}")
    return out


def target_scores(logits: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    if output == "probability":
        logits = torch.softmax(logits.float(), dim=1)
    return logits.gather(1, targets[:, None]).squeeze(1)


def predict(model, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of the unperturbed inputs, chunked."""
    outs = [forward_logits(model, inputs[lo : lo + batch_size]) for lo in range(0, inputs.shape[0], batch_size)]
    return torch.cat(outs)


def check_target_range(targets: torch.Tensor, num_classes: int) -> None:
    if bool((targets >= num_classes).any()):
        raise ValueError(
            f"targets must be class indices below the model's {num_classes} outputs, got {int(targets.max())}"
        )


_SCORE_ROWS = 8192  # logits rows gathered before scoring them in one call (bounds that buffer)


def perturbed_scores(
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
    (:func:`sdecor.ops.masking.ranked.mask_ranks`) and build every perturbed input as
    ``where(ranks < k, fill, x)`` (:class:`~sdecor.ops.masking.ranked.RankedFill`: one fused pass
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
        logits = forward_logits(model, masked)
        if lo == start:
            check_target_range(targets, logits.shape[1])
        pending.append(logits)
        pending_rows += hi - lo
        if pending_rows >= _SCORE_ROWS:
            flush(hi)
        bar.update(1)
    flush(total)
    bar.close()
    return out.view(steps1, b).t().contiguous()


def curve_result(curves: torch.Tensor, fractions: torch.Tensor, targets: torch.Tensor) -> PerturbationCurve:
    """The result: (B, S + 1) curves, float64 fractions (for the AUC), the followed targets."""
    return PerturbationCurve(
        curves=curves,
        fractions=fractions.float(),
        auc=trapezoid_auc(curves.double(), fractions).float(),
        targets=targets,
    )


def check_common_args(
    model, inputs, attributions, targets, batch_size, output, generator=None, att_name="attributions"
):
    check_model(model)
    check_inputs(inputs)
    check_generator(generator, inputs.device)
    check_attributions(attributions, att_name)
    positions = check_saliency_layout(inputs, attributions, att_name)
    b = inputs.shape[0]
    batch_size = check_batch_size(batch_size) or b
    check_choice(output, "output", OUTPUTS)
    if targets is not None:
        targets = resolve_target(targets, b, inputs.device, name="targets")
    return positions, batch_size, targets


def step_counts(positions: int, step: int, name: str = "step") -> torch.Tensor:
    step = check_int(step, name, low=1)
    n_steps = math.ceil(positions / step)
    return torch.clamp(torch.arange(n_steps + 1, dtype=torch.int64) * step, max=positions)


def default_step(inputs: torch.Tensor, positions: int) -> int:
    """One image row of positions per step (RISE uses 224 for 224 x 224 images)."""
    if inputs.ndim >= 3:
        return max(1, positions // inputs.shape[-2])
    return max(1, math.ceil(positions / 100))
