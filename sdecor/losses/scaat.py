"""SCAAT (saliency-guided adversarial training, BMVC 2023): OUR READING, not the paper's recipe.

The paper's idea is adversarial samples built under saliency guidance to remove "saliency noise";
its code and method section were not available to us, so this module implements a documented
reading of it, with every choice a parameter:

1. saliency s = |d logit_y / d x| averaged over channels, one batched backward in eval mode;
2. an adaptive budget per sample: the perturbed pixels are the least salient ones that together
   carry at most ``noise_mass`` of the sample's total saliency (so a sample whose saliency is
   concentrated gets more pixels perturbed, a diffuse one fewer), clamped to
   [``min_fraction``, ``max_fraction``] of the pixels;
3. a PGD perturbation restricted to those pixels: ``steps`` signed-gradient ascent steps on
   KL(p(x) || p(x + delta)) in eval mode, |delta| <= ``epsilon`` times the range (max - min) of
   each sample's channel, x + delta kept inside that range, random start;
4. ``L = CE(f(x), y) + lambda_consistency * KL(p(x) || p(x_adv))`` (``batchmean``, no detach),
   the adversarial batch meeting BatchNorm as ``masked_bn`` says.

The model is trained to ignore worst-case changes of the pixels its saliency calls irrelevant,
which is the stated aim (a gradient that does not react to them).
"""

from __future__ import annotations

import torch

from .._validation import check_int, check_positive_float
from ..models.introspection import unwrap_model
from ..ops import mask_features
from .base import Objective, check_batch, consistency_kl, cross_entropy
from .masking import check_fraction, check_masked_bn, eval_mode, forward_pair, input_saliency, value_range

__all__ = ["SCAAT", "adaptive_budget"]


def adaptive_budget(
    saliency: torch.Tensor, noise_mass: float, min_fraction: float, max_fraction: float
) -> torch.Tensor:
    """Per-sample pixel count k (B,): the least salient pixels holding <= ``noise_mass`` of |saliency|.

    k_i = #{pixels p : (sum of the |s| values sorted ascending, up to and including p) <= noise_mass * total},
    then clamped to [ceil(min_fraction * P), floor(max_fraction * P)] with P pixels per sample.
    """
    flat = saliency.detach().abs().flatten(1).float()
    pixels = flat.shape[1]
    cumulative = flat.sort(dim=1).values.cumsum(dim=1)
    total = cumulative[:, -1:].clamp_min(torch.finfo(torch.float32).tiny)
    k = (cumulative <= noise_mass * total).sum(dim=1)
    low = min(pixels, max(0, int(-(-min_fraction * pixels // 1))))
    high = max(low, int(max_fraction * pixels))
    return k.clamp(low, high)


class SCAAT(Objective):
    """Our reading of SCAAT: consistency under a PGD perturbation of the least salient pixels.

    Args:
        epsilon: L-inf budget as a fraction of each sample channel's value range (> 0).
        steps: PGD steps (>= 1); ``step_size`` defaults to 2.5 * epsilon / steps (fraction of range).
        noise_mass: saliency mass the perturbed pixels may carry (adaptive budget), in (0, 1].
        min_fraction, max_fraction: clamp of the perturbed pixel fraction.
        lambda_consistency: weight of the KL term.
        masked_bn: how the adversarial batch meets BatchNorm (``"train"``, ``"joint"``, ``"eval"``).
        generator: optional ``torch.Generator`` for the random start.

    Parts: ``ce``, ``consistency``, ``budget`` (mean fraction of pixels perturbed), ``total``, ``logits``.
    """

    def __init__(
        self,
        epsilon: float = 0.25,
        steps: int = 2,
        step_size: float | None = None,
        noise_mass: float = 0.1,
        min_fraction: float = 0.05,
        max_fraction: float = 0.75,
        lambda_consistency: float = 1.0,
        masked_bn: str = "train",
        generator=None,
    ) -> None:
        super().__init__()
        self.epsilon = check_positive_float(epsilon, "epsilon")
        self.steps = check_int(steps, "steps", low=1)
        self.step_size = (
            2.5 * self.epsilon / self.steps if step_size is None else check_positive_float(step_size, "step_size")
        )
        self.noise_mass = check_fraction(noise_mass, "noise_mass", allow_one=True)
        self.min_fraction = check_fraction(min_fraction, "min_fraction", allow_zero=True, allow_one=True)
        self.max_fraction = check_fraction(max_fraction, "max_fraction", allow_zero=True, allow_one=True)
        if self.min_fraction > self.max_fraction:
            raise ValueError(f"min_fraction ({self.min_fraction}) must not exceed max_fraction ({self.max_fraction})")
        self.lambda_consistency = check_positive_float(lambda_consistency, "lambda_consistency", allow_zero=True)
        self.masked_bn = check_masked_bn(masked_bn)
        self.generator = generator

    def perturb(self, model, images, labels):
        """The adversarial batch and the perturbed-pixel mask (shaped like the saliency, bool)."""
        saliency = input_saliency(model, images, labels, absolute=True)
        k = adaptive_budget(saliency, self.noise_mass, self.min_fraction, self.max_fraction)
        x = images.detach()
        _, mask = mask_features(x, saliency, k, largest=False, fill=0.0)  # the k least salient pixels
        low, high = value_range(x)
        scale = (high - low).clamp_min(torch.finfo(x.dtype).tiny)
        eps, alpha = self.epsilon * scale, self.step_size * scale
        keep = mask.to(x.dtype)
        device = x.device if self.generator is None else self.generator.device
        noise = torch.rand(x.shape, generator=self.generator, device=device, dtype=x.dtype).to(x.device)
        delta = (noise * 2 - 1) * eps * keep
        net = unwrap_model(model)
        with torch.enable_grad(), eval_mode(net):
            with torch.no_grad():
                target = net(x)  # p(x) in eval mode, the reference the attack moves away from
            for _ in range(self.steps):
                delta.requires_grad_(True)
                adv = torch.maximum(torch.minimum(x + delta, high), low)
                kl = consistency_kl(target, net(adv), detach_target=True)
                (grad,) = torch.autograd.grad(kl, delta)
                delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps) * keep
                delta = torch.maximum(torch.minimum(x + delta, high), low) - x
        return (x + delta).detach(), mask

    def forward(self, model, images, labels):
        check_batch(images, labels)
        adversarial, mask = self.perturb(model, images, labels)
        logits, adv_logits, _ = forward_pair(model, images, adversarial, self.masked_bn)
        ce = cross_entropy(logits, labels)
        kl = consistency_kl(logits, adv_logits)
        total = ce + self.lambda_consistency * kl
        budget = mask.flatten(1).float().mean()
        return total, self._parts(total, logits, ce=ce, consistency=kl, budget=budget)

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, steps={self.steps}, step_size={self.step_size}, noise_mass={self.noise_mass}, "
            f"min_fraction={self.min_fraction}, max_fraction={self.max_fraction}, "
            f"lambda_consistency={self.lambda_consistency}, masked_bn={self.masked_bn!r}"
        )
