"""Triton backend of the Barlow Twins loss: the fused kernels behind a torch.library op.

The kernels (``sdecor.kernels.barlow_twins``) return the loss and write dL/dZ1, dL/dZ2 in the
same forward pass; backward only multiplies the saved gradients by ``grad_output`` (no host sync:
the loss is a device tensor, nothing calls ``.item()``).

``torch.ops.sdecor.barlow_twins_fused(z1, z2, lambd, eps, need_grad)`` returns
``(loss, grad1, grad2)``: loss a 0-dim float32 tensor; the gradients in the views' dtype, shape and
strides (dense views), or empty tensors when ``need_grad`` is False (no gradient kernels run). It
has a fake implementation (torch.compile traces it without graph breaks) and an autograd formula;
differentiating that formula again (double backward) raises ``RuntimeError``.
"""

from __future__ import annotations

import torch

from ..triton_support import SUPPORTED_DTYPES, can_run_on, load_kernels

__all__ = ["can_run", "barlow_twins_triton", "barlow_twins_fused", "SUPPORTED_DTYPES"]

_kernels, _IMPORT_ERROR = load_kernels("barlow_twins")


def can_run(z: torch.Tensor) -> tuple[bool, str]:
    """Whether the Triton kernels can take ``z``: ``(True, "")`` or ``(False, reason)``."""
    return can_run_on(_kernels, _IMPORT_ERROR, z, "the views are")


def _forward(z1, z2, lambd: float, eps: float, need_grad: bool, route: str | None = None):
    g1 = torch.empty_like(z1) if need_grad else None
    g2 = torch.empty_like(z2) if need_grad else None
    loss = _kernels.barlow_twins_forward_backward(z1, z2, g1, g2, lambd=float(lambd), eps=float(eps), route=route)
    if not need_grad:
        g1, g2 = z1.new_empty(0), z2.new_empty(0)
    return loss, g1, g2


@torch.library.custom_op("sdecor::barlow_twins_fused", mutates_args=())
def barlow_twins_fused(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dL/dZ1, dL/dZ2) by the fused Triton kernels (arguments validated by the caller)."""
    return _forward(z1, z2, lambd, eps, need_grad)


@barlow_twins_fused.register_fake
def _(z1, z2, lambd, eps, need_grad):
    loss = z1.new_empty((), dtype=torch.float32)
    if need_grad:
        return loss, torch.empty_like(z1), torch.empty_like(z2)
    return loss, z1.new_empty(0), z2.new_empty(0)


def _setup_context(ctx, inputs, output):
    ctx.need_grad = inputs[4]
    ctx.save_for_backward(output[1], output[2])


_DOUBLE_BACKWARD = (
    "sdecor.barlow_twins_loss(backend='triton') does not support double backward "
    "(create_graph=True): its gradient is computed in the forward pass. "
    "Use backend='reference' for higher-order gradients."
)


def _backward(ctx, grad_loss, _g1, _g2):
    if torch.is_grad_enabled():
        raise RuntimeError(_DOUBLE_BACKWARD)
    if not ctx.need_grad:
        raise RuntimeError(
            "sdecor.barlow_twins_fused was called with need_grad=False, so no gradient was computed; "
            "call it with need_grad=True (barlow_twins_loss does so when a view requires grad)"
        )
    g1, g2 = ctx.saved_tensors
    return g1 * grad_loss, g2 * grad_loss, None, None, None


barlow_twins_fused.register_autograd(_backward, setup_context=_setup_context)


class _EagerFused(torch.autograd.Function):
    """Eager twin of the custom op's autograd formula (same ``_forward``), without the
    torch.library dispatch overhead; torch.compile and export trace the custom op instead."""

    @staticmethod
    def forward(ctx, z1, z2, lambd, eps, route):
        loss, g1, g2 = _forward(z1, z2, lambd, eps, True, route)
        ctx.save_for_backward(g1, g2)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        g1, g2 = ctx.saved_tensors
        return g1 * grad_loss, g2 * grad_loss, None, None, None


def barlow_twins_triton(z1, z2, *, lambd, eps, route=None):
    """Loss of the views (validated by :func:`sdecor.ops.barlow_twins_loss`), a 0-dim float32
    tensor, differentiable with respect to both views (the gradient comes from the forward pass).
    ``route`` forces "D" or "N" (eager calls only; tests use it)."""
    need_grad = bool((z1.requires_grad or z2.requires_grad) and torch.is_grad_enabled())
    lambd, eps = float(lambd), float(eps)
    if torch.compiler.is_compiling():
        loss, _, _ = torch.ops.sdecor.barlow_twins_fused(z1, z2, lambd, eps, need_grad)
        return loss
    if need_grad:
        return _EagerFused.apply(z1, z2, lambd, eps, route)
    return _forward(z1, z2, lambd, eps, False, route)[0]
