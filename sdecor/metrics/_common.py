"""Helpers shared by the metric modules: argument checks, chunking, progress bars, result types."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .._validation import FLOAT_DTYPES, check_float_tensor, check_int, check_same_device, check_tensor

__all__ = [
    "PerturbationCurve",
    "check_attributions",
    "check_inputs",
    "check_masks",
    "check_batch_size",
    "check_generator",
    "align_masks",
    "prepare_attributions",
    "chunks",
    "chunked_map_scores",
    "progress_bar",
    "trapezoid_auc",
]


@dataclass
class PerturbationCurve:
    """Result of a perturbation curve (deletion, insertion, pixel flipping, region perturbation).

    Attributes
    ----------
    curves:
        (B, steps + 1) model score of each sample after each step; column 0 is the
        unperturbed start (the input itself, or the substrate for insertion).
    fractions:
        (steps + 1,) fraction of the perturbed positions (pixels, elements or regions) after
        each step, from 0 to (at most) 1.
    auc:
        (B,) trapezoid area under each curve over ``fractions``, divided by the covered span
        ``fractions[-1] - fractions[0]`` so it is the curve's mean height (in [0, 1] for
        probabilities; equal to the RISE ``auc`` when the step divides the number of positions).
    targets:
        (B,) the class whose score the curves follow.
    """

    curves: torch.Tensor
    fractions: torch.Tensor
    auc: torch.Tensor
    targets: torch.Tensor

    @property
    def drop(self) -> torch.Tensor:
        """(B, steps) score decrease ``curves[:, :1] - curves[:, 1:]`` (Quantus RegionPerturbation's output)."""
        return self.curves[:, :1] - self.curves[:, 1:]

    @property
    def aopc(self) -> torch.Tensor:
        """(B,) area over the perturbation curve, mean over steps 0..L of f(x) - f(x_k) (Samek et al. 2017)."""
        return (self.curves[:, :1] - self.curves).mean(dim=1)


def _check_batched(value, name: str, min_ndim: int, layout: str) -> torch.Tensor:
    """Floating tensor with at least ``min_ndim`` dims, one sample or more, no NaN/inf."""
    check_float_tensor(value, name, FLOAT_DTYPES)
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions {layout}, got shape {tuple(value.shape)}")
    if value.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        bad = "NaN" if bool(torch.isnan(value).any()) else "inf"
        raise ValueError(f"{name} must be finite, but it contains {bad}")
    return value


def check_attributions(attributions, name: str = "attributions", min_ndim: int = 2) -> torch.Tensor:
    """Floating tensor with a batch dimension, a feature per sample and no NaN/inf; raises naming ``name``."""
    _check_batched(attributions, name, min_ndim, "(B, ...)")
    if attributions[0].numel() == 0:
        raise ValueError(f"{name} must have at least one feature per sample, got shape {tuple(attributions.shape)}")
    return attributions


def check_inputs(inputs, name: str = "inputs", min_ndim: int = 2) -> torch.Tensor:
    """Floating (B, C, ...) tensor with B >= 1 and no NaN/inf; raises naming ``name``."""
    return _check_batched(inputs, name, min_ndim, "(B, C, ...)")


def check_masks(masks, name: str = "masks") -> torch.Tensor:
    """Boolean tensor, or a numeric one holding only 0 and 1; returns it as bool."""
    check_tensor(masks, name)
    if masks.dtype == torch.bool:
        return masks
    if masks.is_complex():
        raise TypeError(f"{name} must be boolean or hold only 0 and 1, got dtype {masks.dtype}")
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(f"{name} must be boolean or hold only 0 and 1, but it has other values")
    return masks != 0


def check_generator(generator, device: torch.device, name: str = "generator") -> None:
    """None, or a torch.Generator on ``device``'s type (it draws tensors there)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"{name} must be on the inputs' device type ({device.type}), got {generator.device}")


def check_batch_size(batch_size, name: str = "batch_size") -> int | None:
    if batch_size is None:
        return None
    return check_int(batch_size, name, low=1)


def same_batch(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{b_name} must have the same batch size as {a_name} ({a.shape[0]}), got {b.shape[0]}")
    check_same_device(a, a_name, b, b_name)


def align_masks(
    attributions: torch.Tensor, masks: torch.Tensor, a_name: str = "attributions", m_name: str = "masks"
) -> torch.Tensor:
    """Broadcast ground-truth ``masks`` to the shape of ``attributions``.

    Accepted: the same shape; (B, 1, *S) or (B, *S) masks for (B, C, *S) attributions (the mask
    covers every channel of a pixel, as Quantus's ``s_batch`` of shape (B, 1, H, W) does); and
    (B, 1, *S) masks for (B, *S) attributions.
    """
    same_batch(attributions, a_name, masks, m_name)
    a_shape, m_shape = tuple(attributions.shape), tuple(masks.shape)
    if m_shape == a_shape:
        return masks
    if masks.ndim == attributions.ndim and m_shape[1] == 1 and m_shape[2:] == a_shape[2:]:
        return masks.expand(a_shape)
    if masks.ndim == attributions.ndim - 1 and m_shape[1:] == a_shape[2:]:
        return masks.unsqueeze(1).expand(a_shape)
    if masks.ndim == attributions.ndim + 1 and m_shape[1] == 1 and m_shape[2:] == a_shape[1:]:
        return masks.squeeze(1)
    raise ValueError(
        f"{m_name} of shape {m_shape} does not match {a_name} of shape {a_shape}: expected the same shape, "
        f"or (B, 1, *spatial) / (B, *spatial) masks for (B, C, *spatial) attributions"
    )


def prepare_attributions(a: torch.Tensor, *, abs: bool, normalise: bool) -> torch.Tensor:
    """Quantus's preprocessing: normalise by the maximum absolute value, then take ``abs``.

    Normalisation is per sample (Quantus's default ``normalise_by_max`` divides by the maximum
    over the whole batch, which makes a sample's score depend on its batch neighbours; pass
    ``normalise_func_kwargs={"normalise_axes": [1, 2, 3]}`` to Quantus for the same per-sample
    behaviour). An all-zero sample is left as it is. Returns float32 or float64 (half precision
    is upcast so long sums stay accurate).
    """
    a = a.detach()
    if a.dtype in (torch.float16, torch.bfloat16):
        a = a.float()
    if normalise:
        flat = a.reshape(a.shape[0], -1)
        amax = flat.abs().amax(dim=1, keepdim=True)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        a = (flat / amax).reshape(a.shape)
    if abs:
        a = a.abs()
    return a


def chunks(total: int, size: int | None) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges of at most ``size`` (everything at once when ``size`` is None)."""
    size = total if size is None else max(1, size)
    for start in range(0, total, max(size, 1)):
        yield start, min(start + size, total)


def chunked_map_scores(
    attributions: torch.Tensor, score, *, abs: bool, normalise: bool, batch_size: int | None, progress: bool, desc: str
) -> torch.Tensor:
    """(B,) scores of maps computed in chunks of ``batch_size`` samples (bounded memory).

    Each chunk of ``attributions`` is preprocessed (:func:`prepare_attributions`) and flattened to
    (hi - lo, F); ``score(a, lo, hi)`` returns its (hi - lo,) scores. A progress bar counts samples.
    """
    batch_size = check_batch_size(batch_size)
    b = attributions.shape[0]
    out = []
    bar = progress_bar(b, progress, desc)
    for lo, hi in chunks(b, batch_size):
        a = prepare_attributions(attributions[lo:hi], abs=abs, normalise=normalise).reshape(hi - lo, -1)
        out.append(score(a, lo, hi))
        bar.update(hi - lo)
    bar.close()
    return torch.cat(out)


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar when ``enabled``, else a no-op object with ``update``/``close``."""
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False)

    class _Null:
        def update(self, n=1):
            pass

        def close(self):
            pass

    return _Null()


def trapezoid_auc(curves: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under each row of ``curves`` over ``fractions``, divided by the span."""
    if curves.shape[1] < 2:
        return curves[:, 0].clone()
    dx = (fractions[1:] - fractions[:-1]).to(curves.dtype)
    area = ((curves[:, 1:] + curves[:, :-1]) * 0.5 * dx).sum(dim=1)
    span = (fractions[-1] - fractions[0]).to(curves.dtype)
    return area / span
