"""Robustness of an explanation to input noise: max-sensitivity (Quantus ``MaxSensitivity``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._validation import check_int, check_positive_float
from ..saliency.targets import resolve_target
from ._common import (
    check_attributions,
    check_batch_size,
    check_generator,
    check_inputs,
    prepare_attributions,
    progress_bar,
    same_batch,
)

__all__ = ["max_sensitivity"]


def _explain(explain_fn, model, x, targets, name="explain_fn") -> torch.Tensor:
    a = explain_fn(model, x, targets)
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of attributions, got {type(a).__name__}")
    if a.ndim == 0 or a.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must return (N, ...) attributions for N inputs, got shape {tuple(a.shape)} for {x.shape[0]} inputs"
        )
    return a.detach()


def max_sensitivity(
    model,
    inputs: torch.Tensor,
    targets: torch.Tensor | None,
    explain_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    attributions: torch.Tensor | None = None,
    radius: float = 0.2,
    n_samples: int = 200,
    abs: bool = False,
    normalise: bool = False,
    return_nan_when_prediction_changes: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Max-sensitivity (Yeh et al. 2019; Quantus ``MaxSensitivity``).

    **Lower is better** (the explanation changes little under small input noise).

    For each of ``n_samples`` draws, every input element gets independent uniform noise in
    [-radius, radius] (Quantus's default perturbation, ``lower_bound=0.2``); the explanation of
    the noisy input is compared with the original one:
    ``s = ||a(x + noise) - a(x)||_F / ||a(x)||_F`` per sample (Quantus's defaults: ``difference``
    similarity, Frobenius norms over the flattened map for numerator and denominator), and the
    score is the maximum of s over the draws (NaN draws ignored, as Quantus's ``np.nanmax``).
    Attributions are preprocessed as in Quantus (``normalise`` by the per-sample maximum
    absolute value, then ``abs``; both off by default, as in Quantus).

    Parameters
    ----------
    model:
        Passed to ``explain_fn`` (and called for ``return_nan_when_prediction_changes``); left in
        the caller's mode.
    inputs:
        (B, ...) inputs.
    targets:
        (B,) classes to explain; None: the model's top-1 predictions.
    explain_fn:
        ``explain_fn(model, inputs, targets) -> attributions`` (Quantus's signature, torch
        tensors): gets chunks of noisy inputs (up to ``batch_size`` at a time, several noise
        draws of the batch stacked) and their targets, and must treat samples independently.
    attributions:
        The explanation of the clean inputs; default ``explain_fn(model, inputs, targets)``.
    radius:
        Half-width of the uniform noise (Quantus ``lower_bound``).
    n_samples:
        Noise draws per input (Quantus ``nr_samples``, default 200).
    return_nan_when_prediction_changes:
        As in Quantus: a draw that changes the model's top-1 prediction makes the sample's score
        NaN (one extra forward pass per noisy input).
    generator:
        ``torch.Generator`` on the inputs' device type for the noise; draw s is one
        ``torch.rand(inputs.shape)`` call, in order, so results do not depend on ``batch_size``.
    batch_size:
        Noisy inputs per ``explain_fn`` call (default B: one draw of the batch at a time).
    progress:
        Show a progress bar over the draws.

    Returns
    -------
    (B,) float tensor on the inputs' device.
    """
    if not callable(explain_fn):
        raise TypeError(
            f"explain_fn must be callable as explain_fn(model, inputs, targets), got {type(explain_fn).__name__}"
        )
    check_inputs(inputs)
    b = inputs.shape[0]
    radius = check_positive_float(radius, "radius")
    n_samples = check_int(n_samples, "n_samples", low=1)
    batch_size = check_batch_size(batch_size) or b
    check_generator(generator, inputs.device)
    if targets is None:
        with torch.no_grad():
            targets = model(inputs).argmax(dim=1)
    targets = resolve_target(targets, b, inputs.device, name="targets")
    if attributions is None:
        attributions = _explain(explain_fn, model, inputs, targets)
    check_attributions(attributions)
    same_batch(inputs, "inputs", attributions, "attributions")
    a0 = prepare_attributions(attributions.detach(), abs=abs, normalise=normalise).reshape(b, -1)
    denominator = torch.linalg.vector_norm(a0, dim=1)
    if return_nan_when_prediction_changes:
        with torch.no_grad():
            pred0 = model(inputs).argmax(dim=1)

    sims = torch.empty(n_samples, b, dtype=a0.dtype, device=inputs.device)
    per_chunk = max(1, batch_size // b)  # noise draws stacked per chunk
    bar = progress_bar(n_samples, progress, "max_sensitivity")
    for s0 in range(0, n_samples, per_chunk):
        s1 = min(s0 + per_chunk, n_samples)
        noise = torch.cat(
            [
                torch.rand(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
                for _ in range(s0, s1)
            ]
        )
        x_pert = inputs.repeat((s1 - s0,) + (1,) * (inputs.ndim - 1)) + (noise * (2 * radius) - radius)
        t_rep = targets.repeat(s1 - s0)
        diffs = []
        for lo in range(0, x_pert.shape[0], batch_size):
            hi = min(lo + batch_size, x_pert.shape[0])
            a = _explain(explain_fn, model, x_pert[lo:hi], t_rep[lo:hi])
            if a[0].numel() != a0.shape[1]:
                raise ValueError(
                    f"explain_fn returned attributions of shape {tuple(a.shape[1:])} per sample for noisy inputs, "
                    f"but {tuple(attributions.shape[1:])} for the clean ones"
                )
            a = prepare_attributions(a, abs=abs, normalise=normalise).reshape(hi - lo, -1).to(a0.dtype)
            ref = a0.index_select(0, torch.arange(lo, hi, device=a0.device) % b)
            diffs.append(torch.linalg.vector_norm(a - ref, dim=1))
        sim = (torch.cat(diffs) / denominator.repeat(s1 - s0)).view(s1 - s0, b)
        if return_nan_when_prediction_changes:
            with torch.no_grad():
                changed = torch.cat(
                    [model(x_pert[lo : lo + batch_size]).argmax(dim=1) for lo in range(0, x_pert.shape[0], batch_size)]
                )
            sim = torch.where(changed.view(s1 - s0, b) != pred0, torch.full_like(sim, float("nan")), sim)
        sims[s0:s1] = sim
        bar.update(s1 - s0)
    bar.close()
    if return_nan_when_prediction_changes:
        return sims.amax(dim=0)  # NaN propagates (Quantus's np.max)
    return _nanmax(sims)


def _nanmax(s: torch.Tensor) -> torch.Tensor:
    """Max over dim 0 ignoring NaN; NaN where a column is all NaN (numpy's nanmax)."""
    filled = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    m = filled.amax(dim=0)
    return torch.where(torch.isnan(s).all(dim=0), torch.full_like(m, float("nan")), m)
