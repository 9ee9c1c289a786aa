"""Vanilla gradient (Simonyan et al. 2014) and gradient x input (Shrikumar et al. 2016)."""

from __future__ import annotations

import torch

from ._base import Attribution, check_inputs, input_gradient

__all__ = ["Gradient", "InputXGradient"]


def _check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


class Gradient(Attribution):
    """d logit_target / d input: Captum's ``Saliency`` with ``abs=False`` by default.

    Args:
        model: an ``nn.Module`` or any callable mapping (B, ...) inputs to (B, K) logits.
        abs: return ``|gradient|`` (Captum's ``Saliency`` default is ``abs=True``; ours is the raw
            signed gradient, what Saliency Guided Training uses).
        create_graph: keep the graph of the backward pass, so that the map is itself
            differentiable with respect to the model's parameters (double backward) and can sit
            inside a training loss (SaliencyDecor, Saliency Guided Training). Captum has no such
            option (its issues #361 and #652). Works in train mode: the model is used as given,
            so BatchNorm uses batch statistics and Dropout draws a mask, as in any training
            forward pass. If ``inputs`` require grad, the map is differentiable with respect to
            them as well.

    ``attribute(inputs, target=None, *, abs=..., create_graph=...)`` (per-call overrides) makes one
    forward and one backward pass over the whole batch; ``target=None`` explains the predicted
    class of that same forward pass.
    """

    _defaults = {"abs": False, "create_graph": False}

    def _check_options(self, options: dict) -> None:
        _check_bool(options["abs"], "abs")
        _check_bool(options["create_graph"], "create_graph")

    def attribute(self, inputs: torch.Tensor, target=None, **overrides) -> torch.Tensor:
        opts = self._call_options(overrides)
        check_inputs(inputs)
        grad = input_gradient(self.model, inputs, target, create_graph=opts["create_graph"])
        return grad.abs() if opts["abs"] else grad


class InputXGradient(Attribution):
    """gradient * input (Captum's ``InputXGradient``); ``create_graph`` as in :class:`Gradient`."""

    _defaults = {"create_graph": False}
    multiplies_by_inputs = True

    def _check_options(self, options: dict) -> None:
        _check_bool(options["create_graph"], "create_graph")

    def attribute(self, inputs: torch.Tensor, target=None, **overrides) -> torch.Tensor:
        opts = self._call_options(overrides)
        check_inputs(inputs)
        grad = input_gradient(self.model, inputs, target, create_graph=opts["create_graph"])
        return grad * inputs
