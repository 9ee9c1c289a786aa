"""Loads the compiled extension ``sdecor._C`` once and reports what it provides.

``sdecor._C`` (built from ``csrc/``) defines the ``torch.ops.sdecor`` ops of batched saliency
masking (``mask_select``, ``mask_fill_uniform``) with a CPU implementation, and CUDA ones
(``mask_select``, ``mask_fill_random``) when it was built with its CUDA part (setup.py: by default
when torch is a CUDA build and nvcc is found); and the rank-once ops of the perturbation curves
(``mask_ranks``, ``mask_fill_ranked``), CPU only. Their fake and autograd formulas live in
:mod:`sdecor.ops.masking.library`, imported here once the ops exist. When the extension is missing
or fails to load, the package keeps working on the pure-torch references and warns once, saying
how to build it.

Nothing here is imported at package import time: the first caller that needs the extension
triggers the load (and the warning, if any).
"""

from __future__ import annotations

import threading
import warnings

import torch

__all__ = ["load", "available", "has_cpu", "has_cuda", "load_error", "BUILD_HINT"]

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the source checkout "
    "(its CUDA kernels are built too when torch is a CUDA build and nvcc is found; "
    "SDECOR_BUILD_CUDA=1 insists on them, SDECOR_BUILD_CUDA=0 turns them off)"
)

_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "error": None}
_OPS = ("mask_select", "mask_fill_uniform", "mask_fill_random", "mask_ranks", "mask_fill_ranked")


def _import():
    import importlib

    module = importlib.import_module("sdecor._C")
    for name in _OPS:
        if not hasattr(torch.ops.sdecor, name):
            raise ImportError(f"sdecor._C loaded but does not define torch.ops.sdecor.{name} (stale build?)")
    return module


def load():
    """Import ``sdecor._C`` once; return the module, or ``None`` (after one warning) if unavailable."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        try:
            module = _import()
        except Exception as exc:  # missing .so, ABI mismatch, undefined symbol, ...
            _state["error"] = f"{type(exc).__name__}: {exc}"
            _state["module"] = None
            warnings.warn(
                "sdecor: the C++ extension sdecor._C is not available "
                f"({_state['error']}); mask_features falls back to the pure-torch reference. "
                f"To get the fast kernels, {BUILD_HINT}.",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            _state["module"] = module
            from . import library  # noqa: F401  (registers the ops' fake and autograd formulas)
        _state["tried"] = True
    return _state["module"]


def available() -> bool:
    """True when ``sdecor._C`` loaded (its CPU ops are then usable)."""
    return load() is not None


def has_cpu() -> bool:
    """True when the C++ CPU kernels are available."""
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key("sdecor::mask_select", "CPU")


def has_cuda() -> bool:
    """True when the extension was built with its CUDA kernels (SDECOR_BUILD_CUDA=1)."""
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key("sdecor::mask_select", "CUDA")


def load_error() -> str | None:
    """Why the extension did not load (``None`` if it loaded or was not tried yet)."""
    return _state["error"]
