"""SmoothGrad (Smilkov et al. 2017) and its squared / variance forms (Captum's NoiseTunnel types)."""

from __future__ import annotations

import torch

from .._validation import check_choice, check_int, check_positive_float
from ._base import Attribution, check_inputs, row_chunks
from .targets import resolve_target, select_logits

__all__ = ["SmoothGrad", "NT_TYPES"]

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


class SmoothGrad(Attribution):
    """Statistics of the input gradient over noisy copies of each input.

    For each sample x, draw ``n_samples`` copies x + n, n ~ N(0, sigma^2) elementwise with
    ``sigma = noise_level * (max(x) - min(x))`` (the sample's own range, the SmoothGrad paper's
    "noise level"), take the gradient g of the target logit at each copy, and return

    * ``nt_type="smoothgrad"``: mean(g);
    * ``"smoothgrad_sq"``: mean(g ** 2);
    * ``"vargrad"``: the population variance mean(g ** 2) - mean(g) ** 2 (as in Captum).

    These are the statistics of Captum's ``NoiseTunnel(Saliency(model))`` with ``abs=False``;
    Captum's ``stdevs`` is one absolute value, ours is relative to each sample's range.

    Args:
        model: an ``nn.Module`` or callable, (B, ...) -> (B, K) logits.
        nt_type: one of ``NT_TYPES``.
        n_samples: noisy copies per input (default 50).
        noise_level: sigma as a fraction of each sample's value range (default 0.15; the paper
            recommends 10-20%).
        samples_batch_size: the most noisy inputs in one forward/backward pass, counted over the
            whole batch (rows of the expanded B * n_samples batch); bounds memory. ``None``: all
            at once. The result does not depend on it (up to float rounding): the noise is drawn
            in a fixed order, one (B, ...) draw per copy index, whatever the chunking.

    ``attribute(inputs, target=None, *, generator=None, **overrides)``: ``target=None`` explains
    the predicted class of the clean input (one extra forward pass without grad). ``generator``
    (a ``torch.Generator`` on the inputs' device) makes the noise repeatable; without it the
    global RNG is used. The mean and variance are merged chunk by chunk (Chan et al.), so memory
    stays at a few (B, ...) buffers plus one chunk.
    """

    _defaults = {"nt_type": "smoothgrad", "n_samples": 50, "noise_level": 0.15, "samples_batch_size": 64}

    def _check_options(self, options: dict) -> None:
        check_choice(options["nt_type"], "nt_type", NT_TYPES)
        check_int(options["n_samples"], "n_samples", low=1)
        check_positive_float(options["noise_level"], "noise_level", allow_zero=True)
        if options["samples_batch_size"] is not None:
            check_int(options["samples_batch_size"], "samples_batch_size", low=1)

    def attribute(
        self, inputs: torch.Tensor, target=None, *, generator: torch.Generator | None = None, **overrides
    ) -> torch.Tensor:
        opts = self._call_options(overrides)
        check_inputs(inputs)
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            if generator.device.type != inputs.device.type:
                raise ValueError(f"generator must be on the inputs' device ({inputs.device}), got {generator.device}")
        batch = inputs.shape[0]
        x = inputs.detach()
        target_t = self._targets(x, target)
        n = opts["n_samples"]
        rows = opts["samples_batch_size"] or batch * n
        flat = x.reshape(batch, -1)
        sigma = (flat.amax(1) - flat.amin(1)) * opts["noise_level"]
        sigma = sigma.reshape((batch,) + (1,) * (x.ndim - 1))

        # copies per group; a group's gradients are gathered as (k, B, ...) then merged
        per_group = max(1, rows // batch)
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        mean = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
        m2 = torch.zeros_like(mean)
        count = 0
        checked = False
        for g0, g1 in row_chunks(n, per_group):
            k = g1 - g0
            noise = torch.stack(
                [torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) for _ in range(k)]
            )
            noisy = (x.unsqueeze(0) + noise * sigma.unsqueeze(0)).reshape((k * batch,) + x.shape[1:])
            tgt = target_t.repeat(k)
            grads = torch.empty_like(noisy)
            for r0, r1 in row_chunks(k * batch, rows):
                with torch.enable_grad():
                    xi = noisy[r0:r1].detach().requires_grad_(True)
                    out = self.model(xi)
                    if not checked:
                        resolve_target(tgt[r0:r1], r1 - r0, x.device, out)  # class range check
                        checked = True
                    (grads[r0:r1],) = torch.autograd.grad(select_logits(out, tgt[r0:r1]).sum(), xi)
            grads = grads.reshape((k,) + x.shape).to(acc_dtype)
            # Chan et al. merge of (count, mean, m2) with the group's statistics
            g_mean = grads.mean(0)
            g_m2 = ((grads - g_mean) ** 2).sum(0)
            total = count + k
            delta = g_mean - mean
            mean = mean + delta * (k / total)
            m2 = m2 + g_m2 + delta**2 * (count * k / total)
            count = total
        var = m2 / count
        if opts["nt_type"] == "smoothgrad":
            result = mean
        elif opts["nt_type"] == "smoothgrad_sq":
            result = var + mean**2
        else:
            result = var
        return result.to(x.dtype)
