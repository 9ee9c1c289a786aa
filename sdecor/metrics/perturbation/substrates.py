"""Substrates of the perturbation curves: what replaces a removed position.

:func:`rise_blur` is RISE's insertion substrate; :func:`make_substrate` turns a substrate (or fill)
argument of the curves (a name, a number or a tensor) into a float or a tensor broadcastable to
the inputs.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from ..._validation import broadcasts_to, check_choice, check_int, check_positive_float
from ...ops.masking.dispatch import mask_features
from .._common import check_inputs

__all__ = ["rise_blur", "make_substrate", "SUBSTRATES"]

#: the substrate names :func:`make_substrate` accepts
SUBSTRATES = ("zero", "blur", "black", "white", "mean", "uniform")


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


def make_substrate(spec, inputs: torch.Tensor, name: str, generator) -> float | torch.Tensor:
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
    check_choice(spec, name, SUBSTRATES)
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
