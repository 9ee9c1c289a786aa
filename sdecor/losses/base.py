"""The objective contract and the pieces every objective shares.

An objective is an ``nn.Module`` built from its options alone and called as
``objective(model, images, labels) -> (loss, parts)``: ``loss`` is the 0-dim total to
backpropagate, ``parts`` a dict of detached 0-dim tensors (``"ce"``, ``"total"`` and the
objective's own terms) plus ``"logits"``, the detached clean logits (B, classes) for train
accuracy. ``model`` may be wrapped (``DistributedDataParallel`` as ``sdecor.train.fit`` passes
it): objectives run the forward pass through it and look inside it only through
:mod:`sdecor.models.introspection`. Objectives that read hidden features hook the layer only
while their own call runs (:func:`sdecor.models.record_features`); no hook stays on the model.

* :class:`Objective`: the base class; :meth:`Objective.options` lists the options an objective
  was built with, defaults included.
* :func:`check_batch`: float images (B, ...), integer labels (B,) on the same device.
* :func:`cross_entropy`: CE computed in float32 for half-precision logits.
* :func:`consistency_kl`: KL(p(x) || p(x')) with ``batchmean``.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_float_tensor, check_min_ndim, check_tensor

__all__ = ["Objective", "check_batch", "check_logits", "check_feature_layer", "consistency_kl", "cross_entropy"]


class Objective(nn.Module):
    """Base class: ``forward(model, images, labels) -> (loss, parts)``.

    ``parts`` holds detached 0-dim tensors and ``"logits"`` (detached, (B, classes)); build it
    with :meth:`_parts`. An objective holds options only: no model, no hook, no parameters of
    the model.
    """

    def options(self) -> dict:
        """Every constructor option of this objective by name, defaults included, as its attribute
        of the same name holds it (after validation: numbers, strings, booleans or None). The
        ``generator`` option is left out (a random state, not a setting). Records that carry this
        keep their meaning when the library's defaults change.

        Raises ``TypeError`` when a constructor option has no attribute of its name (a subclass
        must store each option under its own name).
        """
        out = {}
        for name, parameter in inspect.signature(type(self).__init__).parameters.items():
            if name in ("self", "generator") or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if not hasattr(self, name):
                raise TypeError(f"{type(self).__name__} stores no attribute for its option {name!r}")
            out[name] = getattr(self, name)
        return out

    @staticmethod
    def _parts(total: torch.Tensor, logits: torch.Tensor, **terms: torch.Tensor) -> dict:
        parts = {name: value.detach() for name, value in terms.items()}
        parts["total"] = total.detach()
        parts["logits"] = logits.detach()
        return parts


def check_feature_layer(value) -> str | None:
    """A ``feature_layer`` option: None, ``"penultimate"``, ``"conv"`` or a module name (str).

    The layer itself is looked up in the model at call time
    (:func:`sdecor.models.resolve_feature_layer`).
    """
    if value is None or (isinstance(value, str) and value):
        return value
    raise TypeError(
        "feature_layer must be None, 'penultimate', 'conv' or a module name (a non-empty str; the layer is found "
        f"in the model at call time), got {type(value).__name__} {value!r}"
    )


def check_batch(images, labels) -> None:
    """Validate an (images, labels) batch: float images (B, ...), integer labels (B,).

    Raises:
        TypeError: images not a float tensor, labels not an integer tensor.
        ValueError: images with fewer than 2 dims, labels not of shape (B,), or on another device.
    """
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


def check_logits(logits, batch: int) -> torch.Tensor:
    """``logits`` if it is a (batch, classes) tensor; ValueError otherwise."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape (B, classes) = ({batch}, classes), got {shape}")
    return logits


def consistency_kl(
    clean_logits: torch.Tensor, perturbed_logits: torch.Tensor, *, detach_target: bool = False
) -> torch.Tensor:
    """KL(p(x) || p(x')) = sum_c p_c (log p_c - log p'_c), averaged over the batch (``batchmean``).

    Written as ``F.kl_div(log p', log p, log_target=True)``; the target p(x) is not detached unless
    asked (both branches of the official SGT code backpropagate through both). Computed in float32 at least.
    """
    dtype = torch.promote_types(clean_logits.dtype, torch.float32)
    log_p = F.log_softmax(clean_logits.to(dtype), dim=1)
    if detach_target:
        log_p = log_p.detach()
    log_q = F.log_softmax(perturbed_logits.to(dtype), dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of (B, classes) logits and (B,) labels; half-precision logits in float32."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing)
