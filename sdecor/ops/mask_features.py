"""Batched saliency masking: per sample, replace the k least (or most) salient features.

``mask_features(x, saliency, k, *, largest=False, fill="uniform", generator=None, backend="auto")``
returns ``(masked, mask)``; see :func:`mask_features` for the full contract.

Backends (all return the identical mask; on CPU "uniform" fill is bitwise identical between
"reference" and "cpp" for the same generator state, on CUDA "cuda" draws its own; the other
fills are computed by the same torch expression everywhere):

* ``"reference"``: pure torch (stable sort + scatter), any device, differentiable by autograd.
* ``"cpp"``: the C++ CPU kernels of ``sdecor._C`` (``torch.ops.sdecor.mask_select``: per-sample
  O(F) radix selection, parallel over the batch; ``torch.ops.sdecor.mask_fill_uniform``: one
  fused pass writing the output).
* ``"cuda"``: the CUDA kernels of ``sdecor._C`` (built when torch is a CUDA build and nvcc is
  found): ``torch.ops.sdecor.mask_select`` (radix select over keys staged in shared memory,
  several blocks per sample) and ``torch.ops.sdecor.mask_fill_random`` (one pass over x: per
  channel range, then the output, with the uniform draws made inside the kernel from the
  generator's Philox seed and offset). No host synchronisation: NaN saliency and out-of-range k
  tensors are checked on the device, as a device-side assertion that surfaces at the next
  synchronising call and leaves the CUDA context unusable. Masks equal the other backends';
  "uniform" fill values differ from theirs (other draws), with the same distribution.
* ``"auto"``: cuda for CUDA tensors when built, cpp for CPU tensors when built, reference otherwise.

The fake (meta) and autograd formulas of the compiled ops are registered from Python here
(``torch.library.register_fake`` / ``register_autograd``) when the extension loads.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch

from .._validation import FLOAT_DTYPES, broadcasts_to, check_choice, check_float_tensor, check_tensor
from . import _extension
from .mask_features_reference import mask_select_reference, mask_view_for, uniform_fill_reference

__all__ = ["mask_features", "FILLS", "BACKENDS"]

FILLS = ("uniform", "mean")
BACKENDS = ("auto", "reference", "cpp", "cuda")


# --------------------------------------------------------------------------- validation


def _mask_layout(x: torch.Tensor, saliency: torch.Tensor) -> tuple[int, bool]:
    """(F, pixel_mode): saliency elements per sample, and whether one entry masks all channels."""
    B = x.shape[0]
    if saliency.ndim == 0 or saliency.shape[0] != B:
        got = saliency.shape[0] if saliency.ndim else "none (0-dim)"
        raise ValueError(f"saliency must have the batch size of x ({B}), got {got} (shape {tuple(saliency.shape)})")
    if saliency.shape == x.shape:
        return (x[0].numel() if B else math.prod(x.shape[1:])), False
    if x.ndim == 4:
        _, _, H, W = x.shape
        if tuple(saliency.shape) in ((B, 1, H, W), (B, H, W)):
            return H * W, True
    expected = f"x's shape {tuple(x.shape)}"
    if x.ndim == 4:
        expected += f", ({B}, 1, {x.shape[2]}, {x.shape[3]}) or ({B}, {x.shape[2]}, {x.shape[3]})"
    raise ValueError(f"saliency must have {expected}, got shape {tuple(saliency.shape)}")


def _counts(k, B: int, F: int, device: torch.device, check: bool = True) -> tuple[torch.Tensor, int | None]:
    """k in any accepted form -> ((B,) int64 counts on ``device``, their sum).

    ``check=False``: a k tensor on a CUDA device is neither validated nor summed here (no host
    synchronisation; the sum is None): the CUDA select kernel checks its range on the device."""
    if isinstance(k, torch.Tensor) and k.ndim == 0:
        if k.dtype == torch.bool:
            raise TypeError("k must be an int, a float fraction or a (B,) integer tensor, got a bool tensor")
        k = k.item()
    if isinstance(k, torch.Tensor):
        if k.dtype == torch.bool or k.is_floating_point() or k.is_complex():
            raise TypeError(f"a k tensor must have an integer dtype, got {str(k.dtype).replace('torch.', '')}")
        if k.ndim != 1 or k.shape[0] != B:
            raise ValueError(f"a k tensor must have shape ({B},) (one count per sample), got {tuple(k.shape)}")
        if k.device != device and k.device.type != "cpu":
            raise ValueError(f"a k tensor must be on the CPU or on saliency's device ({device}), got {k.device}")
        counts = k.to(device=device, dtype=torch.int64)
        if B == 0:
            return counts, 0
        if not check and k.device.type != "cpu":
            return counts, None
        host = k.to(torch.int64) if k.device.type == "cpu" else counts  # a CPU k is checked without a sync
        low, high, total = torch.stack([host.min(), host.max(), host.sum()]).tolist()
        if low < 0:
            raise ValueError(f"k must be >= 0 in every sample, got a count of {low}")
        if high > F:
            raise ValueError(f"k must be <= {F} (the saliency elements per sample), got a count of {high}")
        return counts, int(total)
    if isinstance(k, bool):
        raise TypeError("k must be an int, a float fraction or a (B,) integer tensor, got bool")
    if isinstance(k, numbers.Integral):
        count = int(k)
        if count < 0:
            raise ValueError(f"k must be >= 0, got {count}")
        if count > F:
            raise ValueError(f"k must be <= {F} (the saliency elements per sample), got {count}")
    elif isinstance(k, numbers.Real):
        frac = float(k)
        if not (0.0 <= frac <= 1.0):  # also rejects NaN
            raise ValueError(f"a fractional k must lie in [0, 1], got {frac}")
        count = int(math.floor(frac * F))
    else:
        raise TypeError(f"k must be an int, a float fraction or a (B,) integer tensor, got {type(k).__name__}")
    return torch.full((B,), count, dtype=torch.int64, device=device), count * B


def _check_fill(fill, x: torch.Tensor):
    if isinstance(fill, str):
        check_choice(fill, "fill", FILLS)
        return fill
    if isinstance(fill, torch.Tensor):
        if fill.ndim > 0 and fill.device != x.device:
            raise ValueError(f"a fill tensor must be on x's device ({x.device}), got {fill.device}")
        if fill.dtype == torch.bool or fill.is_complex():
            raise TypeError(f"a fill tensor must be real-valued, got {str(fill.dtype).replace('torch.', '')}")
        if not broadcasts_to(fill.shape, x.shape):
            raise ValueError(
                f"a fill tensor must broadcast to x's shape {tuple(x.shape)}, got shape {tuple(fill.shape)}"
            )
        return fill
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
        raise TypeError(
            f"fill must be 'uniform', 'mean', a number or a tensor broadcastable to x, got {type(fill).__name__}"
        )
    return float(fill)


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
            never depends on the random stream.
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
    """
    check_float_tensor(x, "x", FLOAT_DTYPES)
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension (B, ...), got a 0-dim tensor")
    check_tensor(saliency, "saliency")
    if not saliency.is_floating_point():
        raise TypeError(f"saliency must be a floating tensor, got {str(saliency.dtype).replace('torch.', '')}")
    if saliency.device != x.device:
        raise ValueError(f"saliency must be on x's device ({x.device}), got {saliency.device}")
    if not isinstance(largest, bool):
        raise TypeError(f"largest must be a bool, got {type(largest).__name__}")
    check_choice(backend, "backend", BACKENDS)
    F, pixel_mode = _mask_layout(x, saliency)
    B = x.shape[0]
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if isinstance(fill, str) and fill == "uniform" and generator.device.type != x.device.type:
            raise ValueError(f"generator must be on x's device type ({x.device.type}), got {generator.device}")
    chosen = _resolve_backend(backend, x.device)
    counts, total = _counts(k, B, F, x.device, check=chosen != "cuda")
    fill = _check_fill(fill, x)

    sal_flat = saliency.detach().reshape(B, F)
    # cpp raises for NaN itself; cuda checks on the device (no host synchronisation)
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
        if chosen == "cuda":  # draws made in the kernel
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
    B = x.shape[0]
    return x.reshape(B, x.shape[1], -1) if x.ndim >= 3 else x.reshape(B, 1, -1)


def _channel_bcast_shape(x: torch.Tensor) -> tuple:
    if x.ndim >= 3:
        return (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def _uniform_fill(x, mask_flat, n_draws, generator, chosen):
    u = torch.rand(n_draws, generator=generator, device=x.device, dtype=_opmath(x.dtype))
    if chosen == "reference":
        return uniform_fill_reference(x, mask_flat, u)
    return torch.ops.sdecor.mask_fill_uniform(x, mask_flat, u)


# --------------------------------------------------------------------------- torch.library formulas


@functools.cache
def _register_library_formulas() -> None:
    """Fake and autograd formulas of the compiled ops (run once, when sdecor._C loads)."""

    @torch.library.register_fake("sdecor::mask_select")
    def _mask_select_fake(saliency, k, largest):
        torch._check(saliency.dim() == 2, lambda: "mask_select: saliency must be (B, F)")
        torch._check(k.dim() == 1, lambda: "mask_select: k must be (B,)")
        return saliency.new_empty(saliency.shape, dtype=torch.bool)

    @torch.library.register_fake("sdecor::mask_fill_uniform")
    def _mask_fill_uniform_fake(x, mask, u):
        torch._check(mask.dim() == 2, lambda: "mask_fill_uniform: mask must be (B, F)")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("sdecor::mask_fill_random")
    def _mask_fill_random_fake(x, mask, generator=None):
        torch._check(mask.dim() == 2, lambda: "mask_fill_random: mask must be (B, F)")
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def _setup(ctx, inputs, output):
        x, mask = inputs[0], inputs[1]
        ctx.x_shape = tuple(x.shape)
        ctx.save_for_backward(mask)

    def _backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        grad_x = grad.masked_fill(mask_view_for(ctx.x_shape, mask), 0)
        return grad_x, None, None

    # both ops take (x, mask, u or generator): the same formula
    torch.library.register_autograd("sdecor::mask_fill_uniform", _backward, setup_context=_setup)
    torch.library.register_autograd("sdecor::mask_fill_random", _backward, setup_context=_setup)
