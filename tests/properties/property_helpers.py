"""Strategies and checks shared by the property tests (public names of sdecor only).

Tensors are drawn as (shape, dtype, value kind, seed, layout): hypothesis picks the structure
and a seed, torch fills the values (cheap for hypothesis, and every example is reproducible from
its printed draw). Value kinds cover what breaks ops: heavy ties with both signed zeros, values
near the dtype's range (1e30 where it fits), subnormals, constant rows, plain noise.
Layouts: contiguous, transposed (last two dims), sliced (every other element of the last dim),
channels_last (4-D), broadcast (a stride-0 dim 1 expanded).
"""

from __future__ import annotations

import math

import torch
from hypothesis import settings
from hypothesis import strategies as st

import sdecor

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
VALUE_KINDS = ("ties", "specials", "noise", "constant", "huge", "subnormal")
LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last", "broadcast")
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def budget(fraction: float) -> int:
    """``fraction`` of the active profile's ``max_examples`` (at least 1)."""
    return max(1, round(settings.default.max_examples * fraction))


def huge(dtype: torch.dtype) -> float:
    """1e30, or a quarter of the dtype's largest value where 1e30 does not fit (float16)."""
    return min(1e30, torch.finfo(dtype).max / 4)


def specials(dtype: torch.dtype) -> list[float]:
    """Values that break careless code, all finite in ``dtype``: signed zeros, +-huge, subnormals, tiny, eps."""
    fi = torch.finfo(dtype)
    big = huge(dtype)
    sub = fi.smallest_normal / 4
    return [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, big, -big, sub, -sub, fi.smallest_normal, fi.eps, -fi.eps]


def values(shape, dtype: torch.dtype, kind: str, seed: int) -> torch.Tensor:
    """A contiguous tensor of ``shape`` and ``dtype`` filled according to ``kind`` (finite values)."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    if kind == "ties":  # a few integer levels, zeros of both signs
        t = torch.randint(-2, 3, shape, generator=g).to(torch.float64)
        neg = torch.rand(shape, generator=g) < 0.5
        t = torch.where((t == 0) & neg, torch.tensor(-0.0, dtype=torch.float64), t)
    elif kind == "specials":
        pool = torch.tensor(specials(dtype), dtype=torch.float64)
        t = pool[torch.randint(0, len(pool), shape, generator=g)]
    elif kind == "noise":
        t = torch.randn(shape, generator=g, dtype=torch.float64)
    elif kind == "constant":  # one value per sample (every feature of a sample equal)
        t = torch.randn(shape[:1], generator=g, dtype=torch.float64).reshape(shape[:1] + (1,) * (len(shape) - 1))
        t = t.expand(shape).clone() if len(shape) else t
    elif kind == "huge":  # noise scaled to the dtype's range, with ties at the extremes
        t = torch.randn(shape, generator=g, dtype=torch.float64).clamp(-2, 2) * (huge(dtype) / 2)
    elif kind == "subnormal":
        sub = torch.finfo(dtype).smallest_normal
        t = torch.randint(-3, 4, shape, generator=g).to(torch.float64) * (sub / 4)
    else:
        raise ValueError(kind)
    return t.to(dtype)


def with_layout(make, shape, layout: str) -> torch.Tensor:
    """A tensor of ``shape`` with the values ``make(base_shape)`` and the memory layout ``layout``.

    Falls back to contiguous where the layout does not apply (e.g. channels_last for 2-D).
    """
    shape = tuple(shape)
    n = len(shape)
    if layout == "transposed" and n >= 2:
        return make(shape[:-2] + (shape[-1], shape[-2])).transpose(-1, -2)
    if layout == "sliced" and n >= 1:
        return make(shape[:-1] + (2 * shape[-1],))[..., ::2]
    if layout == "channels_last" and n == 4:
        return make(shape).contiguous(memory_format=torch.channels_last)
    if layout == "broadcast" and n >= 2:
        return make((shape[0], 1) + shape[2:]).expand(shape)
    return make(shape)


@st.composite
def tensors(draw, shape, dtype, kinds=VALUE_KINDS, layouts=LAYOUTS) -> torch.Tensor:
    """A tensor of ``shape``/``dtype``: a value kind, a seed and a layout drawn by hypothesis."""
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**31 - 1))
    layout = draw(st.sampled_from(layouts))
    return with_layout(lambda s: values(s, dtype, kind, seed), shape, layout)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (integers), contiguous: equal bits means bitwise equal values, -0.0 != +0.0."""
    t = t.detach().contiguous()
    if t.dtype.is_floating_point:
        return t.view(_INT_VIEW[t.element_size()])
    return t


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def snapshot(*objs):
    """Copies (values, shape, strides) of the tensors among ``objs``, to check they were not modified."""
    return [(o, o.detach().clone(), o.stride()) for o in objs if isinstance(o, torch.Tensor)]


def assert_unmodified(snap) -> None:
    for original, copy, stride in snap:
        assert original.stride() == stride, "an input's strides changed"
        assert bitwise_equal(original, copy), "an input was modified in place"


def cpu_backends(op_backends) -> list[str]:
    """The masking backends that run on CPU here (``"reference"`` always; ``"cpp"`` when sdecor._C is built)."""
    out = []
    for b in op_backends:
        try:
            sdecor.mask_features(torch.zeros(1, 2), torch.zeros(1, 2), 1, fill=0.0, backend=b)
        except ValueError:
            continue
        out.append(b)
    return out


def prod(shape) -> int:
    return math.prod(shape)
