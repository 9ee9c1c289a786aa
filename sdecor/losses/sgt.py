"""Saliency Guided Training (Ismail, Corrada Bravo and Feizi, NeurIPS 2021), as the official code does it.

Per step:

1. saliency = d logit_y / d x for the whole batch in one backward, with the model in eval mode and
   no graph kept (the official code does not backpropagate through the saliency), averaged over
   channels to one value per pixel; ``saliency_abs=True`` takes its absolute value (off by
   default, as in the official code);
2. the ``mask_fraction`` least salient pixels of each sample (0.1 for CIFAR, 0.5 for MNIST in the
   paper) are replaced: ``fill="uniform"`` draws per channel from the image's [min, max],
   ``fill="mean"`` uses the channel mean;
3. ``L = CE(f(x), y) + lambda_consistency * KL(p(x) || p(x_masked))`` with ``batchmean`` and no
   detach; the masked batch goes through the model in train mode (``masked_bn="train"``; the other
   choices are ours, for the sweep).
"""

from __future__ import annotations

from .._validation import check_positive_float
from .base import Objective, check_batch, consistency_kl, cross_entropy
from .masking import check_fill, check_fraction, check_masked_bn, forward_pair, input_saliency, mask_least_salient

__all__ = ["SaliencyGuidedTraining"]


class SaliencyGuidedTraining(Objective):
    """``CE(f(x), y) + lambda_consistency * KL(p(x) || p(x_masked))``.

    Args:
        mask_fraction: fraction of pixels masked per sample, in (0, 1).
        fill: ``"uniform"`` or ``"mean"`` (or a constant).
        saliency_abs: rank pixels by |saliency| instead of the signed saliency.
        lambda_consistency: weight of the KL term (1 in the paper).
        masked_bn: ``"train"`` (official), ``"joint"`` or ``"eval"``; see ``sdecor.losses.MASKED_BN``.
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
    ) -> None:
        super().__init__()
        self.mask_fraction = check_fraction(mask_fraction, "mask_fraction")
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
        saliency = input_saliency(model, images, labels, absolute=self.saliency_abs)
        masked, _ = mask_least_salient(images, saliency, self.mask_fraction, self.fill, self.generator)
        return forward_pair(model, images, masked, self.masked_bn, record=record, feature_layer=feature_layer)

    def forward(self, model, images, labels):
        logits, masked_logits, _ = self._clean_and_masked(model, images, labels)
        ce = cross_entropy(logits, labels)
        kl = consistency_kl(logits, masked_logits)
        total = ce + self.lambda_consistency * kl
        return total, self._parts(total, logits, ce=ce, consistency=kl)

    def extra_repr(self) -> str:
        return (
            f"mask_fraction={self.mask_fraction}, fill={self.fill!r}, saliency_abs={self.saliency_abs}, "
            f"lambda_consistency={self.lambda_consistency}, masked_bn={self.masked_bn!r}"
        )
