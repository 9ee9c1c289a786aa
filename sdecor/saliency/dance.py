"""DANCE: decoy-enhanced saliency maps (Lu, Guo, Xing, Noble, ICML 2021).

What the paper specifies: decoys x~ of an input x that differ from x only inside a small patch,
stay inside the valid input range, and keep the activations of a chosen layer within eps of the
original ones (||phi(x~) - phi(x)||_inf <= eps); two decoys per patch, one pushing the patch's
values up as far as the constraints allow and one pushing them down; patches slid over the
image; the decoy-enhanced saliency of each feature is the range (max minus min) of the base
method's maps over the decoys.

Our reading (the parameters and the solver below are ours, not the paper's numbers):

* Patches are ``patch_size`` x ``patch_size`` squares over the last two dimensions (H, W),
  spanning all channels, at the positions ``0, stride, 2 stride, ...`` plus a last position
  flush with the border so that every pixel is covered. ``stride`` defaults to ``patch_size``.
* Objective of the "up" decoy: maximise the sum of delta = x~ - x over the patch; the "down"
  decoy minimises it. The valid range is ``[x_min, x_max]`` (numbers or tensors broadcastable to
  the inputs; default: the min and max of the whole input batch).
* eps: ``eps_mode="relative"`` (default) reads eps as a fraction of the largest absolute
  activation of the layer for that sample (tolerance = eps * max|phi(x)|, per sample);
  ``"absolute"`` uses eps in the layer's units.
* Solver, batched on the inputs' device: all (sample, patch, direction) problems are stacked in
  the batch dimension (``decoy_batch_size`` at a time, which bounds memory) and solved together
  by a penalty method: Adam on u = delta / (input range), learning rate ``lr`` decaying linearly
  to lr/10 over ``n_steps`` steps, minimising ``-/+ mean(u over the patch) + mu * sum(relu(|phi(x +
  delta) - phi(x)| - tol) / tol) ** 2``, with mu starting at ``penalty`` and multiplied by
  ``penalty_growth`` at 5 evenly spaced stages. After every step delta is projected onto the
  box (x + delta inside the valid range) and onto the patch (zero outside it). Only the layer's
  activations are needed, so each forward pass stops at ``layer``. The defaults (50 steps,
  lr 0.02, penalty 1, growth 2) were picked on small random CNNs; they are not the paper's.
* Feasibility: the solver remembers, per decoy, the best iterate that satisfied the eps
  constraint (delta = 0, the input itself, always does). The last iterate, if it violates the
  constraint, is shrunk, delta -> s * delta, with s found by ``n_bisect`` bisection steps on
  [0, 1] keeping the largest s checked to satisfy it; the better of the two is the decoy. The
  range and patch constraints survive the scaling (the box contains delta = 0 and is convex),
  so every returned decoy satisfies all three constraints, and the "up" decoy never lowers the
  patch's sum nor the "down" decoy raises it. (The eps check keeps a 1e-3 relative margin for
  the float rounding of recomputing the activations in another batch.)
* Population: the 2 decoys of every patch plus the original input; the map is the elementwise
  max minus min over that population of ``base_method``'s maps, all for the same target (the
  predicted class of the original input when ``target=None``).

The model is used as given (no switch to eval mode): in train mode BatchNorm statistics and
Dropout masks would change with every forward pass, which makes the eps constraint meaningless,
so call ``model.eval()`` first.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_choice, check_int, check_positive_float
from ..models.introspection import get_layer
from ._base import Attribution, check_inputs, row_chunks
from .registry import BASE_METHODS

__all__ = ["DANCE", "Decoys", "EPS_MODES"]

EPS_MODES = ("relative", "absolute")


class _Stop(Exception):
    def __init__(self, value):
        super().__init__()
        self.value = value


@dataclass
class Decoys:
    """Result of :meth:`DANCE.decoys`.

    Attributes:
        decoys: (B, D, *sample_shape), D = 2 * number of patches; decoy ``2 i`` pushes patch ``i``
            up, ``2 i + 1`` down.
        patch_masks: (D, H, W) bool, the patch of each decoy.
        tolerance: (B,) the eps bound on ||phi(decoy) - phi(x)||_inf in the layer's units.
        x_min, x_max: the valid range, broadcast to the inputs' shape.
    """

    decoys: torch.Tensor
    patch_masks: torch.Tensor
    tolerance: torch.Tensor
    x_min: torch.Tensor
    x_max: torch.Tensor


class DANCE(Attribution):
    """Decoy-enhanced saliency: the range of a base method's maps over constrained decoys.

    Args:
        model: an ``nn.Module`` mapping (B, C, H, W) to (B, K) logits; use it in eval mode.
        base_method: the attribution method applied to every decoy: an instance (anything with
            ``attribute(inputs, target)``), a class of :mod:`sdecor.saliency` (built on ``model``),
            or a name of ``sdecor.saliency.METHODS`` (default ``"gradient"``).
        layer: the module (or its dotted name in ``model``) whose output activations must stay
            within eps; it must return a tensor.
        patch_size: side of the square patches (default 3).
        stride: patch step (default: ``patch_size``, non-overlapping).
        eps: the activation tolerance (default 0.1), read according to ``eps_mode``.
        eps_mode: ``"relative"`` (eps * max|phi(x)| per sample, default) or ``"absolute"``.
        x_min, x_max: valid input range; None: the batch's min / max.
        n_steps, lr, penalty, penalty_growth, n_bisect: the solver (module docstring).
        decoy_batch_size: decoys solved (and explained by the base method) at a time.

    ``attribute(inputs, target=None, **overrides)`` returns the (B, C, H, W) map;
    :meth:`decoys` returns the decoys themselves (all of them at once: for inspection and tests).
    """

    _needs_module = True
    _defaults = {
        "patch_size": 3,
        "stride": None,
        "eps": 0.1,
        "eps_mode": "relative",
        "x_min": None,
        "x_max": None,
        "n_steps": 50,
        "lr": 0.02,
        "penalty": 1.0,
        "penalty_growth": 2.0,
        "n_bisect": 12,
        "decoy_batch_size": 64,
    }

    def __init__(self, model: nn.Module, base_method="gradient", layer=None, **options) -> None:
        super().__init__(model, **options)
        if layer is None:
            raise ValueError(
                "DANCE needs layer: the module (or its dotted name) whose activations the decoys must keep"
            )
        self.layer = get_layer(model, layer)
        self.base_method = self._make_base(base_method)

    def _make_base(self, base_method):
        if isinstance(base_method, str):
            if base_method not in BASE_METHODS:
                names = ", ".join(sorted(BASE_METHODS))
                raise ValueError(f"base_method must be one of {names}, got {base_method!r}")
            return BASE_METHODS[base_method](self.model)
        if isinstance(base_method, type) and issubclass(base_method, Attribution):
            if base_method is DANCE:
                raise ValueError("base_method cannot be DANCE itself")
            return base_method(self.model)
        if callable(getattr(base_method, "attribute", None)):
            return base_method
        raise TypeError(
            "base_method must be a method name, an Attribution class or an object with .attribute, got "
            f"{type(base_method).__name__}"
        )

    def _check_options(self, o: dict) -> None:
        check_int(o["patch_size"], "patch_size", low=1)
        if o["stride"] is not None:
            check_int(o["stride"], "stride", low=1)
        check_positive_float(o["eps"], "eps", allow_zero=True)
        check_choice(o["eps_mode"], "eps_mode", EPS_MODES)
        for name in ("x_min", "x_max"):
            v = o[name]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, torch.Tensor))):
                raise TypeError(f"{name} must be None, a number or a tensor, got {type(v).__name__}")
        check_int(o["n_steps"], "n_steps", low=0)
        check_positive_float(o["lr"], "lr")
        check_positive_float(o["penalty"], "penalty")
        check_positive_float(o["penalty_growth"], "penalty_growth")
        check_int(o["n_bisect"], "n_bisect", low=0)
        check_int(o["decoy_batch_size"], "decoy_batch_size", low=1)

    # -- helpers -------------------------------------------------------------------------------
    def _activations(self, x: torch.Tensor, grad: bool) -> torch.Tensor:
        """Output of ``self.layer`` on ``x``; the forward pass stops right after the layer."""

        def hook(module, args, output):
            raise _Stop(output)

        handle = self.layer.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(grad):
                self.model(x)
        except _Stop as stop:
            value = stop.value
        else:
            raise ValueError("layer was not called in the model's forward pass")
        finally:
            handle.remove()
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"layer must return a tensor, got {type(value).__name__}")
        return value

    @staticmethod
    def _positions(size: int, patch: int, stride: int, dim: str) -> list[int]:
        if patch > size:
            raise ValueError(f"patch_size {patch} is larger than the inputs' {dim} ({size})")
        starts = list(range(0, size - patch + 1, stride))
        if starts[-1] != size - patch:
            starts.append(size - patch)
        return starts

    def _range(self, value, x: torch.Tensor, name: str, default: torch.Tensor) -> torch.Tensor:
        if value is None:
            return default.expand_as(x)
        if isinstance(value, (int, float)):
            return torch.full_like(x, float(value))
        if value.device != x.device:
            raise ValueError(f"{name} must be on the inputs' device ({x.device}), got {value.device}")
        try:
            return torch.broadcast_to(value.to(x.dtype), x.shape)
        except RuntimeError as exc:
            raise ValueError(
                f"{name} of shape {tuple(value.shape)} does not broadcast to the inputs' shape {tuple(x.shape)}"
            ) from exc

    def _setup(self, inputs: torch.Tensor, opts: dict):
        check_inputs(inputs)
        if self.model.training:
            warnings.warn(
                "DANCE: the model is in train mode; BatchNorm batch statistics and Dropout make the "
                "activation constraint depend on the batch and on chance. Call model.eval() first.",
                stacklevel=3,
            )
        if inputs.ndim != 4:
            raise ValueError(f"DANCE needs image inputs (B, C, H, W), got shape {tuple(inputs.shape)}")
        x = inputs.detach()
        x_min = self._range(opts["x_min"], x, "x_min", x.amin())
        x_max = self._range(opts["x_max"], x, "x_max", x.amax())
        if bool(((x < x_min) | (x > x_max)).any()):
            raise ValueError("inputs must lie inside [x_min, x_max]")
        p = opts["patch_size"]
        stride = opts["stride"] or p
        H, W = x.shape[-2:]
        hs = self._positions(H, p, stride, "height")
        ws = self._positions(W, p, stride, "width")
        ii = torch.arange(H, device=x.device)
        jj = torch.arange(W, device=x.device)
        h0 = torch.tensor([h for h in hs for _ in ws], device=x.device)
        w0 = torch.tensor([w for _ in hs for w in ws], device=x.device)
        masks = ((ii[None, :, None] >= h0[:, None, None]) & (ii[None, :, None] < h0[:, None, None] + p)) & (
            (jj[None, None, :] >= w0[:, None, None]) & (jj[None, None, :] < w0[:, None, None] + p)
        )  # (P, H, W)
        with torch.no_grad():
            phi0 = self._activations(x, grad=False)
        if phi0.shape[0] != x.shape[0]:
            raise ValueError(f"layer output must have the batch along dim 0, got shape {tuple(phi0.shape)}")
        if opts["eps_mode"] == "relative":
            tol = opts["eps"] * phi0.detach().abs().reshape(x.shape[0], -1).amax(1)
        else:
            tol = torch.full((x.shape[0],), float(opts["eps"]), dtype=phi0.dtype, device=x.device)
        return x, x_min, x_max, masks, phi0.detach(), tol

    def _solve(self, x, x_min, x_max, masks, phi0, tol, rows: torch.Tensor, opts: dict) -> torch.Tensor:
        """Decoys for the given rows (flat indices over (sample, patch, direction))."""
        n_dir = 2
        n_patch = masks.shape[0]
        sample = rows // (n_patch * n_dir)
        patch = (rows // n_dir) % n_patch
        sign = 1.0 - 2.0 * (rows % n_dir).to(x.dtype)  # +1 up, -1 down
        view = (-1,) + (1,) * (x.ndim - 1)
        xr = x[sample]
        mask = masks[patch].unsqueeze(1).to(x.dtype)  # (N, 1, H, W)
        lo = (x_min[sample] - xr) * mask
        hi = (x_max[sample] - xr) * mask
        span = (x_max[sample] - x_min[sample]).reshape(len(rows), -1).amax(1).clamp_min(torch.finfo(x.dtype).tiny)
        phi_ref = phi0[sample]
        tol_r = tol[sample]
        tol_norm = tol_r.clamp_min(torch.finfo(tol_r.dtype).tiny).reshape((-1,) + (1,) * (phi_ref.ndim - 1))
        count = float(opts["patch_size"] ** 2 * x.shape[1])  # elements of a patch (no device sync)

        steps = opts["n_steps"]
        limit = tol_r * (1 - 1e-3)  # eps check with a margin for the rounding of recomputation
        n = len(rows)

        def violation(phi: torch.Tensor) -> torch.Tensor:
            return (phi - phi_ref).abs().reshape(n, -1).amax(1)

        def gain(u_: torch.Tensor) -> torch.Tensor:  # signed mean change over the patch
            return sign * (u_ * mask).reshape(n, -1).sum(1) / count

        u = torch.zeros_like(xr)
        best_u = torch.zeros_like(xr)  # delta = 0 is feasible with gain 0
        best_gain = torch.zeros(n, dtype=x.dtype, device=x.device)
        lo_u, hi_u = lo / span.view(view), hi / span.view(view)
        if steps > 0:
            # Adam written out (torch.optim's first use imports torch._dynamo: seconds on CPU)
            beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
            m1 = torch.zeros_like(u)
            m2 = torch.zeros_like(u)
            stage = max(1, math.ceil(steps / 5))
            mu = float(opts["penalty"])
            for t in range(steps):
                if t > 0 and t % stage == 0:
                    mu *= float(opts["penalty_growth"])
                with torch.enable_grad():
                    u_var = u.detach().requires_grad_(True)
                    phi = self._activations(xr + u_var * span.view(view), grad=True)
                    viol = ((phi - phi_ref).abs() - tol_norm).clamp_min(0) / tol_norm
                    g_now = gain(u_var)
                    loss = -g_now.sum() + mu * (viol**2).reshape(n, -1).sum(1).sum()
                    (g,) = torch.autograd.grad(loss, u_var)
                with torch.no_grad():
                    # keep the best feasible iterate seen so far
                    better = (violation(phi.detach()) <= limit) & (g_now.detach() > best_gain)
                    best_u = torch.where(better.view(view), u, best_u)
                    best_gain = torch.where(better, g_now.detach(), best_gain)
                    # Adam step, learning rate decaying linearly from lr to lr / 10
                    lr = float(opts["lr"]) * (1.0 - 0.9 * t / steps)
                    m1.mul_(beta1).add_(g, alpha=1 - beta1)
                    m2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    step = m1 / (1 - beta1 ** (t + 1))
                    denom = (m2 / (1 - beta2 ** (t + 1))).sqrt_().add_(adam_eps)
                    u = u - lr * step / denom
                    # projection onto the box and the patch
                    u = torch.maximum(torch.minimum(u, hi_u), lo_u) * mask

        with torch.no_grad():
            # the last iterate, shrunk by bisection until the eps constraint holds
            last = u

            def feasible(scale: torch.Tensor) -> torch.Tensor:
                phi_s = self._activations(xr + last * (scale * span).view(view), grad=False)
                return violation(phi_s) <= limit

            ones = torch.ones(n, dtype=x.dtype, device=x.device)
            ok = feasible(ones)
            low = torch.where(ok, ones, torch.zeros_like(ones))
            high = ones.clone()
            for _ in range(opts["n_bisect"]):
                mid = 0.5 * (low + high)
                f = feasible(mid) & ~ok
                low = torch.where(f, mid, low)
                high = torch.where(~f & ~ok, mid, high)
            shrunk = last * low.view(view)
            take = gain(shrunk) > best_gain
            best_u = torch.where(take.view(view), shrunk, best_u)
            decoy = xr + (best_u * span.view(view)).clamp(lo, hi) * mask
            decoy = torch.minimum(torch.maximum(decoy, x_min[sample]), x_max[sample])
            decoy = torch.where(mask.bool(), decoy, xr)
        return decoy

    # -- public API ----------------------------------------------------------------------------
    def decoys(self, inputs: torch.Tensor, **overrides) -> Decoys:
        """All decoys of ``inputs`` at once: (B, 2 P, C, H, W) (memory grows with P; see :class:`Decoys`)."""
        opts = self._call_options(overrides)
        x, x_min, x_max, masks, phi0, tol = self._setup(inputs, opts)
        total = x.shape[0] * masks.shape[0] * 2
        out = torch.empty((total,) + x.shape[1:], dtype=x.dtype, device=x.device)
        for r0, r1 in row_chunks(total, opts["decoy_batch_size"]):
            rows = torch.arange(r0, r1, device=x.device)
            out[r0:r1] = self._solve(x, x_min, x_max, masks, phi0, tol, rows, opts)
        return Decoys(
            decoys=out.reshape((x.shape[0], 2 * masks.shape[0]) + x.shape[1:]),
            patch_masks=masks.repeat_interleave(2, dim=0),
            tolerance=tol,
            x_min=x_min,
            x_max=x_max,
        )

    def attribute(self, inputs: torch.Tensor, target=None, **overrides) -> torch.Tensor:
        opts = self._call_options(overrides)
        x, x_min, x_max, masks, phi0, tol = self._setup(inputs, opts)
        batch = x.shape[0]
        target_t = self._targets(x, target)
        base = self.base_method.attribute(x, target_t)
        high = base.detach().clone()
        low = base.detach().clone()
        total = batch * masks.shape[0] * 2
        for r0, r1 in row_chunks(total, opts["decoy_batch_size"]):
            rows = torch.arange(r0, r1, device=x.device)
            decoys = self._solve(x, x_min, x_max, masks, phi0, tol, rows, opts)
            sample = rows // (masks.shape[0] * 2)
            maps = self.base_method.attribute(decoys, target_t[sample]).detach().to(high.dtype)
            index = sample.view((-1,) + (1,) * (maps.ndim - 1)).expand_as(maps)
            high.scatter_reduce_(0, index, maps, "amax", include_self=True)
            low.scatter_reduce_(0, index, maps, "amin", include_self=True)
        return high - low
