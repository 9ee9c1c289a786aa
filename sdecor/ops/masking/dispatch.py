"""Batched saliency masking: per sample, replace the k least (or most) salient features.

``mask_features(x, saliency, k, *, largest=False, fill="uniform", generator=None, backend="auto")``
returns ``(masked, mask)``; see :func:`mask_features` for the full contract.

Backends (all return the identical mask; on CPU "uniform" fill is bitwise identical between
"reference" and "cpp" for the same generator state, while "cuda" draws its own; the other fills
are computed by the same torch expression everywhere):

* ``"reference"``: pure torch (stable sort + scatter), any device, differentiable by autograd.
* ``"cpp"``: the C++ CPU kernels of ``sdecor._C`` (``torch.ops.sdecor.mask_select``: per-sample
  O(F) radix selection, parallel over the batch; ``torch.ops.sdecor.mask_fill_uniform``: one
  fused pass writing the output).
* ``"cuda"``: the CUDA kernels of ``sdecor._C`` (built when torch is a CUDA build and nvcc is
  found): ``torch.ops.sdecor.mask_select`` (radix select over keys staged in shared memory,
  several blocks per sample) and ``torch.ops.sdecor.mask_fill_random`` (one pass over x: per
  channel range, then the output, with the uniform draws made inside the kernel from the
  generator's Philox seed and offset). No host synchronisation: NaN saliency and k tensors on
  the GPU outside [0, F] are checked on the device, as a device-side assertion that surfaces at
  the next synchronising call (or checked kernel launch) and leaves the CUDA context unusable. Masks equal the other
  backends'; "uniform" fill values differ from theirs (other draws, the same distribution).
* ``"auto"``: cuda for CUDA tensors when built, cpp for CPU tensors when built, reference otherwise.

Argument checks: :mod:`sdecor.ops.masking.checks`. The fake (meta) and autograd formulas of the
compiled ops: :mod:`sdecor.ops.masking.library`, registered when the extension loads.
"""

from __future__ import annotations

import math

import torch

from ..._validation import check_choice, check_tensor
from . import extension as _extension
from .checks import FILLS, check_batched, check_counts, check_fill, check_largest, check_layout
from .reference import mask_select_reference, mask_view_for, uniform_fill_reference

__all__ = ["mask_features", "mask_features_reference", "FILLS", "BACKENDS"]

BACKENDS = ("auto", "reference", "cpp", "cuda")


# --------------------------------------------------------------------------- backend


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "reference":
        return "reference"
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
        if not _extension.has_cpu():
            raise ValueError(
                f"backend='cpp' needs the C++ extension sdecor._C ({_extension.load_error()}); {_extension.BUILD_HINT}"
            )
        return "cpp"
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' runs on CUDA tensors, got tensors on {device}")
        if not _extension.has_cuda():
            why = _extension.load_error() or "sdecor._C was built without its CUDA kernels"
            raise ValueError(f"backend='cuda' needs the CUDA kernels of sdecor._C ({why}); {_extension.BUILD_HINT}")
        return "cuda"
    # auto
    if device.type == "cpu" and _extension.has_cpu():
        return "cpp"
    if device.type == "cuda" and _extension.has_cuda():
        return "cuda"
    return "reference"


# --------------------------------------------------------------------------- the op


def mask_features(
    x: torch.Tensor,
    saliency: torch.Tensor,
    k,
    *,
    largest: bool = False,
    fill="uniform",
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, replace the ``k`` least (``largest=True``: most) salient features of ``x``.

    Args:
        x: (B, ...) float16, bfloat16, float32 or float64.
        saliency: floating tensor of x's shape (masks single elements), or, for x of shape
            (B, C, H, W), of shape (B, 1, H, W) or (B, H, W) (masks whole pixels across all
            channels, as Saliency Guided Training does). Must not contain NaN; never differentiated.
        k: the number of saliency positions masked per sample: an int; a float fraction in [0, 1]
            (count = floor(fraction * saliency elements per sample)); or a (B,) integer tensor of
            per-sample counts.
        largest: mask the k largest saliency values instead of the k smallest.
        fill: what replaces masked elements.
            ``"uniform"``: per sample and channel (dim 1 of x; the whole sample for x.ndim < 3), a
            uniform draw between that channel's min and max in that sample, one draw per masked
            element; ``"mean"``: the per-sample, per-channel mean; a number; or a tensor
            broadcastable to x (e.g. a blurred copy for insertion/deletion curves). Fill values
            are constants for autograd.
        generator: a ``torch.Generator`` on x's device type for the "uniform" draws. The mask
            never depends on the random stream. On CUDA ("cuda" backend) each call takes one
            Philox increment (4) of the generator's offset, whatever the number of draws.
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"cuda"`` (see the module doc).

    Returns:
        ``(masked, mask)``: ``masked`` has x's shape and dtype, ``where(mask broadcast to x, fill,
        x)``; ``mask`` is a bool tensor of saliency's shape with exactly k True entries per sample:
        the positions whose (saliency value, flat index) pairs rank lowest (``largest``: highest
        value, ties still to the lower flat index). The gradient of ``masked`` w.r.t. ``x`` is
        ``grad * ~mask`` (broadcast); saliency gets none.

    Raises:
        TypeError: x or saliency not a floating tensor; k, fill or generator of the wrong type;
            a k tensor that is not integer.
        ValueError: saliency of the wrong shape, batch size or device, or containing NaN; k
            negative or above the saliency elements per sample; a fraction outside [0, 1]; a k
            tensor of the wrong length; an unknown fill string; a fill tensor that does not
            broadcast to x; an unknown backend or one that cannot run here.
        RuntimeError (CUDA, "cuda" backend, at the next synchronising call or checked kernel
            launch, possibly this call's fill): a device-side
            assertion for saliency containing NaN or a k tensor on the GPU with a count outside
            [0, F] (these are checked on the device, without a host synchronisation).
    """
    check_batched(x, "x")
    check_tensor(saliency, "saliency")
    if not saliency.is_floating_point():
        raise TypeError(f"saliency must be a floating tensor, got {str(saliency.dtype).replace('torch.', '')}")
    if saliency.device != x.device:
        raise ValueError(f"saliency must be on x's device ({x.device}), got {saliency.device}")
    check_largest(largest)
    check_choice(backend, "backend", BACKENDS)
    F, pixel_mode = check_layout(x, saliency)
    B = x.shape[0]
    chosen = _resolve_backend(backend, x.device)
    # cuda: a k tensor on the GPU is range-checked by the select kernel (no host sync)
    counts, total = check_counts(k, B, x.device, positions=F, device_name="saliency", device_checked=chosen == "cuda")
    fill = check_fill(fill, x)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if isinstance(fill, str) and fill == "uniform" and generator.device.type != x.device.type:
            raise ValueError(f"generator must be on x's device type ({x.device.type}), got {generator.device}")

    sal_flat = saliency.detach().reshape(B, F)
    # cpp raises for NaN itself; the cuda select kernel checks on the device
    if chosen == "reference" and sal_flat.numel() and bool(torch.isnan(sal_flat).any()):
        raise ValueError("saliency must not contain NaN")

    # ---- selection
    if chosen == "reference":
        mask_flat = mask_select_reference(sal_flat, counts, largest)
    else:
        mask_flat = torch.ops.sdecor.mask_select(sal_flat.contiguous(), counts, largest)
    mask = mask_flat.view(saliency.shape)

    # ---- fill
    if isinstance(fill, str) and fill == "uniform":
        if chosen == "cuda":  # the draws are made in the kernel
            masked = torch.ops.sdecor.mask_fill_random(x, mask_flat, generator)
        else:
            masked = _uniform_fill(x, mask_flat, total * (x.shape[1] if pixel_mode else 1), generator, chosen)
    else:
        mask_x = mask_view_for(x.shape, mask_flat)
        if isinstance(fill, str):  # "mean"
            with torch.no_grad():
                xs = _channel_rows(x.detach())
                means = xs.mean(dim=2, dtype=_opmath(x.dtype)).to(x.dtype)
            fill_t = means.view(_channel_bcast_shape(x))
            masked = torch.where(mask_x, fill_t, x)
        elif isinstance(fill, float):
            masked = x.masked_fill(mask_x, fill)
        else:
            masked = torch.where(mask_x, fill.detach().to(dtype=x.dtype, device=x.device), x)
    return masked, mask


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _channel_rows(x: torch.Tensor) -> torch.Tensor:
    B = x.shape[0]  # explicit sizes: a -1 is ambiguous for an empty x
    return x.reshape(B, x.shape[1], math.prod(x.shape[2:])) if x.ndim >= 3 else x.reshape(B, 1, math.prod(x.shape[1:]))


def _channel_bcast_shape(x: torch.Tensor) -> tuple:
    if x.ndim >= 3:
        return (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def _uniform_fill(x, mask_flat, n_draws, generator, chosen):
    u = torch.rand(n_draws, generator=generator, device=x.device, dtype=_opmath(x.dtype))
    if chosen == "reference":
        return uniform_fill_reference(x, mask_flat, u)
    return torch.ops.sdecor.mask_fill_uniform(x, mask_flat, u)


def mask_features_reference(x, saliency, k, *, largest=False, fill="uniform", generator=None):
    """:func:`mask_features` forced onto the pure-torch reference backend."""
    return mask_features(x, saliency, k, largest=largest, fill=fill, generator=generator, backend="reference")
