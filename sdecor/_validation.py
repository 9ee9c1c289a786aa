"""Argument checks shared by every public entry point.

Each helper raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong value,
shape, device) with a message that names the argument and says what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(value, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``value`` is a ``torch.Tensor``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_tensor(value, name: str, dtypes: Iterable[torch.dtype] = FLOAT_DTYPES) -> torch.Tensor:
    """Raise ``TypeError`` unless ``value`` is a tensor of one of ``dtypes``."""
    check_tensor(value, name)
    dtypes = tuple(dtypes)
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({allowed}), got {str(value.dtype).replace('torch.', '')}")
    return value


def check_min_ndim(value: torch.Tensor, name: str, min_ndim: int, layout: str) -> None:
    """Raise ``ValueError`` if ``value.ndim < min_ndim``; ``layout`` names the expected shape."""
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions {layout}, got shape {tuple(value.shape)}")


def check_choice(value, name: str, choices: Iterable[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (``TypeError`` if not a str)."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_int(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """Raise ``TypeError`` unless ``value`` is an int (bool excluded); ``ValueError`` if outside [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_positive_float(value, name: str, allow_zero: bool = False) -> float:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is a finite real number > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (value == value) or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_same_device(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    """Raise ``ValueError`` if two tensors live on different devices."""
    if a.device != b.device:
        raise ValueError(f"{b_name} must be on the same device as {a_name} ({a.device}), got {b.device}")


def check_finite(value: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``value`` has NaN or inf entries (one device sync)."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, but it contains NaN or inf")


def broadcasts_to(shape, target) -> bool:
    """True when a tensor of ``shape`` broadcasts to exactly ``target`` (torch's rules)."""
    try:
        return torch.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except RuntimeError:
        return False
