"""Benchmark suite ``train``: one optimizer step of SaliencyDecor against plain cross-entropy.

One group: ResNet-20 (:func:`sdecor.models.resnet20`, 10 classes) on random 3 x 32 x 32 images in
[0, 1] with random labels, in train mode. Implementations:

* ``standard`` (the baseline of the ratios): one step of the :class:`sdecor.losses.Standard`
  objective: forward, cross-entropy, ``zero_grad``, backward, ``SGD.step`` (lr 0.01, momentum 0.9);
* ``saliencydecor``: the same step with :class:`sdecor.losses.SaliencyDecor` at its default
  options (input saliency from one eval-mode forward + input backward, ``mask_features`` of the
  50% least salient pixels, the clean and the masked forward, decorrelation of the default
  feature layer's output (the last conv feature map's channels), one backward through all of it);
* the pieces of that step, each timed alone on the shapes and dtypes it sees inside the step, so
  their share of ``saliencydecor`` can be read off one table:

  - ``part:saliency``: :func:`sdecor.losses.input_saliency` (eval-mode forward + backward to the
    input, channel mean, abs) of the batch;
  - ``part:mask_features``: ``mask_features(images, saliency, 0.5, fill="uniform")`` with the
    (B, 1, H, W) float32 saliency of that batch;
  - ``part:decorrelation``: forward + backward of ``decorrelation_loss`` (the objective's mode and
    reduction, backend ``"auto"``: Triton on CUDA) on a copy of the hooked features (B, 64), in
    the dtype the model produced them in (bfloat16 under AMP).

  the share of the penalty and the masking in the step is
  (``part:mask_features`` + ``part:decorrelation``) / ``saliencydecor``.

Each step implementation trains its own copy of one initial model with its own optimizer.
On CUDA: batch 256 under ``torch.autocast(dtype=bfloat16)`` (as ``sdecor.train.fit`` runs with
``amp=True``; bf16 needs no gradient scaler); on CPU: float32 without autocast, batch 16 with
``quick`` (a few seconds) and 256 otherwise.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from .common import Group, Impl

__all__ = ["run", "SUITE", "BATCH", "QUICK_BATCH", "IMAGE", "PART_NAMES", "STEP_NAMES"]

SUITE = "train"
BATCH = 256
QUICK_BATCH = 16
IMAGE = (3, 32, 32)
NUM_CLASSES = 10
STEP_NAMES = ("standard", "saliencydecor")
PART_NAMES = ("part:saliency", "part:mask_features", "part:decorrelation")
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _step(model, objective, images, labels, device, amp):
    """One training step as ``sdecor.train.fit`` takes it (bf16 AMP needs no scaler)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def fn():
        with _autocast(device, amp):
            loss, _ = objective(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return fn


def run(device: torch.device, quick: bool, batch: int | None = None) -> list[Group]:
    """The suite's one group; ``batch`` overrides the batch size."""
    from ..losses import SaliencyDecor, Standard, input_saliency
    from ..models import record_features, resnet20
    from ..ops import decorrelation_loss, mask_features

    device = torch.device(device)
    cuda = device.type == "cuda"
    amp = cuda
    if batch is None:
        batch = QUICK_BATCH if (quick and not cuda) else BATCH
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.rand((batch, *IMAGE), generator=gen).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    torch.manual_seed(0)
    base = resnet20(num_classes=NUM_CLASSES, in_channels=IMAGE[0]).to(device).train()

    standard_model = copy.deepcopy(base)
    sd_model = copy.deepcopy(base)
    objective = SaliencyDecor()  # default options; it hooks the layer during each call only
    opts = {"fraction": objective.mask_fraction, "fill": objective.fill, "abs": objective.saliency_abs}

    # the shapes and dtypes the parts see inside a SaliencyDecor step, from one real pass
    part_model = copy.deepcopy(base)
    with _autocast(device, amp):
        saliency = input_saliency(part_model, images, labels, absolute=opts["abs"])
        # the objective's default layer: the pooled penultimate features
        with torch.no_grad(), record_features(part_model, objective.feature_layer) as record:
            part_model(images)
            features = record.pop().detach().clone()
    features.requires_grad_(True)

    def part_saliency():
        with _autocast(device, amp):
            return input_saliency(part_model, images, labels, absolute=opts["abs"])

    def part_mask():
        return mask_features(images, saliency, opts["fraction"], fill=opts["fill"])

    def part_decor():
        with _autocast(device, amp):
            loss = decorrelation_loss(features, mode=objective.decor_mode, reduction=objective.decor_reduction)
        return torch.autograd.grad(loss, features)

    impls = [
        Impl("standard", _step(standard_model, Standard(), images, labels, device, amp)),
        Impl("saliencydecor", _step(sd_model, objective, images, labels, device, amp)),
        Impl("part:saliency", part_saliency),
        Impl("part:mask_features", part_mask),
        Impl("part:decorrelation", part_decor),
    ]
    params = {
        "model": "resnet20",
        "image": "x".join(map(str, IMAGE)),
        "B": batch,
        "amp": "bf16" if amp else "off",
        "features": f"{'x'.join(map(str, features.shape))} {_DTYPE_NAMES.get(features.dtype, str(features.dtype))}",
        "saliency": "x".join(map(str, saliency.shape[1:])),
    }
    return [Group(suite=SUITE, params=params, impls=impls, baseline="standard")]
