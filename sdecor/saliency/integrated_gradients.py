"""Integrated Gradients (Sundararajan et al. 2017) with Captum's quadrature rules."""

from __future__ import annotations

import numpy as np
import torch

from .._validation import check_choice, check_int
from ._base import Attribution, check_inputs, row_chunks
from .targets import resolve_target, select_logits

__all__ = ["IntegratedGradients", "IG_METHODS", "quadrature"]

IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """(alphas, weights) of the rule approximating the integral over [0, 1] with ``n_steps`` points.

    Captum's nodes and weights for the Riemann rules and Gauss-Legendre. One difference:
    Captum's ``riemann_trapezoid`` puts its n nodes at linspace(0, 1, n) but weighs them 1/n
    (ends 1/(2n)), so its weights sum to 1 - 1/n; ours use the node spacing 1/(n - 1) (ends
    1/(2(n - 1))) and sum to 1, the trapezoid rule proper. Our trapezoid result is Captum's times
    n / (n - 1).
    """
    check_choice(method, "method", IG_METHODS)
    n = n_steps
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return (0.5 * (nodes + 1)).tolist(), (0.5 * w).tolist()
    if n < 2:
        raise ValueError(f"n_steps must be >= 2 for method={method!r}, got {n}")
    if method == "riemann_trapezoid":
        alphas = [i / (n - 1) for i in range(n)]
        weights = [1.0 / (n - 1)] * n
        weights[0] /= 2
        weights[-1] /= 2
        return alphas, weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return [(i + offset) / n for i in range(n)], [1.0 / n] * n


class IntegratedGradients(Attribution):
    """(x - x') * integral_0^1 grad f_target(x' + a (x - x')) da, by quadrature.

    Args:
        model: an ``nn.Module`` or callable, (B, ...) -> (B, K) logits.
        n_steps: quadrature points (default 50, as in Captum).
        method: one of ``IG_METHODS``: Captum's names ``riemann_left``, ``riemann_right``,
            ``riemann_middle``, ``riemann_trapezoid`` and ``gausslegendre`` (default, as in Captum).
            See :func:`quadrature` for the trapezoid weights.
        internal_batch_size: the most interpolated inputs in one forward/backward pass, counted
            over the whole batch (rows of the expanded n_steps * B batch; Captum's meaning). The
            default, 64, bounds memory; ``None`` runs all rows at once. The result does not depend
            on it up to float rounding.
        multiply_by_inputs: multiply the integral by (x - x') (default, IG proper); False returns
            the integrated gradient alone (Captum's ``multiply_by_inputs=False``).

    ``attribute(inputs, target=None, *, baselines=None, **overrides)``: ``baselines`` x' is None
    (zeros), a number, or a tensor of the inputs' shape, of shape (1, ...) or of one sample's
    shape (broadcast over the batch). ``target=None`` explains the predicted class of ``inputs``
    (one extra forward pass without grad).
    """

    _defaults = {"n_steps": 50, "method": "gausslegendre", "internal_batch_size": 64, "multiply_by_inputs": True}

    @property
    def multiplies_by_inputs(self) -> bool:  # type: ignore[override]
        return self.options["multiply_by_inputs"]

    def _check_options(self, options: dict) -> None:
        check_int(options["n_steps"], "n_steps", low=1)
        check_choice(options["method"], "method", IG_METHODS)
        if options["method"] != "gausslegendre" and options["n_steps"] < 2:
            raise ValueError(f"n_steps must be >= 2 for method={options['method']!r}, got {options['n_steps']}")
        if options["internal_batch_size"] is not None:
            check_int(options["internal_batch_size"], "internal_batch_size", low=1)
        if not isinstance(options["multiply_by_inputs"], bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {options['multiply_by_inputs']!r}")

    @staticmethod
    def _baselines(baselines, x: torch.Tensor) -> torch.Tensor:
        if baselines is None:
            return torch.zeros_like(x)
        if isinstance(baselines, bool):
            raise TypeError("baselines must be None, a number or a tensor, got bool")
        if isinstance(baselines, (int, float)):
            return torch.full_like(x, float(baselines))
        if not isinstance(baselines, torch.Tensor):
            raise TypeError(f"baselines must be None, a number or a tensor, got {type(baselines).__name__}")
        if not baselines.is_floating_point():
            raise TypeError(f"baselines must be a floating tensor, got {str(baselines.dtype).replace('torch.', '')}")
        if baselines.device != x.device:
            raise ValueError(f"baselines must be on the inputs' device ({x.device}), got {baselines.device}")
        if baselines.shape == x.shape[1:]:
            baselines = baselines.unsqueeze(0)
        if baselines.ndim != x.ndim or baselines.shape[0] not in (1, x.shape[0]) or baselines.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"baselines must have the inputs' shape {tuple(x.shape)}, shape {(1,) + tuple(x.shape[1:])} "
                f"or {tuple(x.shape[1:])}, got {tuple(baselines.shape)}"
            )
        return baselines.detach().to(x.dtype).expand_as(x)

    def attribute(self, inputs: torch.Tensor, target=None, *, baselines=None, **overrides) -> torch.Tensor:
        opts = self._call_options(overrides)
        check_inputs(inputs)
        x = inputs.detach()
        base = self._baselines(baselines, x)
        batch = x.shape[0]
        target_t = self._targets(x, target)
        alphas, weights = quadrature(opts["method"], opts["n_steps"])
        n = len(alphas)
        alpha_t = torch.tensor(alphas, dtype=x.dtype, device=x.device)
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        weight_t = torch.tensor(weights, dtype=acc_dtype, device=x.device)
        diff = x - base
        total = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
        view = (-1,) + (1,) * (x.ndim - 1)
        checked = False
        # rows are ordered (step, sample), as in Captum
        for r0, r1 in row_chunks(n * batch, opts["internal_batch_size"]):
            rows = torch.arange(r0, r1, device=x.device)
            step, sample = rows // batch, rows % batch
            xi = (base[sample] + alpha_t[step].view(view) * diff[sample]).requires_grad_(True)
            with torch.enable_grad():
                out = self.model(xi)
                if not checked:
                    resolve_target(target_t[sample], r1 - r0, x.device, out)  # class range check
                    checked = True
                (grad,) = torch.autograd.grad(select_logits(out, target_t[sample]).sum(), xi)
            total.index_add_(0, sample, grad.to(acc_dtype) * weight_t[step].view(view))
        result = total.to(x.dtype)
        return result * diff if opts["multiply_by_inputs"] else result
