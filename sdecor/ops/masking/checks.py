"""Argument checks of the masking ops: batched inputs, saliency layout, counts ``k``, ``fill``.

:func:`sdecor.ops.masking.dispatch.mask_features` and the rank-once ops of
:mod:`sdecor.ops.masking.ranked` take the same layouts, counts and fills, and check them here.

Layouts: a per-sample map of ``x``'s shape (one entry per element), or, for ``x`` of shape
(B, C, H, W), (B, 1, H, W) or (B, H, W) (one entry per pixel, masking all C channels).
"""

from __future__ import annotations

import math
import numbers

import torch

from ..._validation import FLOAT_DTYPES, broadcasts_to, check_choice, check_float_tensor

__all__ = ["FILLS", "check_batched", "check_largest", "check_layout", "check_counts", "check_fill", "check_fill_option"]

#: the fill strings :func:`~sdecor.ops.masking.dispatch.mask_features` computes itself
FILLS = ("uniform", "mean")


def check_batched(value, name: str) -> None:
    """Raise unless ``value`` is a float16/bfloat16/float32/float64 tensor with a batch dimension.

    Raises:
        TypeError: not a tensor, or not of a floating dtype.
        ValueError: a 0-dim tensor.
    """
    check_float_tensor(value, name, FLOAT_DTYPES)
    if value.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a 0-dim tensor")


def check_largest(largest) -> None:
    """Raise ``TypeError`` unless ``largest`` is a bool."""
    if not isinstance(largest, bool):
        raise TypeError(f"largest must be a bool, got {type(largest).__name__}")


def check_layout(x: torch.Tensor, saliency: torch.Tensor, name: str = "saliency") -> tuple[int, bool]:
    """``(F, pixel_mode)`` of a map ``saliency`` for ``x``: positions per sample, and whether one
    position covers all channels of a pixel.

    Raises:
        ValueError: ``saliency`` (named ``name`` in the message) is 0-dim, has another batch size
            than ``x``, or none of the accepted layouts (see the module doc).
    """
    b = x.shape[0]
    if saliency.ndim == 0 or saliency.shape[0] != b:
        got = saliency.shape[0] if saliency.ndim else "none (0-dim)"
        raise ValueError(f"{name} must have the batch size of x ({b}), got {got} (shape {tuple(saliency.shape)})")
    if saliency.shape == x.shape:
        return (x[0].numel() if b else math.prod(x.shape[1:])), False
    expected = f"x's shape {tuple(x.shape)}"
    if x.ndim == 4:
        _, _, h, w = x.shape
        if tuple(saliency.shape) in ((b, 1, h, w), (b, h, w)):
            return h * w, True
        expected += f", ({b}, 1, {h}, {w}) or ({b}, {h}, {w})"
    raise ValueError(f"{name} must have {expected}, got shape {tuple(saliency.shape)}")


def check_counts(
    k,
    batch: int,
    device: torch.device,
    *,
    positions: int | None = None,
    device_name: str = "x",
    device_checked: bool = False,
) -> tuple[torch.Tensor, int | None]:
    """``k`` as ``((B,) int64 counts on device, their sum)``.

    Accepted: an int; a (B,) integer tensor on the CPU or ``device``; and, when ``positions``
    (the positions per sample, F) is given, a float fraction in [0, 1] (count floor(fraction * F)).
    With ``positions`` every count must lie in [0, F] (one host sync for a tensor ``k``); without
    it counts are not range-checked and the sum of a tensor ``k`` is not computed (``None``).
    ``device_checked=True``: a k tensor on a non-CPU device is left to the caller's kernel to
    range-check (no host sync; the sum is ``None``); a CPU one is still checked here.

    Raises:
        TypeError: a bool, a float without ``positions``, another type; a k tensor of a
            non-integer dtype.
        ValueError: a k tensor not of shape (B,) or on another device than CPU or ``device``
            (``device_name`` names its owner in the message); with ``positions``: a count
            below 0 or above F, a fraction outside [0, 1].
    """
    forms = (
        "an int, a float fraction or a (B,) integer tensor"
        if positions is not None
        else "an int or a (B,) integer tensor"
    )
    if isinstance(k, torch.Tensor) and k.ndim == 0:
        if k.dtype == torch.bool:
            raise TypeError(f"k must be {forms}, got a bool tensor")
        if positions is not None:
            k = k.item()
    if isinstance(k, torch.Tensor):
        if k.dtype == torch.bool or k.is_floating_point() or k.is_complex():
            raise TypeError(f"a k tensor must have an integer dtype, got {str(k.dtype).replace('torch.', '')}")
        if k.ndim != 1 or k.shape[0] != batch:
            raise ValueError(f"a k tensor must have shape ({batch},) (one count per sample), got {tuple(k.shape)}")
        if k.device != device and k.device.type != "cpu":
            raise ValueError(f"a k tensor must be on the CPU or on {device_name}'s device ({device}), got {k.device}")
        counts = k.to(device=device, dtype=torch.int64)
        if positions is None or (device_checked and k.device.type != "cpu"):
            return counts, None
        if batch == 0:
            return counts, 0
        host = k.to(torch.int64) if k.device.type == "cpu" else counts  # a CPU k: no device sync
        low, high, total = torch.stack([host.min(), host.max(), host.sum()]).tolist()
        if low < 0:
            raise ValueError(f"k must be >= 0 in every sample, got a count of {low}")
        if high > positions:
            raise ValueError(f"k must be <= {positions} (the saliency elements per sample), got a count of {high}")
        return counts, int(total)
    if isinstance(k, bool):
        raise TypeError(f"k must be {forms}, got bool")
    if isinstance(k, numbers.Integral):
        count = int(k)
        if positions is not None:
            if count < 0:
                raise ValueError(f"k must be >= 0, got {count}")
            if count > positions:
                raise ValueError(f"k must be <= {positions} (the saliency elements per sample), got {count}")
    elif isinstance(k, numbers.Real) and positions is not None:
        frac = float(k)
        if not (0.0 <= frac <= 1.0):  # also rejects NaN
            raise ValueError(f"a fractional k must lie in [0, 1], got {frac}")
        count = int(math.floor(frac * positions))
    else:
        raise TypeError(f"k must be {forms}, got {type(k).__name__}")
    return torch.full((batch,), count, dtype=torch.int64, device=device), count * batch


def check_fill(fill, x: torch.Tensor, strings: tuple[str, ...] = FILLS):
    """``fill`` checked against ``x``: one of ``strings``, a number (returned as float) or a
    real tensor on x's device (0-dim: any device) broadcastable to x's shape (returned as given).

    Raises:
        TypeError: another type, a bool, a bool or complex tensor.
        ValueError: an unknown string, a fill tensor on another device or not broadcastable to x.
    """
    if isinstance(fill, str) and strings:
        check_choice(fill, "fill", strings)
        return fill
    if isinstance(fill, torch.Tensor):
        if fill.ndim > 0 and fill.device != x.device:
            raise ValueError(f"a fill tensor must be on x's device ({x.device}), got {fill.device}")
        if fill.dtype == torch.bool or fill.is_complex():
            raise TypeError(f"a fill tensor must be real-valued, got {str(fill.dtype).replace('torch.', '')}")
        if not broadcasts_to(fill.shape, x.shape):
            raise ValueError(
                f"a fill tensor must broadcast to x's shape {tuple(x.shape)}, got shape {tuple(fill.shape)}"
            )
        return fill
    return check_fill_option(fill, strings, tensor_allowed=True)


def check_fill_option(fill, strings: tuple[str, ...] = FILLS, *, tensor_allowed: bool = False):
    """A fill chosen before the tensor it fills is known (an objective's option): one of
    ``strings`` (returned as given) or a real number (returned as float).

    Raises:
        TypeError: another type, or a bool.
        ValueError: an unknown string.
    """
    if isinstance(fill, str) and strings:
        return check_choice(fill, "fill", strings)
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
        forms = "".join(f"{s!r}, " for s in strings)
        tensor = " or a tensor broadcastable to x" if tensor_allowed else ""
        raise TypeError(f"fill must be {forms}a number{tensor}, got {type(fill).__name__} {fill!r}")
    return float(fill)
