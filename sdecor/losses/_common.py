"""Pieces shared by the training objectives.

Every objective is an ``nn.Module`` called as ``objective(model, images, labels) -> (loss, parts)``:
``loss`` is the 0-dim total to backpropagate, ``parts`` a dict of detached 0-dim tensors
(``"ce"``, ``"total"`` and the objective's own terms) plus ``"logits"``, the detached clean
logits (B, classes) for train accuracy. Objectives that read hidden features (DeCov,
SaliencyDecor) install a forward hook on the model when built and must be released with
:meth:`Objective.close` (or used as a context manager); the hook only records while the
objective's own clean forward runs, and the recorded tensor is dropped before the call returns.

Helpers here:

* :class:`FeatureHook`: records one layer's output (or, for the default "penultimate" layer, the
  input of the classifier) during an armed forward only.
* :func:`input_saliency`: the gradient of the target logit with respect to the input, from one
  batched backward, averaged over channels (B, 1, H, W); the model runs in eval mode for it,
  as in the official Saliency Guided Training code.
* :func:`forward_pair`: the clean and the perturbed batch through the model, with the three
  ways the perturbed batch can meet BatchNorm (``masked_bn``).
* :func:`consistency_kl`: KL(p(x) || p(x')) with ``batchmean``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_float_tensor, check_min_ndim, check_tensor
from ..ops.masking.dispatch import FILLS, mask_features
from ..saliency._base import input_gradient
from ..train.loop import unwrap_model

__all__ = [
    "Objective",
    "FeatureHook",
    "resolve_feature_layer",
    "eval_mode",
    "input_saliency",
    "forward_pair",
    "consistency_kl",
    "check_batch",
    "check_fraction",
    "MASKED_BN",
    "FILLS",
]

#: How the perturbed (masked or adversarial) batch meets BatchNorm:
#: ``"train"``: its own forward in train mode (batch statistics of the perturbed batch; running
#: statistics updated by it too), as the official SGT code does;
#: ``"joint"``: concatenated with the clean batch in one train-mode forward (shared statistics);
#: ``"eval"``: its own forward in eval mode (running statistics, no update; dropout off).
MASKED_BN = ("train", "joint", "eval")


def check_fraction(value, name: str, *, allow_zero: bool = False, allow_one: bool = False) -> float:
    """A real number in (0, 1) (ends included on request)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__} {value!r}")
    value = float(value)
    low_ok = value > 0 or (allow_zero and value == 0)
    high_ok = value < 1 or (allow_one and value == 1)
    if not (low_ok and high_ok):
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value}")
    return value


def check_batch(images, labels) -> None:
    """Validate an (images, labels) batch: float images (B, ...), integer labels (B,)."""
    check_float_tensor(images, "images")
    check_min_ndim(images, "images", 2, "(B, C, H, W) or (B, D)")
    check_tensor(labels, "labels")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(
            f"labels must be an integer tensor of class indices, got {str(labels.dtype).replace('torch.', '')}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape (B,) = ({images.shape[0]},), got {tuple(labels.shape)}")
    if labels.device != images.device:
        raise ValueError(f"labels must be on the same device as images ({images.device}), got {labels.device}")


def _check_logits(logits, batch: int) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape (B, classes) = ({batch}, classes), got {shape}")
    return logits


class Objective(nn.Module):
    """Base class: ``forward(model, images, labels) -> (loss, parts)``; a context manager.

    Subclasses that hook the model override :meth:`close`. ``parts`` holds detached 0-dim tensors
    and ``"logits"`` (detached, (B, classes)).
    """

    def close(self) -> None:
        """Remove every hook this objective installed (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _parts(total: torch.Tensor, logits: torch.Tensor, **terms: torch.Tensor) -> dict:
        parts = {name: value.detach() for name, value in terms.items()}
        parts["total"] = total.detach()
        parts["logits"] = logits.detach()
        return parts


# ---------------------------------------------------------------------------------- features


def resolve_feature_layer(model: nn.Module, layer=None) -> tuple[nn.Module, bool, str]:
    """Find the module whose features are recorded: ``(module, record_input, name)``.

    ``layer``:

    * ``None`` or ``"penultimate"``: the penultimate pooled features: the output of the module
      named by ``model.feature_layer`` (the sdecor reference models name theirs), else the input
      of the classifier (``model.fc`` / ``classifier`` / ``head`` / ``linear`` when that is an
      ``nn.Linear``, else the last ``nn.Linear`` of the model; ``record_input`` is True then).
    * ``"conv"``: the output of ``model.conv_feature_layer`` (the last conv feature map of the
      reference models), decorrelated over its channels.
    * a name from ``model.named_modules()`` (e.g. ``"layer3"``, ``"block4"``): that module's
      output ((N, C, H, W) outputs are decorrelated over channels).
    * an ``nn.Module`` that is a submodule of ``model``: its output.
    """
    model = unwrap_model(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_modules())
    if layer == "conv":
        layer = getattr(model, "conv_feature_layer", None)
        if not isinstance(layer, str):
            raise ValueError(
                f"feature_layer='conv' needs model.conv_feature_layer (a module name); {type(model).__name__} has none"
            )
    if layer is None or layer == "penultimate":
        declared = getattr(model, "feature_layer", None)
        if isinstance(declared, str) and declared in named:
            return named[declared], False, declared
        for attr in ("fc", "classifier", "head", "linear"):
            candidate = getattr(model, attr, None)
            if isinstance(candidate, nn.Linear):
                return candidate, True, f"{attr} (input)"
        linears = [(name, m) for name, m in named.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                "feature_layer=None looks for the classifier (an nn.Linear) to record its input, "
                f"but {type(model).__name__} has no nn.Linear; pass feature_layer= one of its module names"
            )
        name, module = linears[-1]
        return module, True, f"{name} (input)"
    if isinstance(layer, str):
        if layer not in named or layer == "":
            choices = ", ".join(repr(n) for n in list(named)[1:20])
            raise ValueError(
                f"feature_layer {layer!r} is not a module of the model; use 'penultimate', 'conv' or a "
                f"module name such as {choices}"
            )
        return named[layer], False, layer
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                return module, False, name or "<model>"
        raise ValueError("feature_layer is an nn.Module that is not part of the model")
    raise TypeError(
        f"feature_layer must be None, 'penultimate', 'conv', a module name or an nn.Module, got {type(layer).__name__}"
    )


class FeatureHook:
    """Record one layer's features during an armed forward; nothing otherwise.

    ``with hook.armed(): model(x)`` records the layer's output (or the classifier's input) of that
    forward; :meth:`pop` returns it and forgets it. Outside ``armed()`` the hook returns at once,
    so evaluation and the objective's other passes keep no features. :meth:`remove` uninstalls it.
    """

    def __init__(self, model: nn.Module, layer=None) -> None:
        module, record_input, name = resolve_feature_layer(model, layer)
        self.name = name
        self.record_input = record_input
        self._model_ref = weakref.ref(unwrap_model(model))
        self._armed = False
        self._features: torch.Tensor | None = None
        if record_input:
            self._handle = module.register_forward_pre_hook(self._pre_hook)
        else:
            self._handle = module.register_forward_hook(self._post_hook)

    def _pre_hook(self, module, args):
        if self._armed:
            if not args or not isinstance(args[0], torch.Tensor):
                raise ValueError(
                    f"the classifier {self.name!r} was not called with a tensor; pass feature_layer= explicitly"
                )
            self._features = args[0]

    def _post_hook(self, module, args, output):
        if self._armed:
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"feature_layer {self.name!r} returned {type(output).__name__}, not a tensor")
            self._features = output

    @contextlib.contextmanager
    def armed(self) -> Iterator[FeatureHook]:
        self._armed = True
        self._features = None
        try:
            yield self
        except BaseException:
            self._features = None  # a failed step keeps nothing
            raise
        finally:
            self._armed = False

    def pop(self) -> torch.Tensor:
        """The recorded features (the hook then forgets them)."""
        features, self._features = self._features, None
        if features is None:
            raise RuntimeError(f"the feature layer {self.name!r} did not run during the forward pass")
        return features

    def bound_to(self, model: nn.Module) -> bool:
        return self._model_ref() is unwrap_model(model)

    @property
    def active(self) -> bool:
        return self._handle is not None

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._features = None


# ---------------------------------------------------------------------------------- modes


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


# ---------------------------------------------------------------------------------- saliency


def input_saliency(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, absolute: bool = False
) -> torch.Tensor:
    """Gradient saliency of the target logit, averaged over channels; a constant (detached).

    One forward of the whole batch with the model in eval mode, and one backward of the summed
    target logits with respect to the input only (no parameter ``.grad`` is touched, no graph is
    kept; :func:`sdecor.saliency._base.input_gradient`). Images (B, C, H, W) give (B, 1, H, W)
    (``mean`` over channels, then ``abs`` when ``absolute``, in the official SGT code's order);
    other shapes give a saliency shaped like the input.
    """
    net = unwrap_model(model)
    with eval_mode(net):
        grad = input_gradient(net, images.detach(), labels.long())
    saliency = grad.mean(dim=1, keepdim=True) if images.ndim == 4 else grad
    return saliency.abs() if absolute else saliency


def mask_least_salient(images, saliency, fraction, fill, generator=None):
    """Replace the ``fraction`` least salient pixels of each sample (``mask_features``)."""
    masked, mask = mask_features(images.detach(), saliency, fraction, largest=False, fill=fill, generator=generator)
    return masked.detach(), mask


# ---------------------------------------------------------------------------------- forward


def forward_pair(
    model: nn.Module,
    images: torch.Tensor,
    perturbed: torch.Tensor,
    masked_bn: str,
    hook: FeatureHook | None = None,
):
    """Clean and perturbed logits (and the clean batch's hooked features, or None).

    ``masked_bn`` (see :data:`MASKED_BN`): ``"train"`` two train-mode forwards; ``"joint"`` one
    forward of the concatenated batch; ``"eval"`` the perturbed batch in eval mode. The model's
    own mode is used for the clean batch.
    """
    batch = images.shape[0]
    features = None
    arm = hook.armed() if hook is not None else contextlib.nullcontext()
    if masked_bn == "joint":
        with arm:
            both = _check_logits(model(torch.cat([images, perturbed], dim=0)), 2 * batch)
            if hook is not None:
                features = hook.pop()[:batch]
        return both[:batch], both[batch:], features
    with arm:
        logits = _check_logits(model(images), batch)
        if hook is not None:
            features = hook.pop()
    if masked_bn == "eval":
        with eval_mode(model):
            perturbed_logits = model(perturbed)
    else:
        perturbed_logits = model(perturbed)
    return logits, _check_logits(perturbed_logits, batch), features


def consistency_kl(
    clean_logits: torch.Tensor, perturbed_logits: torch.Tensor, *, detach_target: bool = False
) -> torch.Tensor:
    """KL(p(x) || p(x')) = sum_c p_c (log p_c - log p'_c), averaged over the batch (``batchmean``).

    Written as ``F.kl_div(log p', log p, log_target=True)``; the target p(x) is not detached unless
    asked (the official SGT code backpropagates through both). Computed in float32 at least.
    """
    dtype = torch.promote_types(clean_logits.dtype, torch.float32)
    log_p = F.log_softmax(clean_logits.to(dtype), dim=1)
    if detach_target:
        log_p = log_p.detach()
    log_q = F.log_softmax(perturbed_logits.to(dtype), dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, labels.long())


def check_masked_bn(value) -> str:
    return check_choice(value, "masked_bn", MASKED_BN)


def check_fill(value):
    if isinstance(value, str):
        return check_choice(value, "fill", FILLS)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fill must be 'uniform', 'mean' or a number, got {type(value).__name__} {value!r}")
    return float(value)
