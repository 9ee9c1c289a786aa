"""Loading a Triton kernel module and deciding whether it can take a tensor (shared by the ops'
Triton launchers).

The kernels package is installed as ``sdecor.kernels`` (setup.py); a plain source checkout has it
as the top-level package ``kernels``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

__all__ = ["SUPPORTED_DTYPES", "load_kernels", "can_run_on"]

#: The dtypes the Triton kernels take (they accumulate in float32; float64 has the reference).
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def load_kernels(name: str) -> tuple[ModuleType | None, str]:
    """``(module, "")`` for the kernel module ``name`` (e.g. ``"decorrelation"``), or
    ``(None, reason)`` when triton is missing or broken."""
    try:
        try:
            return importlib.import_module(f"sdecor.kernels.{name}"), ""
        except ImportError:
            return importlib.import_module(f"kernels.{name}"), ""
    except Exception as exc:  # triton missing or broken
        return None, f"{type(exc).__name__}: {exc}"


def can_run_on(kernels: ModuleType | None, import_error: str, t: torch.Tensor, what: str) -> tuple[bool, str]:
    """Whether ``kernels`` can take the tensor ``t`` (called ``what`` in the reason):
    ``(True, "")`` or ``(False, reason)``."""
    if kernels is None:
        return False, f"triton is not importable ({import_error})"
    if t.dtype not in SUPPORTED_DTYPES:
        return False, (
            f"the Triton kernels take float16, bfloat16 or float32, not {str(t.dtype).replace('torch.', '')} "
            "(use backend='reference' for float64)"
        )
    if t.device.type == "cuda":
        return True, ""
    if t.device.type == "cpu" and kernels.INTERPRET:
        return True, ""
    return False, (
        f"{what} on {t.device.type}; the Triton kernels need CUDA tensors "
        "(or CPU tensors with TRITON_INTERPRET=1 set before triton is imported)"
    )
