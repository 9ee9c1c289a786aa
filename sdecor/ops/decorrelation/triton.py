"""Triton backend of the decorrelation penalty: the fused kernels behind a torch.library op.

The kernels (``sdecor.kernels.decorrelation``) return the penalty and write dP/dX in the same
forward pass; backward only scales that gradient by ``grad_output`` (no host sync anywhere: the
loss is a device tensor, nothing calls ``.item()``). Eager calls hand the forward's gradient
buffer itself to backward, scaled in place, so no second N x D tensor is made; differentiating
the same graph a second time (``retain_graph=True``) then raises ``RuntimeError``.

``torch.ops.sdecor.decorrelation_fused(x, mode, reduction, correction, groups, eps, need_grad)``
returns ``(loss, grad)``: loss a 0-dim float32 tensor; grad dP/dX in x's dtype, shape and (for
dense x) strides, or an empty tensor when ``need_grad`` is False (no gradient kernels run).
It has a fake implementation (torch.compile traces it without graph breaks) and an autograd
formula; differentiating that formula again (double backward) raises ``RuntimeError``.

Input layout: (N, D) with any strides, or (N, C, *spatial) read in place as an (N, C, S) view
whenever the spatial dims merge into one stride (contiguous NCHW and channels_last both do);
other layouts are copied once to contiguous.
"""

from __future__ import annotations

import math

import torch

from ..triton_support import SUPPORTED_DTYPES, can_run_on, load_kernels

__all__ = ["can_run", "decorrelation_triton", "decorrelation_fused", "SUPPORTED_DTYPES"]

_kernels, _IMPORT_ERROR = load_kernels("decorrelation")


def can_run(x: torch.Tensor) -> tuple[bool, str]:
    """Whether the Triton kernels can take ``x``: ``(True, "")`` or ``(False, reason)``."""
    return can_run_on(_kernels, _IMPORT_ERROR, x, "x is")


def _ncs_view(t: torch.Tensor):
    """((N, C, S), (stride_N, stride_C, stride_S)) of ``t`` read in place, or None when the
    spatial dims of ``t`` do not merge into one strided axis."""
    if t.ndim == 2:
        return (t.shape[0], t.shape[1], 1), (t.stride(0), t.stride(1), 0)
    sizes, strides = t.shape[2:], t.stride()[2:]
    dims = [(size, stride) for size, stride in zip(sizes, strides) if size != 1]
    S = math.prod(sizes)
    for (_, outer), (inner_size, inner) in zip(dims[:-1], dims[1:]):
        if outer != inner * inner_size:
            return None
    return (t.shape[0], t.shape[1], S), (t.stride(0), t.stride(1), dims[-1][1] if dims else 0)


def _forward(
    x: torch.Tensor,
    mode: str,
    reduction: str,
    correction: int,
    groups: int,
    eps: float,
    need_grad: bool,
    config: dict | None = None,
):
    """(loss, grad) of ``x``; ``config`` is passed to the kernels' launcher (tile overrides)."""
    view = _ncs_view(x)
    src = x
    if view is None:
        src = x.contiguous()
        view = _ncs_view(src)
    grad = target = gview = None
    if need_grad:
        grad = torch.empty_like(x)  # x's strides when x is dense (the fake impl does the same)
        target, gview = grad, _ncs_view(grad)
        if gview is None:
            target = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            gview = _ncs_view(target)
    loss = _kernels.decorrelation_forward_backward(
        src,
        view[0],
        view[1],
        target,
        gview[1] if gview else None,
        correlation=mode == "correlation",
        mean_reduction=reduction == "mean",
        correction=correction,
        groups=groups,
        eps=eps,
        config=config,
    )
    if target is not None and target is not grad:
        grad.copy_(target)
    if grad is None:
        grad = x.new_empty(0)
    return loss, grad


@torch.library.custom_op("sdecor::decorrelation_fused", mutates_args=())
def decorrelation_fused(
    x: torch.Tensor, mode: str, reduction: str, correction: int, groups: int, eps: float, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty, dP/dX) of ``x`` by the fused Triton kernels (arguments validated by the caller)."""
    return _forward(x, mode, reduction, correction, groups, eps, need_grad)


@decorrelation_fused.register_fake
def _(x, mode, reduction, correction, groups, eps, need_grad):
    loss = x.new_empty((), dtype=torch.float32)
    grad = torch.empty_like(x) if need_grad else x.new_empty(0)
    return loss, grad


def _setup_context(ctx, inputs, output):
    ctx.need_grad = inputs[6]
    ctx.save_for_backward(output[1])


_DOUBLE_BACKWARD = (
    "sdecor.decorrelation_loss(backend='triton') does not support double backward "
    "(create_graph=True): its gradient is computed in the forward pass. "
    "Use backend='reference' for higher-order gradients."
)


def _backward(ctx, grad_loss, _unused):
    if torch.is_grad_enabled():
        raise RuntimeError(_DOUBLE_BACKWARD)
    if not ctx.need_grad:
        raise RuntimeError(
            "sdecor.decorrelation_fused was called with need_grad=False, so no gradient was computed; "
            "call it with need_grad=True (decorrelation_loss does so when x requires grad)"
        )
    (grad,) = ctx.saved_tensors
    return grad * grad_loss, None, None, None, None, None, None


decorrelation_fused.register_autograd(_backward, setup_context=_setup_context)


_CONSUMED = (
    "sdecor.decorrelation_loss(backend='triton') was differentiated twice through the same forward "
    "(retain_graph=True): the gradient made in the forward pass is handed to the first backward "
    "(scaled in place, so that no second copy is allocated). Call the loss again for a second backward, "
    "or use backend='reference'."
)


class _EagerFused(torch.autograd.Function):
    """Eager twin of the custom op's autograd formula (same ``_forward``), without the
    torch.library dispatch overhead (about 100 us a call on a small CPU), which dominates the
    small problems; torch.compile and export trace the custom op instead.

    The gradient made in the forward pass is held on ``ctx`` (not saved for backward) and
    backward hands that very buffer over, scaled in place by grad_output: no second N x D
    tensor exists at any time. A second backward through the same graph raises RuntimeError."""

    @staticmethod
    def forward(ctx, x, mode, reduction, correction, groups, eps):
        loss, grad = _forward(x, mode, reduction, correction, groups, eps, True)
        ctx.grad = grad
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(_CONSUMED)
        ctx.grad = None
        return grad.mul_(grad_loss), None, None, None, None, None


def decorrelation_triton(x, *, mode, reduction, correction, groups, eps):
    """Penalty of ``x`` (validated by :func:`sdecor.decorrelation_loss`), a 0-dim float32 tensor,
    differentiable with respect to ``x`` (the gradient comes from the forward pass)."""
    need_grad = bool(x.requires_grad and torch.is_grad_enabled())
    correction, groups, eps = int(correction), int(groups), float(eps)
    if torch.compiler.is_compiling():
        loss, _ = torch.ops.sdecor.decorrelation_fused(x, mode, reduction, correction, groups, eps, need_grad)
        return loss
    if need_grad:
        return _EagerFused.apply(x, mode, reduction, correction, groups, eps)
    return _forward(x, mode, reduction, correction, groups, eps, False)[0]
