"""Shared machinery of the attribution methods: the base class, target handling, gradients, hooks.

Conventions (Captum's, unless a docstring says otherwise):

* ``inputs`` is a floating tensor (B, ...) with the samples along dim 0; the model maps it to
  logits of shape (B, K). The attribution has the shape, dtype and device of ``inputs``.
* ``target`` picks the logit to explain: an int (the same class for every sample), a list of B
  ints, a (B,) (or 0-dim) integer tensor, or ``None`` for the predicted class (argmax of the
  model's output on ``inputs``). :func:`sdecor.saliency.targets.resolve_target` is the one place
  where this is checked (the metrics use it too).
* The model is used as given: train/eval mode is never switched (as in Captum). In train mode
  BatchNorm uses batch statistics (and updates its running statistics) and Dropout is random in
  every forward pass the method makes; call ``model.eval()`` first for deterministic maps.
* Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so parameters'
  ``.grad`` are never touched; methods that hook modules remove every hook (and restore every
  flag they change) in a ``finally`` block, also when the call raises.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .._validation import FLOAT_DTYPES, check_float_tensor, check_min_ndim
from .targets import resolve_target, select_logits

__all__ = [
    "Attribution",
    "input_gradient",
    "check_inputs",
    "relu_modules",
    "relu_override",
]


class Attribution(abc.ABC):
    """Base class: ``Method(model, **options).attribute(inputs, target=None, **overrides)``.

    Subclasses list their options and defaults in ``_defaults`` and check them in
    ``_check_options``; the constructor sets the defaults of an instance, and ``attribute``
    accepts the same names as keyword overrides for one call.
    """

    #: option name -> default value (subclasses fill this in)
    _defaults: dict = {}
    #: whether the map is multiplied by the input (Captum's ``multiplies_by_inputs``)
    multiplies_by_inputs: bool = False
    #: whether the model must be an ``nn.Module`` (hooks) or may be any callable
    _needs_module: bool = False

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], **options) -> None:
        if self._needs_module:
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"model must be a torch.nn.Module for {type(self).__name__}, got {type(model).__name__}"
                )
        elif not callable(model):
            raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        self.model = model
        self.options = self._merge(options, dict(self._defaults))

    # -- options -------------------------------------------------------------------------------
    def _merge(self, overrides: dict, base: dict) -> dict:
        unknown = sorted(set(overrides) - set(self._defaults))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected option(s) {', '.join(unknown)}; "
                f"its options are {', '.join(sorted(self._defaults)) or '(none)'}"
            )
        merged = dict(base)
        merged.update(overrides)
        self._check_options(merged)
        return merged

    def _check_options(self, options: dict) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise TypeError/ValueError for a bad option (subclasses override)."""

    def _call_options(self, overrides: dict) -> dict:
        return self._merge(overrides, self.options) if overrides else self.options

    def _targets(self, x: torch.Tensor, target) -> torch.Tensor:
        """(B,) int64 targets for ``x``; ``None`` runs the model once (no grad) for its argmax."""
        if target is None:
            with torch.no_grad():
                return resolve_target(None, x.shape[0], x.device, self.model(x))
        return resolve_target(target, x.shape[0], x.device)

    # -- public API ----------------------------------------------------------------------------
    @abc.abstractmethod
    def attribute(self, inputs: torch.Tensor, target=None, **overrides) -> torch.Tensor:
        """(B, ...) attributions of ``inputs`` for ``target``; every method implements it."""

    def __call__(self, inputs: torch.Tensor, target=None, **overrides) -> torch.Tensor:
        return self.attribute(inputs, target, **overrides)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def check_inputs(inputs, name: str = "inputs") -> torch.Tensor:
    """Raise TypeError/ValueError unless ``inputs`` is a floating (B, ...) tensor with B >= 1."""
    check_float_tensor(inputs, name, FLOAT_DTYPES)
    check_min_ndim(inputs, name, 2, "(B, ...) with the samples along dim 0")
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(inputs.shape)}")
    return inputs


def input_gradient(model, inputs: torch.Tensor, target, create_graph: bool = False) -> torch.Tensor:
    """Gradient of the target logits with respect to ``inputs`` (one forward, one backward).

    ``target`` is anything :func:`resolve_target` accepts (``None``: the argmax of this very
    forward pass). With ``create_graph=True`` the result is differentiable (double backward)
    with respect to the model's parameters, and with respect to ``inputs`` if they require grad.
    """
    with torch.enable_grad():
        if create_graph and inputs.requires_grad:
            x = inputs
        else:
            x = inputs.detach().requires_grad_(True)
        output = model(x)
        target_t = resolve_target(target, inputs.shape[0], inputs.device, output)
        selected = select_logits(output, target_t)
        (grad,) = torch.autograd.grad(selected.sum(), x, create_graph=create_graph)
    return grad


def row_chunks(total: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs covering range(total) in pieces of at most ``chunk`` (None: one piece)."""
    step = total if chunk is None else max(1, int(chunk))
    for start in range(0, total, step):
        yield start, min(total, start + step)


# ---------------------------------------------------------------------------------------------
# ReLU hooks (GuidedBackprop, RectGrad)
# ---------------------------------------------------------------------------------------------
def relu_modules(model: nn.Module, method: str) -> list[nn.ReLU]:
    """Every ``nn.ReLU`` (subclasses included) in ``model``; ValueError naming ``method`` if none."""
    found = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not found:
        raise ValueError(
            f"{method} rewrites the backward pass of nn.ReLU modules, and the model has none. "
            "Calls to torch.nn.functional.relu / torch.relu cannot be hooked: replace them by nn.ReLU modules."
        )
    return found


@contextlib.contextmanager
def relu_override(model: nn.Module, function: Callable[[torch.Tensor], torch.Tensor], method: str, extra_hooks=()):
    """Within the block, every call of an ``nn.ReLU`` of ``model`` returns ``function(input)``.

    ``function`` computes relu(input) in forward with a custom backward (an autograd.Function).
    ``inplace=True`` modules are switched to ``inplace=False`` for the duration (the custom
    function needs the untouched input). ``extra_hooks`` is a list of (module, forward_hook)
    pairs registered as well. Everything is undone in ``finally``, also when the block raises.
    """
    relus = relu_modules(model, method)

    def hook(module, args, output):
        return function(args[0])

    handles = []
    inplace_flags = [(m, m.inplace) for m in relus]
    try:
        for m in relus:
            m.inplace = False
            handles.append(m.register_forward_hook(hook))
        for module, extra in extra_hooks:
            handles.append(module.register_forward_hook(extra))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, flag in inplace_flags:
            m.inplace = flag
