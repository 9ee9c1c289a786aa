"""Saliency Guided Training (Ismail, Corrada Bravo and Feizi, NeurIPS 2021).

The official code (ayaabdelsalam91/saliency_guided_training, ``Scripts/interpretable.py`` with
``Helper.get_SingleMask`` / ``fill_SingleMask``) has two training branches; ``saliency_of`` picks
which one this objective reproduces:

* ``saliency_of="logit"`` (default): the CIFAR branch. Its ResNet returns logits, so the saliency
  is d z_y / dx. Pixels masked per sample: ``max(1, int(H * W * fraction))`` (the branch writes
  ``len(fattr) * len(fattr)``, i.e. H * H, for its square images). Fills: ``"uniform"`` (its
  ``randomMask``: per channel, uniform in the image channel's [min, max]) or ``"mean"`` (its
  ``meanMask``, the default there: the channel's mean).
* ``saliency_of="log_prob"``: the MNIST branch. Its network ends in ``log_softmax``, so the
  saliency is d log p_y / dx (on a logits model the masks then differ from the CIFAR branch's).
  Pixels masked per sample: ``int(fraction * C * H * W)`` evaluated left to right with C = 1, no
  minimum (the branch runs on one-channel images; for C > 1 we count as for C = 1). Fills: its
  constant fill is the batch's first pixel value ``data[0, 0, 0, 0]``, a number: pass it as
  ``fill`` (for MNIST normalised with mean 0.1307 and std 0.3081 every batch's first pixel is the
  background, -0.1307 / 0.3081); its ``RandomMasking`` is ``fill="uniform"`` (one channel).

Common to both branches, and to this objective:

1. the saliency is computed for the whole batch in one backward, with the model in eval mode and
   no graph kept (the official code does not backpropagate through it), averaged over channels to
   one value per pixel; ``saliency_abs=True`` takes its absolute value after the mean (off by
   default, as in the official code);
2. the least salient pixels of each sample are replaced (``mask_fraction``: 0.1 for CIFAR, 0.5
   for MNIST in the paper), across all channels;
3. ``L = CE(f(x), y) + lambda_consistency * KL(p(x) || p(x_masked))`` with ``batchmean`` and no
   detach (the MNIST branch's ``KLDivLoss(log_target=True)`` on log-probabilities and the CIFAR
   branch's ``KLDivLoss`` on (log_softmax, softmax) are this same KL); the masked batch goes
   through the model in train mode (``masked_bn="train"``; the other choices are ours).

Where we differ: ties between equal saliencies are broken by pixel index (``torch.topk``'s order
is unspecified); the uniform fills draw other random numbers (from ``generator``).
"""

from __future__ import annotations

from .._validation import check_positive_float
from .base import Objective, check_batch, consistency_kl, cross_entropy
from .masking import (
    check_fill,
    check_fraction,
    check_masked_bn,
    check_saliency_of,
    forward_pair,
    input_saliency,
    mask_least_salient,
)

__all__ = ["SaliencyGuidedTraining", "official_mask_count"]


def official_mask_count(fraction: float, shape: tuple[int, ...], saliency_of: str = "logit"):
    """Pixels masked per sample by the official branch that ``saliency_of`` selects.

    ``shape`` is the batch's (B, C, H, W): ``"logit"`` (CIFAR branch) ``max(1, int(H * W *
    fraction))``; ``"log_prob"`` (MNIST branch) ``int(fraction * 1 * H * W)``, left to right, no
    minimum (it can differ by one pixel from floor(fraction * H * W), e.g. 29 instead of 28 for
    fraction 0.29 on 10 x 10 images). Other shapes: ``fraction`` itself (``mask_features`` then
    masks floor(fraction * features) elements).
    """
    if len(shape) != 4:
        return fraction
    height, width = shape[2], shape[3]
    if saliency_of == "log_prob":
        return int(fraction * 1 * height * width)
    return max(1, int(height * width * fraction))


class SaliencyGuidedTraining(Objective):
    """``CE(f(x), y) + lambda_consistency * KL(p(x) || p(x_masked))``.

    Args:
        mask_fraction: fraction of pixels masked per sample, in (0, 1) (counted as the branch
            chosen by ``saliency_of`` counts it: :func:`official_mask_count`).
        fill: ``"uniform"`` or ``"mean"`` (or a constant).
        saliency_abs: rank pixels by |saliency| instead of the signed saliency.
        saliency_of: ``"logit"`` (the official CIFAR branch) or ``"log_prob"`` (its MNIST branch);
            see the module docstring.
        lambda_consistency: weight of the KL term (1 in the paper).
        masked_bn: ``"train"`` (official), ``"joint"``, ``"eval"`` or ``"frozen"``; see
            :func:`sdecor.losses.masking.forward_pair`.
        generator: optional ``torch.Generator`` for the uniform fill.

    Parts: ``ce``, ``consistency`` (the unweighted KL), ``total``, ``logits``.
    """

    def __init__(
        self,
        mask_fraction: float = 0.1,
        fill="uniform",
        saliency_abs: bool = False,
        lambda_consistency: float = 1.0,
        masked_bn: str = "train",
        generator=None,
        saliency_of: str = "logit",
    ) -> None:
        super().__init__()
        self.mask_fraction = check_fraction(mask_fraction, "mask_fraction")
        self.saliency_of = check_saliency_of(saliency_of)
        self.fill = check_fill(fill)
        self.saliency_abs = bool(saliency_abs)
        self.lambda_consistency = check_positive_float(lambda_consistency, "lambda_consistency", allow_zero=True)
        self.masked_bn = check_masked_bn(masked_bn)
        self.generator = generator

    def _clean_and_masked(self, model, images, labels, *, record: bool = False, feature_layer=None):
        """Saliency, masking and the two forwards: (clean logits, masked logits, clean features or None).

        With ``record=True`` the clean batch's features at ``feature_layer`` are recorded (the
        layer is hooked for that forward only)."""
        check_batch(images, labels)
        saliency = input_saliency(model, images, labels, absolute=self.saliency_abs, saliency_of=self.saliency_of)
        count = official_mask_count(self.mask_fraction, tuple(images.shape), self.saliency_of)
        masked, mask = mask_least_salient(images, saliency, count, self.fill, self.generator)
        masked = self._refine_masked(model, images, masked, mask)
        return forward_pair(model, images, masked, self.masked_bn, record=record, feature_layer=feature_layer)

    def _refine_masked(self, model, images, masked, mask):
        """The masked batch as the official code builds it (subclasses may change the fill)."""
        return masked

    def forward(self, model, images, labels):
        logits, masked_logits, _ = self._clean_and_masked(model, images, labels)
        ce = cross_entropy(logits, labels)
        kl = consistency_kl(logits, masked_logits)
        total = ce + self.lambda_consistency * kl
        return total, self._parts(total, logits, ce=ce, consistency=kl)

    def extra_repr(self) -> str:
        return (
            f"mask_fraction={self.mask_fraction}, fill={self.fill!r}, saliency_abs={self.saliency_abs}, "
            f"lambda_consistency={self.lambda_consistency}, masked_bn={self.masked_bn!r}, "
            f"saliency_of={self.saliency_of!r}"
        )
