"""The saliency-masking machinery of the consistency objectives (SGT, SCAAT, SaliencyDecor).

* :func:`input_saliency`: the gradient of the target logit (or of the target's log-probability,
  :data:`SALIENCY_OF`) with respect to the input, from one batched backward, averaged over
  channels (B, 1, H, W); the model runs in eval mode for it, as in both branches of the official
  Saliency Guided Training code.
* :func:`mask_least_salient`: replace the least salient pixels of each sample.
* :func:`adversarial_fill`: move the replaced pixels' values, within the image's value range,
  to where the prediction changes most (signed-gradient ascent on the consistency KL).
* :func:`forward_pair`: the clean and the perturbed batch through the model, with the four
  ways the perturbed batch can meet BatchNorm (:data:`MASKED_BN`), recording the clean batch's
  features at a layer when asked.
* :func:`frozen_running_stats`: BatchNorm running statistics left untouched by the forwards of a block.
* :func:`eval_mode`: every submodule in eval mode for a block, each flag restored afterwards.
* Option checks: :func:`check_fraction`, :func:`check_fill`, :func:`check_masked_bn`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .._validation import check_choice
from ..models.introspection import record_features, unwrap_model
from ..ops import mask_features
from ..ops.masking.checks import FILLS, check_fill_option
from ..saliency import input_gradient
from .base import check_logits, consistency_kl

__all__ = [
    "MASKED_BN",
    "SALIENCY_OF",
    "adversarial_fill",
    "check_saliency_of",
    "FILLS",
    "check_fill",
    "check_fraction",
    "check_masked_bn",
    "eval_mode",
    "forward_pair",
    "frozen_running_stats",
    "input_saliency",
    "mask_least_salient",
]

#: How the perturbed (masked or adversarial) batch meets BatchNorm:
#: ``"train"``: its own forward in train mode (batch statistics of the perturbed batch; running
#: statistics updated by it too), as both branches of the official SGT code do;
#: ``"joint"``: concatenated with the clean batch in one train-mode forward (shared statistics);
#: ``"eval"``: its own forward in eval mode (running statistics, no update; dropout off);
#: ``"frozen"``: its own forward in train mode (batch statistics of the perturbed batch) that
#: leaves the running statistics as they were (only the clean batches set what test time uses).
MASKED_BN = ("train", "joint", "eval", "frozen")


#: What :func:`input_saliency` differentiates: ``"logit"``, the target's logit z_y (the official
#: SGT code's CIFAR branch, whose ResNet returns logits); ``"log_prob"``, the target's
#: log-probability log softmax(z)_y (its MNIST branch, whose network ends in ``log_softmax``).
SALIENCY_OF = ("logit", "log_prob")


def check_saliency_of(value) -> str:
    """One of :data:`SALIENCY_OF`; ValueError otherwise."""
    return check_choice(value, "saliency_of", SALIENCY_OF)


def check_fraction(value, name: str, *, allow_zero: bool = False, allow_one: bool = False) -> float:
    """A real number in (0, 1) (ends included on request); TypeError / ValueError naming ``name``."""
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


def check_masked_bn(value) -> str:
    """One of :data:`MASKED_BN`; ValueError otherwise."""
    return check_choice(value, "masked_bn", MASKED_BN)


def check_fill(value):
    """A fill option: ``"uniform"``, ``"mean"`` or a number (returned as float); the masking op's own check."""
    return check_fill_option(value, FILLS)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards (also on error)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _log_prob_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d log softmax(model(x))_y / dx for the batch: one forward, one backward (input only)."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        logits = check_logits(model(x), x.shape[0])
        selected = torch.log_softmax(logits.float(), dim=1).gather(1, labels.long().view(-1, 1))
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Forwards inside leave every BatchNorm's running statistics (and batch counter) unchanged;
    in train mode they still normalise with their batch statistics. (The update is switched off
    with ``momentum = 0`` rather than undone afterwards: the buffers are inputs of the autograd
    graph, which must not see them change.)"""
    saved = [
        (m, m.momentum, m.num_batches_tracked.clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.running_mean is not None
    ]
    try:
        for m, _, _ in saved:
            m.momentum = 0.0
        yield model
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def input_saliency(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    absolute: bool = False,
    saliency_of: str = "logit",
) -> torch.Tensor:
    """Gradient saliency of the target, averaged over channels; a constant (detached).

    One forward of the whole batch with the model in eval mode, and one backward of the summed
    target logits (``saliency_of="logit"``) or target log-probabilities (``"log_prob"``, the
    gradient of z_y - logsumexp(z)) with respect to the input only (no parameter ``.grad`` is
    touched, no graph is kept). Images (B, C, H, W) give (B, 1, H, W) (``mean`` over channels,
    then ``abs`` when ``absolute``, in the order of both official SGT branches); other shapes give a
    saliency shaped like the input. On a model that already ends in ``log_softmax`` both settings
    give the same saliency (``log_softmax`` of log-probabilities is the identity).
    """
    check_saliency_of(saliency_of)
    net = unwrap_model(model)
    with eval_mode(net):
        if saliency_of == "logit":
            grad = input_gradient(net, images.detach(), labels.long())
        else:
            grad = _log_prob_gradient(net, images, labels)
    saliency = grad.mean(dim=1, keepdim=True) if images.ndim == 4 else grad
    return saliency.abs() if absolute else saliency


def mask_least_salient(images, saliency, k, fill, generator=None):
    """Replace the ``k`` least salient pixels of each sample (``mask_features``: an int count, or a
    float fraction giving floor(fraction * pixels)); detached."""
    masked, mask = mask_features(images.detach(), saliency, k, largest=False, fill=fill, generator=generator)
    return masked.detach(), mask


def value_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of each sample channel of ``x`` ((B, C, H, W); each sample of any other (B, ...)),
    with keepdim, so both broadcast to ``x``."""
    dims = tuple(range(2, x.ndim)) if x.ndim == 4 else tuple(range(1, x.ndim))
    return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)


def adversarial_fill(
    model: nn.Module, images: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor, steps: int, step_size: float
) -> torch.Tensor:
    """Move the fill of the masked pixels to where the prediction changes most; detached.

    Starting from ``masked`` (the images with the ``mask`` pixels replaced), ``steps`` steps of
    ``x_m <- clamp(x_m + step_size * (max - min) * sign(d KL / d x_m), min, max)`` on the masked
    pixels only, with KL = KL(p(images) || p(x_m)) (the clean prediction fixed) in eval mode and
    [min, max] each sample channel's value range in ``images`` (so the fill stays a valid image
    value, the range the uniform fill draws from). ``images``/``masked``: (B, C, H, W) (or any
    (B, ...)); ``mask``: bool, broadcastable to them (the (B, 1, H, W) mask of
    :func:`mask_least_salient`). ``steps`` = 0 returns ``masked``. No parameter ``.grad`` is touched.
    """
    x = images.detach()
    out = masked.detach()
    if steps == 0:
        return out
    low, high = value_range(x)
    step = step_size * (high - low) * mask.to(x.dtype)
    net = unwrap_model(model)
    with torch.enable_grad(), eval_mode(net):
        with torch.no_grad():
            target = net(x)
        for _ in range(steps):
            out.requires_grad_(True)
            kl = consistency_kl(target, net(out), detach_target=True)
            (grad,) = torch.autograd.grad(kl, out)
            out = torch.maximum(torch.minimum(out.detach() + step * grad.sign(), high), low)
    return out.detach()


def forward_pair(
    model: nn.Module,
    images: torch.Tensor,
    perturbed: torch.Tensor,
    masked_bn: str,
    *,
    record: bool = False,
    feature_layer=None,
):
    """Clean and perturbed logits, and the clean batch's features at ``feature_layer`` (or None).

    ``masked_bn`` (see :data:`MASKED_BN`): ``"train"`` two train-mode forwards; ``"joint"`` one
    forward of the concatenated batch; ``"eval"`` the perturbed batch in eval mode; ``"frozen"``
    two train-mode forwards, the perturbed one leaving the running statistics unchanged. The model's
    own mode is used for the clean batch. With ``record=True`` the clean batch's features at
    ``feature_layer`` (anything :func:`sdecor.models.record_features` accepts; None: the
    penultimate features) are returned too: the layer is hooked for the clean forward only and
    unhooked before this returns, also when it raises.
    """
    batch = images.shape[0]
    features = None
    hooked = record_features(model, feature_layer) if record else contextlib.nullcontext()
    if masked_bn == "joint":
        with hooked as rec:
            both = check_logits(model(torch.cat([images, perturbed], dim=0)), 2 * batch)
            if record:
                features = rec.pop()[:batch]
        return both[:batch], both[batch:], features
    with hooked as rec:
        logits = check_logits(model(images), batch)
        if record:
            features = rec.pop()
    if masked_bn == "eval":
        with eval_mode(model):
            perturbed_logits = model(perturbed)
    elif masked_bn == "frozen":
        with frozen_running_stats(model):
            perturbed_logits = model(perturbed)
    else:
        perturbed_logits = model(perturbed)
    return logits, check_logits(perturbed_logits, batch), features
