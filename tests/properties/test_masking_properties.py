"""Property-based tests of the masking ops: ``sdecor.mask_features``, ``sdecor.ops.mask_ranks``,
``sdecor.ops.mask_fill_ranked``.

For random shapes (empty batches, empty samples, 1-element rows), dtypes, memory layouts, every
form of ``k``, every fill, heavy ties and signed zeros, huge values and subnormals:

* every CPU backend returns the same result, bit for bit, and the mask is the definition's
  (the k lowest / highest (value, flat index) pairs per sample, -0.0 == +0.0);
* the output keeps x where the mask is False and holds the fill where it is True;
* the gradient reaching x is the keep-mask;
* the inputs are never modified;
* invalid arguments raise ``ValueError`` / ``TypeError`` whose message names the argument.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st
from property_helpers import (
    FLOAT_DTYPES,
    assert_unmodified,
    bits,
    bitwise_equal,
    budget,
    cpu_backends,
    snapshot,
    specials,
    tensors,
)

import sdecor
from sdecor.ops import mask_fill_ranked, mask_ranks

BACKENDS = cpu_backends(("reference", "cpp"))


# ----------------------------------------------------------------------------- strategies


@st.composite
def masking_layouts(draw, max_batch=4):
    """(x_shape, saliency_shape, pixel): element layout (any rank >= 1) or pixel layout (4-D x)."""
    b = draw(st.integers(0, max_batch))
    if draw(st.booleans()):
        c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
        x_shape = (b, c, h, w)
        s_shape = draw(st.sampled_from([(b, 1, h, w), (b, h, w)]))
        return x_shape, s_shape, True
    rest = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    return (b, *rest), (b, *rest), False


@st.composite
def counts(draw, b: int, f: int):
    """k in every accepted form: int, fraction, 0-dim tensor, (B,) tensor of an integer dtype."""
    form = draw(st.sampled_from(["int", "fraction", "zero-dim", "tensor"]))
    if form == "int":
        return draw(st.integers(0, f))
    if form == "fraction":
        return draw(st.sampled_from([0.0, 1.0, 0.5]) | st.floats(0.0, 1.0))
    if form == "zero-dim":
        return torch.tensor(draw(st.integers(0, f)))
    dtype = draw(st.sampled_from([torch.int64, torch.int32] + ([torch.uint8] if f <= 255 else [])))
    return torch.tensor(draw(st.lists(st.integers(0, f), min_size=b, max_size=b)), dtype=torch.int64).to(dtype)


@st.composite
def fills(draw, x_shape, dtype, names=("uniform", "mean")):
    """Every fill: "uniform", "mean" (``names``), a number (signed zero, huge), or a tensor broadcastable to x."""
    form = draw(st.sampled_from([*names, "number", "tensor"]))
    if form in ("uniform", "mean"):
        return form
    if form == "number":
        return draw(st.sampled_from(specials(dtype)))
    n = len(x_shape)
    shape = draw(
        st.sampled_from(
            [x_shape, (), (1,) * n, x_shape[:1] + (1,) * (n - 1), (1,) + tuple(x_shape[1:]), tuple(x_shape[1:])]
        )
    )
    fill_dtype = draw(st.sampled_from([dtype, torch.float64]))
    return draw(tensors(shape, fill_dtype))


@st.composite
def masking_cases(draw):
    x_shape, s_shape, pixel = draw(masking_layouts())
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    s_dtype = draw(st.sampled_from([dtype, *FLOAT_DTYPES]))
    x = draw(tensors(x_shape, dtype))
    s = draw(tensors(s_shape, s_dtype))
    f = math.prod(s_shape[1:])
    return dict(
        x=x,
        s=s,
        k=draw(counts(x_shape[0], f)),
        fill=draw(fills(x_shape, dtype)),
        largest=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
        pixel=pixel,
    )


# ----------------------------------------------------------------------------- the definition


def definition_mask(s: torch.Tensor, k_per_sample: list[int], largest: bool) -> torch.Tensor:
    """Rank each sample's (value, flat index) pairs, mask the first k (Python floats: -0.0 == 0.0)."""
    b = s.shape[0]
    flat = s.reshape(b, math.prod(s.shape[1:])).double()
    out = torch.zeros(flat.shape, dtype=torch.bool)
    for i in range(b):
        vals = flat[i].tolist()
        order = sorted(range(len(vals)), key=lambda j: (-vals[j] if largest else vals[j], j))
        out[i, order[: k_per_sample[i]]] = True
    return out.view(s.shape)


def per_sample_counts(k, b: int, f: int) -> list[int]:
    if isinstance(k, torch.Tensor) and k.ndim == 1:
        return [int(v) for v in k.tolist()]
    if isinstance(k, torch.Tensor):
        k = k.item()
    if isinstance(k, float):
        return [math.floor(k * f)] * b
    return [int(k)] * b


def mask_on_x(mask: torch.Tensor, x: torch.Tensor, pixel: bool) -> torch.Tensor:
    """The mask broadcast to x's shape (a pixel mask covers every channel)."""
    if pixel:
        return mask.reshape(x.shape[0], 1, *x.shape[2:]).expand(x.shape)
    return mask


def channel_rows(x: torch.Tensor) -> torch.Tensor:
    """x as (B, C, S) float64: channels are dim 1 for x.ndim >= 3, the whole sample otherwise."""
    b = x.shape[0]
    return (x.reshape(b, x.shape[1], -1) if x.ndim >= 3 else x.reshape(b, 1, -1)).double()


def channel_of_each_element(x: torch.Tensor) -> torch.Tensor:
    rows = channel_rows(x)
    b, c, s = rows.shape
    return torch.arange(b * c).view(b, c, 1).expand(b, c, s).reshape(x.shape)


# ----------------------------------------------------------------------------- mask_features


@settings(max_examples=budget(2.5))
@given(case=masking_cases())
def test_mask_features_backends_agree_with_the_definition(case):
    x, s, k, fill, largest = case["x"], case["s"], case["k"], case["fill"], case["largest"]
    b, f = x.shape[0], (s[0].numel() if s.shape[0] else math.prod(s.shape[1:]))
    note(f"x {tuple(x.shape)} {x.dtype} strides {x.stride()}; saliency {tuple(s.shape)} {s.dtype}; k {k!r}")
    note(f"fill {fill if not isinstance(fill, torch.Tensor) else (tuple(fill.shape), fill.dtype)}; largest {largest}")
    results = []
    for backend in BACKENDS:
        snap = snapshot(x, s, k, fill)
        gen = torch.Generator().manual_seed(case["seed"])
        masked, mask = sdecor.mask_features(x, s, k, largest=largest, fill=fill, generator=gen, backend=backend)
        assert_unmodified(snap)
        assert masked.shape == x.shape and masked.dtype == x.dtype
        assert mask.shape == s.shape and mask.dtype == torch.bool
        results.append((backend, masked, mask))
    _, masked, mask = results[0]
    for backend, other_masked, other_mask in results[1:]:
        assert torch.equal(other_mask, mask), f"{backend} selects other positions than the reference"
        assert bitwise_equal(other_masked, masked), f"{backend} fills other values than the reference"

    k_list = per_sample_counts(k, b, f)
    assert torch.equal(mask, definition_mask(s, k_list, largest))

    on_x = mask_on_x(mask, x, case["pixel"])
    keep = ~on_x
    assert torch.equal(bits(masked)[keep], bits(x)[keep]), "unmasked elements changed"
    got = masked[on_x].double()
    if got.numel() == 0:
        return
    if isinstance(fill, float):
        assert torch.equal(bits(masked[on_x]), bits(torch.tensor(fill, dtype=x.dtype).expand(got.shape)))
    elif isinstance(fill, torch.Tensor):
        expected = fill.to(x.dtype).expand(x.shape)[on_x]
        assert torch.equal(bits(masked[on_x]), bits(expected))
    else:  # per-channel fills: compare with the channel's statistics in float64
        rows = channel_rows(x)
        chan = channel_of_each_element(x)[on_x]
        lo, hi = rows.amin(2).reshape(-1)[chan], rows.amax(2).reshape(-1)[chan]
        opmath_eps = torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).eps
        size = torch.maximum(lo.abs(), hi.abs())
        if fill == "uniform":
            tol = 4 * opmath_eps * size
            assert bool(((got >= lo - tol) & (got <= hi + tol)).all()), "a uniform fill outside its channel's range"
        else:
            mean = rows.mean(2).reshape(-1)[chan]
            tol = (torch.finfo(x.dtype).eps + rows.shape[2] * opmath_eps) * size
            assert bool(((got - mean).abs() <= tol).all()), "a mean fill away from its channel's mean"


@settings(max_examples=budget(0.75))
@given(case=masking_cases())
def test_mask_features_gradient_is_the_keep_mask(case):
    x, s, k, fill = case["x"], case["s"], case["k"], case["fill"]
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
        if isinstance(fill, torch.Tensor):
            fill = fill.float()
    for backend in BACKENDS:
        xg = x.detach().clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(case["seed"])
        masked, mask = sdecor.mask_features(
            xg, s, k, largest=case["largest"], fill=fill, generator=gen, backend=backend
        )
        masked.backward(torch.ones_like(masked))
        keep = (~mask_on_x(mask, x, case["pixel"])).to(x.dtype)
        assert torch.equal(xg.grad, keep), backend


# ----------------------------------------------------------------------------- mask_features: bad input


def _valid(x_shape=(2, 3, 4, 4), s_shape=(2, 4, 4)):
    return torch.randn(x_shape), torch.rand(s_shape)


def _with_nan(t):
    """A copy of ``t`` (same layout) with a NaN at its middle element."""
    t = t.clone()
    t[torch.unravel_index(torch.tensor(t.numel() // 2), t.shape)] = float("nan")
    return t


# name -> (build(x, s, b, f) -> (args, kwargs), the argument the message must name)
MASK_FEATURES_BAD = {
    "x integer": (lambda x, s, b, f: ((x.to(torch.int32), s, 1), {}), "x"),
    "x 0-dim": (lambda x, s, b, f: ((torch.tensor(1.0), s, 1), {}), "x"),
    "x not a tensor": (lambda x, s, b, f: ((x.tolist(), s, 1), {}), "x"),
    "saliency NaN": (lambda x, s, b, f: ((x, _with_nan(s), 1), {}), "saliency"),
    "saliency integer": (lambda x, s, b, f: ((x, s.to(torch.int64), 1), {}), "saliency"),
    "saliency list": (lambda x, s, b, f: ((x, s.tolist(), 1), {}), "saliency"),
    "saliency shape": (lambda x, s, b, f: ((x, torch.rand(b, f + 1), 1), {}), "saliency"),
    "saliency batch": (lambda x, s, b, f: ((x, torch.rand(b + 1, *s.shape[1:]), 1), {}), "saliency"),
    "saliency 0-dim": (lambda x, s, b, f: ((x, torch.tensor(0.5), 1), {}), "saliency"),
    "k negative": (lambda x, s, b, f: ((x, s, -1), {}), "k"),
    "k above F": (lambda x, s, b, f: ((x, s, f + 1), {}), "k"),
    "k fraction above 1": (lambda x, s, b, f: ((x, s, 1.0000001), {}), "k"),
    "k fraction negative": (lambda x, s, b, f: ((x, s, -0.25), {}), "k"),
    "k NaN": (lambda x, s, b, f: ((x, s, float("nan")), {}), "k"),
    "k inf": (lambda x, s, b, f: ((x, s, float("inf")), {}), "k"),
    "k bool": (lambda x, s, b, f: ((x, s, True), {}), "k"),
    "k string": (lambda x, s, b, f: ((x, s, "3"), {}), "k"),
    "k float tensor": (lambda x, s, b, f: ((x, s, torch.ones(b)), {}), "k"),
    "k bool tensor": (lambda x, s, b, f: ((x, s, torch.ones(b, dtype=torch.bool)), {}), "k"),
    "k tensor length": (lambda x, s, b, f: ((x, s, torch.ones(b + 1, dtype=torch.int64)), {}), "k"),
    "k tensor 2-D": (lambda x, s, b, f: ((x, s, torch.ones(b, 1, dtype=torch.int64)), {}), "k"),
    "k tensor negative": (lambda x, s, b, f: ((x, s, torch.full((b,), -1)), {}), "k"),
    "k tensor above F": (lambda x, s, b, f: ((x, s, torch.full((b,), f + 1)), {}), "k"),
    "fill unknown name": (lambda x, s, b, f: ((x, s, 1), {"fill": "zeros"}), "fill"),
    "fill list": (lambda x, s, b, f: ((x, s, 1), {"fill": [0.0]}), "fill"),
    "fill bool": (lambda x, s, b, f: ((x, s, 1), {"fill": True}), "fill"),
    "fill shape": (lambda x, s, b, f: ((x, s, 1), {"fill": torch.zeros(*x.shape, 2)}), "fill"),
    "fill bool tensor": (lambda x, s, b, f: ((x, s, 1), {"fill": torch.zeros(x.shape, dtype=torch.bool)}), "fill"),
    "largest int": (lambda x, s, b, f: ((x, s, 1), {"largest": 1}), "largest"),
    "backend unknown": (lambda x, s, b, f: ((x, s, 1), {"backend": "triton"}), "backend"),
    "backend cuda on CPU": (lambda x, s, b, f: ((x, s, 1), {"backend": "cuda"}), "backend"),
    "generator type": (lambda x, s, b, f: ((x, s, 1), {"generator": 3}), "generator"),
}


@st.composite
def bad_masking_calls(draw):
    x_shape, s_shape, _ = draw(masking_layouts(max_batch=3).filter(lambda c: c[0][0] >= 1 and math.prod(c[1]) >= 1))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    x, s = draw(tensors(x_shape, dtype)), draw(tensors(s_shape, dtype))
    name = draw(st.sampled_from(sorted(MASK_FEATURES_BAD)))
    return name, x, s


@settings(max_examples=budget(1.5))
@given(call=bad_masking_calls(), backend=st.sampled_from(BACKENDS))
def test_mask_features_rejects_bad_input_naming_the_argument(call, backend):
    name, x, s = call
    build, argument = MASK_FEATURES_BAD[name]
    args, kwargs = build(x, s, x.shape[0], s[0].numel())
    kwargs = {"backend": backend, **kwargs}
    snap = snapshot(x, s)
    with pytest.raises((ValueError, TypeError)) as info:
        sdecor.mask_features(*args, **kwargs)
    assert argument in str(info.value), f"{name}: the message does not name {argument!r}: {info.value}"
    assert_unmodified(snap)


# ----------------------------------------------------------------------------- mask_ranks


@st.composite
def saliency_cases(draw):
    b = draw(st.integers(0, 4))
    rest = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    return draw(tensors((b, *rest), dtype)), draw(st.booleans())


@settings(max_examples=budget(1.5))
@given(case=saliency_cases(), k_seed=st.integers(0, 2**31 - 1))
def test_mask_ranks_are_the_selection_order_of_mask_features(case, k_seed):
    s, largest = case
    b = s.shape[0]
    f = s[0].numel() if b else math.prod(s.shape[1:])
    ranks = []
    for backend in BACKENDS:
        snap = snapshot(s)
        r = mask_ranks(s, largest=largest, backend=backend)
        assert_unmodified(snap)
        assert r.shape == s.shape and r.dtype == torch.int32
        ranks.append(r)
    for other in ranks[1:]:
        assert torch.equal(other, ranks[0])
    r = ranks[0].reshape(b, f)
    # a permutation of 0 .. F-1 in every sample
    assert torch.equal(r.sort(dim=1).values, torch.arange(f, dtype=torch.int32).expand(b, f))
    # ranks < k is what mask_features masks, for any k
    k = torch.randint(0, f + 1, (b,), generator=torch.Generator().manual_seed(k_seed))
    _, mask = sdecor.mask_features(torch.zeros(s.shape), s, k, largest=largest, fill=0.0, backend="reference")
    assert torch.equal(ranks[0] < k.view((b,) + (1,) * (s.ndim - 1)), mask)


RANKS_BAD = {
    "saliency NaN": (lambda s: ((_with_nan(s),), {}), "saliency"),
    "saliency integer": (lambda s: ((s.to(torch.int32),), {}), "saliency"),
    "saliency 0-dim": (lambda s: ((torch.tensor(1.0),), {}), "saliency"),
    "saliency list": (lambda s: ((s.tolist(),), {}), "saliency"),
    "largest int": (lambda s: ((s,), {"largest": 1}), "largest"),
    "backend unknown": (lambda s: ((s,), {"backend": "cuda"}), "backend"),
}


@settings(max_examples=budget(0.5))
@given(
    s=st.integers(1, 4).flatmap(lambda b: tensors((b, 3, 2), torch.float32)),
    name=st.sampled_from(sorted(RANKS_BAD)),
    backend=st.sampled_from(BACKENDS),
)
def test_mask_ranks_rejects_bad_input_naming_the_argument(s, name, backend):
    build, argument = RANKS_BAD[name]
    args, kwargs = build(s)
    with pytest.raises((ValueError, TypeError)) as info:
        mask_ranks(*args, **{"backend": backend, **kwargs})
    assert argument in str(info.value), f"{name}: {info.value}"


# ----------------------------------------------------------------------------- mask_fill_ranked


@st.composite
def ranked_fill_cases(draw):
    x_shape, s_shape, pixel = draw(masking_layouts())
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    x = draw(tensors(x_shape, dtype))
    s = draw(tensors(s_shape, draw(st.sampled_from(FLOAT_DTYPES))))
    f = math.prod(s_shape[1:])
    b = x_shape[0]
    if draw(st.booleans()):  # counts outside [0, F] are allowed here
        k = draw(st.integers(-3, f + 3))
    else:
        k = torch.tensor(draw(st.lists(st.integers(-3, f + 3), min_size=b, max_size=b)), dtype=torch.int64)
        k = k.to(draw(st.sampled_from([torch.int64, torch.int32])))
    fill = draw(fills(x_shape, dtype, names=()))
    return x, s, k, fill, draw(st.booleans()), pixel


@settings(max_examples=budget(2))
@given(case=ranked_fill_cases())
def test_mask_fill_ranked_backends_agree_with_the_definition(case):
    x, s, k, fill, largest, pixel = case
    ranks = mask_ranks(s, largest=largest)
    b = x.shape[0]
    k_view = k.view((b,) + (1,) * (x.ndim - 1)) if isinstance(k, torch.Tensor) else k
    r_view = ranks.reshape(b, 1, *x.shape[2:]) if pixel else ranks
    expected = torch.where(r_view < k_view, torch.as_tensor(fill).to(x.dtype), x)
    for backend in BACKENDS:
        snap = snapshot(x, ranks, k, fill)
        out = mask_fill_ranked(x, ranks, k, fill, backend=backend)
        assert_unmodified(snap)
        assert bitwise_equal(out, expected), backend


FILL_RANKED_BAD = {
    "x integer": (lambda x, r, b: ((x.to(torch.int64), r, 1), {}), "x"),
    "x 0-dim": (lambda x, r, b: ((torch.tensor(1.0), r, 1), {}), "x"),
    "ranks int64": (lambda x, r, b: ((x, r.long(), 1), {}), "ranks"),
    "ranks float": (lambda x, r, b: ((x, r.float(), 1), {}), "ranks"),
    "ranks list": (lambda x, r, b: ((x, r.tolist(), 1), {}), "ranks"),
    "ranks shape": (lambda x, r, b: ((x, r.reshape(b, -1)[:, :-1], 1), {}), "ranks"),
    "k float": (lambda x, r, b: ((x, r, 1.5), {}), "k"),
    "k bool": (lambda x, r, b: ((x, r, False), {}), "k"),
    "k float tensor": (lambda x, r, b: ((x, r, torch.ones(b)), {}), "k"),
    "k tensor length": (lambda x, r, b: ((x, r, torch.ones(b + 2, dtype=torch.int64)), {}), "k"),
    "fill string": (lambda x, r, b: ((x, r, 1, "zero"), {}), "fill"),
    "fill bool": (lambda x, r, b: ((x, r, 1, True), {}), "fill"),
    "fill shape": (lambda x, r, b: ((x, r, 1, torch.zeros(b + 1, *x.shape[1:])), {}), "fill"),
    "backend unknown": (lambda x, r, b: ((x, r, 1), {"backend": "cuda"}), "backend"),
}


@settings(max_examples=budget(0.75))
@given(case=ranked_fill_cases(), name=st.sampled_from(sorted(FILL_RANKED_BAD)), backend=st.sampled_from(BACKENDS))
def test_mask_fill_ranked_rejects_bad_input_naming_the_argument(case, name, backend):
    x, s, _, _, largest, _ = case
    if x.shape[0] == 0 or s.numel() == 0:
        x, s = torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4)
    ranks = mask_ranks(s, largest=largest)
    build, argument = FILL_RANKED_BAD[name]
    args, kwargs = build(x, ranks, x.shape[0])
    with pytest.raises((ValueError, TypeError)) as info:
        mask_fill_ranked(*args, **{"backend": backend, **kwargs})
    assert argument in str(info.value), f"{name}: {info.value}"
