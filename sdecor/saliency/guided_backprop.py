"""Guided Backpropagation (Springenberg et al. 2015)."""

from __future__ import annotations

import torch

from ._base import Attribution, check_inputs, input_gradient, relu_override

__all__ = ["GuidedBackprop"]


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        out = a.clamp_min(0)
        ctx.save_for_backward(out)  # out > 0 exactly where a > 0 (what nn.ReLU saves too)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        # pass only positive upstream gradients, and only where the unit was active
        return grad.clamp_min(0) * (out > 0).to(grad.dtype)


class GuidedBackprop(Attribution):
    """Gradient where each ``nn.ReLU`` passes back only positive gradients of its active units.

    In backward through a ReLU with input a and upstream gradient G the rule gives
    ``relu(G) * (a > 0)`` (Captum's ``GuidedBackprop``). Only ``nn.ReLU`` modules (``inplace=True``
    ones included, switched off and restored for the call) are rewritten; functional
    ``F.relu``/``torch.relu`` calls and other activations keep their usual gradient. A model with
    no ``nn.ReLU`` raises ``ValueError``. Hooks are removed in ``finally``, also when the call
    raises, so the model is left exactly as it was.

    ``attribute(inputs, target=None)``.
    """

    _needs_module = True
    _defaults: dict = {}

    def attribute(self, inputs: torch.Tensor, target=None, **overrides) -> torch.Tensor:
        self._call_options(overrides)
        check_inputs(inputs)
        with relu_override(self.model, _GuidedReLU.apply, "GuidedBackprop"):
            return input_gradient(self.model, inputs, target)
