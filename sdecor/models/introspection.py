"""Finding and reading layers of any ``nn.Module``: the one place sdecor looks inside a model.

* :func:`unwrap_model`: the module inside ``DistributedDataParallel`` / ``DataParallel`` /
  ``torch.compile`` wrappers.
* :func:`get_layer`: a sub-module by dotted name (or a sub-module checked to be part of the model),
  with a ``ValueError`` that lists close names.
* :func:`resolve_feature_layer`: which module holds the "penultimate" features (the rule the
  objectives and benchmarks use), a ``"conv"`` feature map, or a named layer.
* :func:`record_features`: a context manager that hooks a layer only for the duration of the
  ``with`` block; the hook is removed in a ``finally``, also when the block raises.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "FeatureRecord",
    "get_layer",
    "record_features",
    "resolve_feature_layer",
    "unwrap_model",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers (any nesting).

    Anything else is returned as it is.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return unwrap_model(model)


def get_layer(model: nn.Module, name) -> nn.Module:
    """The sub-module of ``model`` called ``name`` (a dotted name from ``named_modules()``).

    Wrappers are looked through (:func:`unwrap_model`), and a wrapper's ``"module."`` /
    ``"_orig_mod."`` prefix in ``name`` is accepted. ``name`` may also be an ``nn.Module``: it is
    returned if it is part of the model.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``name`` is neither a str nor an ``nn.Module``.
        ValueError: no such layer (the message suggests close names).
    """
    inner = _check_model(model)
    if isinstance(name, nn.Module):
        if any(m is name for m in inner.modules()):
            return name
        raise ValueError(f"layer is an nn.Module ({type(name).__name__}) that is not part of the model")
    if not isinstance(name, str):
        raise TypeError(f"layer name must be a str or an nn.Module, got {type(name).__name__}")
    modules = dict(inner.named_modules())
    key = name
    while key not in modules and key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    if key in modules:
        return modules[key]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5)
    hint = f"did you mean {', '.join(close)}?" if close else f"its modules include {', '.join(names[:20])}"
    raise ValueError(f"layer {name!r} is not a module of {type(inner).__name__}; {hint}")


def resolve_feature_layer(model: nn.Module, layer=None) -> tuple[nn.Module, bool, str]:
    """The module whose features are recorded: ``(module, record_input, name)``.

    ``layer``:

    * ``None`` or ``"penultimate"``: the penultimate pooled features: the output of the module
      named by ``model.feature_layer`` (the sdecor reference models name theirs), else the input
      of the classifier (``model.fc`` / ``classifier`` / ``head`` / ``linear`` when that is an
      ``nn.Linear``, else the last ``nn.Linear`` of the model; ``record_input`` is True then and
      ``name`` ends in ``" (input)"``).
    * ``"conv"``: the output of the module named by ``model.conv_feature_layer`` (the last conv
      feature map of the reference models), else the output of the model's last ``nn.Conv2d``
      (in registration order). A BatchNorm after it changes no channel correlation over the
      batch's positions, so the correlation penalty reads the same there as after the norm.
    * any other str: the output of the module of that name (:func:`get_layer`).
    * an ``nn.Module`` that is part of ``model``: its output.

    ``model`` may be wrapped (DDP, DataParallel, torch.compile); the attributes are read from the
    unwrapped module.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``layer`` is of another type.
        ValueError: the layer cannot be found (no ``conv_feature_layer`` or ``nn.Conv2d`` for
            ``"conv"``, no ``nn.Linear`` for the default, an unknown name, a module that is not part of the model).
    """
    inner = _check_model(model)
    if layer == "conv":
        declared = getattr(inner, "conv_feature_layer", None)
        if isinstance(declared, str):
            layer = declared
        else:
            convs = [(name, m) for name, m in inner.named_modules() if isinstance(m, nn.Conv2d)]
            if not convs:
                raise ValueError(
                    f"feature_layer='conv' looks for model.conv_feature_layer (a module name) or an nn.Conv2d; "
                    f"{type(inner).__name__} has neither: pass feature_layer=None (the classifier's input) "
                    "or a module name"
                )
            name, module = convs[-1]
            return module, False, name
    if layer is None or layer == "penultimate":
        named = dict(inner.named_modules())
        declared = getattr(inner, "feature_layer", None)
        if isinstance(declared, str) and declared in named:
            return named[declared], False, declared
        for attr in ("fc", "classifier", "head", "linear"):
            candidate = getattr(inner, attr, None)
            if isinstance(candidate, nn.Linear):
                return candidate, True, f"{attr} (input)"
        linears = [(name, m) for name, m in named.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                "feature_layer=None looks for the classifier (an nn.Linear) to record its input, "
                f"but {type(inner).__name__} has no nn.Linear; pass feature_layer= one of its module names"
            )
        name, module = linears[-1]
        return module, True, f"{name} (input)"
    if isinstance(layer, str):
        if layer == "":
            raise ValueError("feature_layer '' is the whole model, not a module of it; use a module name")
        module = get_layer(inner, layer)
        return module, False, layer
    if isinstance(layer, nn.Module):
        for name, module in inner.named_modules():
            if module is layer:
                return module, False, name or "<model>"
        raise ValueError("feature_layer is an nn.Module that is not part of the model")
    raise TypeError(
        f"feature_layer must be None, 'penultimate', 'conv', a module name or an nn.Module, got {type(layer).__name__}"
    )


class FeatureRecord:
    """What :func:`record_features` yields: the recorded layer and its last recorded features.

    Attributes:
        name: the layer's name (``"fc (input)"`` when the classifier's input is recorded).
        record_input: True when the layer's input (not its output) is recorded.
        features: the tensor of the last forward pass through the layer inside the ``with``
            block, or None.
    """

    def __init__(self, name: str, record_input: bool) -> None:
        self.name = name
        self.record_input = record_input
        self.features: torch.Tensor | None = None

    def pop(self) -> torch.Tensor:
        """The recorded features (then forgotten).

        Raises:
            RuntimeError: the layer did not run since the last ``pop``.
        """
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError(f"the feature layer {self.name!r} did not run during the forward pass")
        return features


@contextlib.contextmanager
def record_features(model: nn.Module, layer=None) -> Iterator[FeatureRecord]:
    """Hook ``layer`` of ``model`` for the duration of the ``with`` block; yield a :class:`FeatureRecord`.

    ``layer`` is resolved by :func:`resolve_feature_layer` (``None``/``"penultimate"``, ``"conv"``,
    a module name or a sub-module). Each forward pass through the layer inside the block stores
    its output (or, for the classifier's input, its first positional input) in
    ``record.features``, replacing the previous one; the tensors keep their autograd graph. The
    hook is removed when the block ends, also when it raises, and the record is then cleared
    if the block raised.

    Raises:
        TypeError, ValueError: from :func:`resolve_feature_layer`.
        ValueError: (during the forward pass) the layer produced, or the classifier was called
            with, something other than a tensor.
    """
    module, record_input, name = resolve_feature_layer(model, layer)
    record = FeatureRecord(name, record_input)

    def pre_hook(_module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            raise ValueError(f"the classifier {name!r} was not called with a tensor; pass feature_layer= explicitly")
        record.features = args[0]

    def post_hook(_module, _args, output):
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"feature_layer {name!r} returned {type(output).__name__}, not a tensor")
        record.features = output

    handle = module.register_forward_pre_hook(pre_hook) if record_input else module.register_forward_hook(post_hook)
    try:
        yield record
    except BaseException:
        record.features = None  # a failed step keeps nothing
        raise
    finally:
        handle.remove()
