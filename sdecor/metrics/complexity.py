"""Complexity of an attribution map: Gini sparseness and entropy (Quantus Sparseness, Complexity)."""

from __future__ import annotations

import torch

from ._common import check_attributions, chunked_map_scores

__all__ = ["sparseness", "complexity"]


def sparseness(
    attributions: torch.Tensor,
    *,
    abs: bool = True,
    normalise: bool = True,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Gini index of each attribution map (Chalasani et al. 2020; Quantus ``Sparseness``).

    **Higher is better** (a sparser, more concentrated explanation); in [0, 1).

    With a = |attributions| + 1e-7 flattened per sample and sorted ascending (a_1 <= ... <= a_n):
    ``G = sum_i (2 i - n - 1) a_i / (n sum_i a_i)``, exactly Quantus's formula, after Quantus's
    preprocessing: ``normalise`` divides each map by its maximum absolute value (per sample,
    see :func:`~sdecor.metrics._common.prepare_attributions`), then ``abs`` takes the absolute value.

    Parameters
    ----------
    attributions:
        (B, ...) attribution maps, any layout (every element is one feature).
    abs, normalise:
        Quantus's defaults (both True).
    batch_size:
        Samples processed at once (the sort copies one chunk); None: the whole batch.
    progress:
        Show a progress bar over the chunks.

    Returns
    -------
    (B,) tensor on the attributions' device (float32, or float64 for float64 input).
    """
    check_attributions(attributions)

    def gini(a, lo, hi):
        a = torch.sort(a + 1e-7, dim=1).values
        n = a.shape[1]
        weights = 2 * torch.arange(1, n + 1, device=a.device, dtype=a.dtype) - n - 1
        return (a * weights).sum(dim=1) / (n * a.sum(dim=1))

    return chunked_map_scores(
        attributions, gini, abs=abs, normalise=normalise, batch_size=batch_size, progress=progress, desc="sparseness"
    )


def complexity(
    attributions: torch.Tensor,
    *,
    abs: bool = True,
    normalise: bool = True,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Entropy of each attribution map's fractional contributions (Bhatt et al. 2020; Quantus ``Complexity``).

    **Lower is better** (fewer features carry the explanation); between 0 and log(n).

    With a the preprocessed map flattened per sample (``normalise`` by the per-sample maximum
    absolute value, then ``abs``), p = a / sum|a| and ``H = -sum_i p_i log(p_i + 1e-12)``,
    exactly Quantus's formula. A map that is all zero gives NaN (0 / 0), as in Quantus.

    Parameters and return value as for :func:`sparseness`.
    """
    check_attributions(attributions)

    def entropy(a, lo, hi):
        p = a / a.abs().sum(dim=1, keepdim=True)
        return -(p * torch.log(p + 1e-12)).sum(dim=1)

    return chunked_map_scores(
        attributions, entropy, abs=abs, normalise=normalise, batch_size=batch_size, progress=progress, desc="complexity"
    )
