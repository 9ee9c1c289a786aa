"""Rectified Gradient (Kim et al. 2019) and its input-bias-free variant (Brocki & Chung).

Kim, Seo, Jeon, Koo, Choe, Jeon, "Why are Saliency Maps Noisy? Cause of and Solution to Noisy
Saliency Maps" (2019). Their rule, as in the authors' TensorFlow code (``RectifiedGradient`` in
``deepexplain/tensorflow/methods.py``): in backward through each ReLU with output o and upstream
gradient G, compute the relevance R = o * G, its per-sample q-th percentile tau over all of the
layer's elements, and pass G only where R > tau.

The percentile is exactly the authors' ``tf.contrib.distributions.percentile(R, q)`` with its
default 'nearest' interpolation: the d values of a sample sorted in descending order, element
``round((d - 1) * (1 - q / 100))`` taken (float64 arithmetic, ``round`` half to even, clipped to
[0, d - 1]); see :func:`nearest_rank_percentile`. This is not numpy's 'nearest' (the ascending
element ``round((d - 1) q / 100)``): the two pick different elements whenever the index falls on
a half, e.g. at q = 98 for every d = 76 mod 100, at q = 95 for d = 11 mod 40 and at q = 50 for every
even d. The authors take the percentile over axes [1, 2, 3] of 4-D (NHWC) activations and over
axis 1 of 2-D ones; ours takes it over all non-batch elements of any activation, which is the same
for those two cases.

Our addition: a unit must also be active (o > 0) to pass gradient. The authors' code omits this,
which only matters when tau < 0 (then an inactive unit, R = 0 > tau, would pass gradient through a
ReLU whose derivative is 0); with tau >= 0 both rules pass exactly the same units.

The "padding trick" of the original code: for every 2-D convolution with 'SAME' (zero) padding it
zeroes the gradient arriving at the convolution's output on a one-pixel border before propagating
it to the convolution's input, so that the border outputs, whose receptive fields overlap the
zero padding, add no gradient (it removes the bright frame that padding otherwise leaves in
rectified maps). Ours is the same rule for any ``nn.Conv1d/2d/3d`` with ``padding_mode='zeros'``
and nonzero padding: the upstream gradient is zeroed at each output position whose receptive
field reaches into the padding (given the kernel size, stride, dilation and padding). For the
usual 3x3, stride 1, padding 1 convolution this is exactly the original one-pixel border.
``padding_trick=False`` turns it off.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_float
from ._base import Attribution, check_inputs, input_gradient, relu_override

__all__ = ["RectGrad", "NoBiasRectGrad", "nearest_rank_percentile", "padding_border_mask"]


def nearest_rank_percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-th percentile of ``values`` (N, M) as ``tf.contrib.distributions.percentile`` with
    'nearest' interpolation: element ``round((M - 1) * (1 - q / 100))`` of the row sorted in
    descending order (float64 index arithmetic, ``round`` half to even as ``tf.round``, clipped to
    [0, M - 1]). Returns (N, 1), dtype of ``values``."""
    m = values.shape[1]
    frac_at_q_or_above = 1.0 - float(q) / 100.0
    descending = min(max(round(float(m - 1) * frac_at_q_or_above), 0), m - 1)
    # element i of the descending order is element m - 1 - i of the ascending one (k = m - i, 1-based)
    return values.kthvalue(m - descending, dim=1, keepdim=True).values


class _RectReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, q):
        out = a.clamp_min(0)
        ctx.save_for_backward(out)
        ctx.q = q
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        relevance = out * grad
        flat = relevance.reshape(relevance.shape[0], -1)
        # kthvalue in float32 at least (half/bfloat16 support varies by device)
        work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        tau = nearest_rank_percentile(work, ctx.q)
        keep = (work > tau) & (out.reshape(out.shape[0], -1) > 0)
        return (grad * keep.reshape(grad.shape).to(grad.dtype)), None


class _MaskGrad(torch.autograd.Function):
    """Identity in forward; multiplies the gradient by a fixed mask in backward."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x.clone()  # a fresh tensor: later in-place ops on the conv output stay legal

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def _pad_pairs(module: nn.modules.conv._ConvNd, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
    k, d = module.kernel_size, module.dilation
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [(0, 0)] * len(spatial)
        pairs = []  # 'same': PyTorch puts the extra element on the right
        for ki, di in zip(k, d):
            total = di * (ki - 1)
            pairs.append((total // 2, total - total // 2))
        return pairs
    return [(p, p) for p in module.padding]


def padding_border_mask(
    module: nn.modules.conv._ConvNd, input_spatial: tuple[int, ...], device, dtype
) -> torch.Tensor | None:
    """(1, 1, *out_spatial) mask: 1 where the output's receptive field stays inside the input,
    0 where it reaches into the zero padding. None when the convolution has no padding."""
    pads = _pad_pairs(module, input_spatial)
    if all(p == (0, 0) for p in pads):
        return None
    mask = None
    for dim, (length, (left, right), k, s, d) in enumerate(
        zip(input_spatial, pads, module.kernel_size, module.stride, module.dilation)
    ):
        out_len = (length + left + right - d * (k - 1) - 1) // s + 1
        start = torch.arange(out_len, device=device) * s - left
        ok = (start >= 0) & (start + d * (k - 1) <= length - 1)
        shape = [1] * len(input_spatial)
        shape[dim] = out_len
        ok = ok.reshape(shape)
        mask = ok if mask is None else mask & ok
    return mask.to(dtype).reshape((1, 1) + tuple(mask.shape))


def _padding_hook(module, args, output):
    x = args[0]
    spatial = tuple(x.shape[-(x.ndim - 2) :]) if x.ndim >= 3 else ()
    if len(spatial) != len(module.kernel_size):  # unbatched input: leave it alone
        return None
    mask = padding_border_mask(module, spatial, output.device, output.dtype)
    if mask is None:
        return None
    return _MaskGrad.apply(output, mask)


class RectGrad(Attribution):
    """Rectified Gradient: gradient through percentile-thresholded ReLUs, times the input.

    Args:
        model: an ``nn.Module`` holding ``nn.ReLU`` modules.
        q: the percentile (0-100) of the relevance o * G below which a ReLU blocks the gradient
            (default 98, the paper's).
        multiply_by_inputs: return grad * input (the paper's RectGrad, default). False returns the
            rectified gradient alone: the fix of the input bias by Brocki & Chung, also available
            as :class:`NoBiasRectGrad`.
        padding_trick: zero the gradient at convolution outputs whose receptive field overlaps
            the zero padding (see the module docstring; default True, as in the original code).

    Supported layers: the rule is applied at every call of an ``nn.ReLU`` module (subclasses and
    ``inplace=True`` modules included; a module called several times is rectified at each call),
    and the padding trick at ``nn.Conv1d``/``Conv2d``/``Conv3d`` with zero padding. Functional
    ``F.relu``/``torch.relu`` calls cannot be hooked and keep the plain ReLU gradient; other
    activations (LeakyReLU, GELU, ...) and max pooling are left as they are. A model without any
    ``nn.ReLU`` raises ``ValueError``. Dim 0 of each activation is the sample dimension of the
    per-sample percentile. Hooks are registered for the call only and removed (inplace flags
    restored) in ``finally``, also when the call raises.

    ``attribute(inputs, target=None, **overrides)``.
    """

    _needs_module = True
    _defaults = {"q": 98.0, "multiply_by_inputs": True, "padding_trick": True}

    @property
    def multiplies_by_inputs(self) -> bool:  # type: ignore[override]
        return self.options["multiply_by_inputs"]

    def _check_options(self, options: dict) -> None:
        q = check_positive_float(options["q"], "q", allow_zero=True)
        if q > 100:
            raise ValueError(f"q must be a percentile in [0, 100], got {q}")
        for name in ("multiply_by_inputs", "padding_trick"):
            if not isinstance(options[name], bool):
                raise TypeError(f"{name} must be a bool, got {type(options[name]).__name__} {options[name]!r}")

    def attribute(self, inputs: torch.Tensor, target=None, **overrides) -> torch.Tensor:
        opts = self._call_options(overrides)
        check_inputs(inputs)
        q = float(opts["q"])
        extra = []
        if opts["padding_trick"]:
            for m in self.model.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.padding_mode == "zeros":
                    extra.append((m, _padding_hook))
        name = "NoBiasRectGrad" if not opts["multiply_by_inputs"] else "RectGrad"
        with relu_override(self.model, lambda a: _RectReLU.apply(a, q), name, extra_hooks=extra):
            grad = input_gradient(self.model, inputs, target)
        return grad * inputs.detach() if opts["multiply_by_inputs"] else grad


class NoBiasRectGrad(RectGrad):
    """RectGrad without the final multiplication by the input (Brocki & Chung's input-bias fix):
    ``RectGrad(model, q, multiply_by_inputs=False)``."""

    _defaults = {"q": 98.0, "multiply_by_inputs": False, "padding_trick": True}

    def _check_options(self, options: dict) -> None:
        super()._check_options(options)
        if options["multiply_by_inputs"]:
            raise ValueError("NoBiasRectGrad never multiplies by the inputs; use RectGrad(multiply_by_inputs=True)")
