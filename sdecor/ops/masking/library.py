"""Fake (meta) and autograd formulas of the compiled masking ops of ``sdecor._C``.

Importing this module registers them with ``torch.library``; :func:`sdecor.ops.masking.extension.load`
imports it right after ``sdecor._C`` loaded (the ops must exist first), so it runs once per process.
Ops (all on (B, F) flattened maps; see ``csrc/``):

* ``mask_select(saliency (B, F) float, k (B,) int64, largest) -> (B, F) bool``
* ``mask_fill_uniform(x (B, ...), mask (B, F) bool, u (n,) float) -> x's shape``; its gradient
  w.r.t. ``x`` is the keep-mask (``grad`` with the masked elements zeroed).
* ``mask_fill_random(x (B, ...), mask (B, F) bool, generator) -> x's shape`` (CUDA: the draws made
  in the kernel); the same gradient.
* ``mask_ranks(saliency (B, F) float, largest) -> (B, F) int32``
* ``mask_fill_ranked(x (B, R, S), ranks (B, S) int32, k (B,) int64, fill (B, R, S)) -> (B, R, S)``
"""

from __future__ import annotations

import torch

from .reference import mask_view_for

__all__: list[str] = []


@torch.library.register_fake("sdecor::mask_select")
def _mask_select_fake(saliency, k, largest):
    torch._check(saliency.dim() == 2, lambda: "mask_select: saliency must be (B, F)")
    torch._check(k.dim() == 1, lambda: "mask_select: k must be (B,)")
    return saliency.new_empty(saliency.shape, dtype=torch.bool)


@torch.library.register_fake("sdecor::mask_fill_uniform")
def _mask_fill_uniform_fake(x, mask, u):
    torch._check(mask.dim() == 2, lambda: "mask_fill_uniform: mask must be (B, F)")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _mask_fill_uniform_setup(ctx, inputs, output):
    x, mask = inputs[0], inputs[1]
    ctx.x_shape = tuple(x.shape)
    ctx.save_for_backward(mask)


def _mask_fill_uniform_backward(ctx, grad):
    (mask,) = ctx.saved_tensors
    grad_x = grad.masked_fill(mask_view_for(ctx.x_shape, mask), 0)
    return grad_x, None, None


torch.library.register_autograd(
    "sdecor::mask_fill_uniform", _mask_fill_uniform_backward, setup_context=_mask_fill_uniform_setup
)


@torch.library.register_fake("sdecor::mask_fill_random")
def _mask_fill_random_fake(x, mask, generator=None):
    torch._check(mask.dim() == 2, lambda: "mask_fill_random: mask must be (B, F)")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# (x, mask, generator): the formula of mask_fill_uniform's (x, mask, u)
torch.library.register_autograd(
    "sdecor::mask_fill_random", _mask_fill_uniform_backward, setup_context=_mask_fill_uniform_setup
)


@torch.library.register_fake("sdecor::mask_ranks")
def _mask_ranks_fake(saliency, largest):
    torch._check(saliency.dim() == 2, lambda: "mask_ranks: saliency must be (B, F)")
    return saliency.new_empty(saliency.shape, dtype=torch.int32)


@torch.library.register_fake("sdecor::mask_fill_ranked")
def _mask_fill_ranked_fake(x, ranks, k, fill):
    torch._check(x.dim() == 3, lambda: "mask_fill_ranked: x must be (B, R, S)")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)
