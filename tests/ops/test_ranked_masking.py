"""Rank-once masking (mask_ranks, mask_fill_ranked): definition, backend agreement, layouts, errors."""

from __future__ import annotations

import pytest
import torch

from sdecor.ops.masking import extension as _extension
from sdecor.ops.masking.dispatch import mask_features
from sdecor.ops.masking.ranked import mask_fill_ranked, mask_ranks

HAS_CPP = _extension.available() and hasattr(torch.ops.sdecor, "mask_ranks")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason=f"sdecor._C not built ({_extension.load_error()})")
BACKENDS = ["reference"] + (["cpp"] if HAS_CPP else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def tied(shape, dtype=torch.float32, levels=3, seed=0):
    """Few integer levels (heavy ties) with both signed zeros."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-levels, levels + 1, shape, generator=g).to(dtype)
    neg = torch.rand(shape, generator=g) < 0.5
    return torch.where((s == 0) & neg, torch.tensor(-0.0, dtype=dtype), s)


def brute_ranks(flat: torch.Tensor, largest: bool) -> torch.Tensor:
    out = torch.empty(flat.shape, dtype=torch.int32)
    for b in range(flat.shape[0]):
        vals = flat[b].double().tolist()
        order = sorted(range(len(vals)), key=lambda i: ((-vals[i] if largest else vals[i]), i))
        for place, i in enumerate(order):
            out[b, i] = place
    return out


# ----------------------------------------------------------------------------- mask_ranks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ranks_match_the_definition_with_ties(backend, largest, dtype):
    s = tied((4, 5, 7), dtype=dtype)
    r = mask_ranks(s, largest=largest, backend=backend)
    assert r.dtype == torch.int32 and r.shape == s.shape
    assert torch.equal(r.view(4, -1), brute_ranks(s.view(4, -1), largest))


@needs_cpp
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("f", [1, 2047, 2049, 5000])
def test_cpp_ranks_equal_reference_on_awkward_sizes(largest, dtype, f):
    g = torch.Generator().manual_seed(f)
    s = (torch.randn(3, f, generator=g) * 10).to(dtype)
    s[0, : f // 2] = 1.5  # a long run of ties
    s[1] = torch.where(torch.rand(f, generator=g) < 0.1, torch.tensor(float("inf")), s[1].float()).to(dtype)
    ref = mask_ranks(s, largest=largest, backend="reference")
    assert torch.equal(mask_ranks(s, largest=largest, backend="cpp"), ref)


@needs_cpp
def test_cpp_ranks_resolve_float64_values_that_float32_merges():
    base = torch.tensor(1.0, dtype=torch.float64)
    s = (base + torch.arange(600, dtype=torch.float64).flip(0) * 1e-15)[None].repeat(
        2, 1
    )  # descending, distinct only in float64
    s[1, ::2] = -s[1, ::2]
    for largest in (False, True):
        assert torch.equal(
            mask_ranks(s, largest=largest, backend="cpp"), mask_ranks(s, largest=largest, backend="reference")
        )
    assert mask_ranks(s, backend="cpp")[0].tolist() == list(range(599, -1, -1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("largest", [False, True])
def test_ranks_below_k_are_mask_features_selection(backend, largest):
    x = torch.randn(6, 3, 9, 5)
    s = tied((6, 9, 5), levels=2, seed=3)
    k = torch.tensor([0, 1, 7, 22, 44, 45])
    _, mask = mask_features(x, s, k, largest=largest, fill=0.0)
    r = mask_ranks(s, largest=largest, backend=backend)
    assert torch.equal(r < k.view(-1, 1, 1), mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_reject_nan_and_bad_arguments(backend):
    s = torch.randn(2, 5)
    s[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mask_ranks(s, backend=backend)
    with pytest.raises(TypeError, match="saliency"):
        mask_ranks(torch.ones(2, 3, dtype=torch.int64), backend=backend)
    with pytest.raises(ValueError, match="batch dimension"):
        mask_ranks(torch.tensor(1.0), backend=backend)
    with pytest.raises(TypeError, match="largest"):
        mask_ranks(torch.randn(2, 3), largest=1, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        mask_ranks(torch.randn(2, 3), backend="cuda")


def test_ranks_of_empty_batches():
    for backend in BACKENDS:
        assert mask_ranks(torch.empty(0, 4), backend=backend).shape == (0, 4)
        assert mask_ranks(torch.empty(3, 0), backend=backend).shape == (3, 0)


# ----------------------------------------------------------------------------- mask_fill_ranked


def _expected(x, ranks, k, fill):
    """The definition, element by element in float64."""
    b = x.shape[0]
    view = ranks if ranks.shape == x.shape else ranks.reshape(b, 1, *x.shape[2:])
    k_view = torch.as_tensor(k).reshape(-1, *([1] * (x.ndim - 1))) if isinstance(k, torch.Tensor) else k
    fill_t = torch.as_tensor(fill, dtype=x.dtype).expand(x.shape)
    return torch.where(view.expand(x.shape) < k_view, fill_t, x)


FILLS = {
    "scalar": lambda x: -2.5,
    "zero-dim tensor": lambda x: torch.tensor(0.75),
    "per sample": lambda x: torch.randn(x.shape[0], 1, 1, 1),
    "per channel": lambda x: torch.randn(1, x.shape[1], 1, 1),
    "full": lambda x: torch.randn(x.shape),
    "unmergeable": lambda x: torch.randn(x.shape[0], 1, x.shape[2], 1),  # (B, 1, H, 1): no (B, R, S) view
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fill_kind", list(FILLS))
@pytest.mark.parametrize("layout", ["pixel", "pixel-3d", "element"])
def test_fill_matches_definition(backend, fill_kind, layout):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 7, 6, generator=g)
    sal_shape = {"pixel": (5, 1, 7, 6), "pixel-3d": (5, 7, 6), "element": (5, 3, 7, 6)}[layout]
    ranks = mask_ranks(tied(sal_shape, seed=2), largest=True)
    positions = ranks[0].numel()
    k = torch.tensor([0, 1, positions // 2, positions - 1, positions])
    fill = FILLS[fill_kind](x)
    out = mask_fill_ranked(x, ranks, k, fill, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, _expected(x, ranks, k, fill))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fill_dtypes_and_non_contiguous_inputs(backend, dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 9, 11, generator=g).to(dtype).to(memory_format=torch.channels_last)
    ranks = mask_ranks(torch.randn(4, 9, 11, generator=g))
    fill = torch.randn(4, 3, 11, 9, generator=g).to(dtype).transpose(2, 3)  # non-contiguous full fill
    out = mask_fill_ranked(x, ranks, 40, fill, backend=backend)
    assert torch.equal(out, _expected(x, ranks, 40, fill))
    xe = torch.randn(4, 20, generator=g).to(dtype)[:, ::2]  # element layout, strided
    re = mask_ranks(torch.randn(4, 10, generator=g))
    assert torch.equal(mask_fill_ranked(xe, re, 3, 1.0, backend=backend), _expected(xe, re, 3, 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill_counts_outside_the_range_and_empty_batches(backend):
    x = torch.randn(2, 6)
    ranks = mask_ranks(torch.randn(2, 6))
    assert torch.equal(
        mask_fill_ranked(x, ranks, torch.tensor([-3, 100]), 0.0, backend=backend), torch.stack([x[0], torch.zeros(6)])
    )
    empty = torch.empty(0, 3, 4, 4)
    assert (
        mask_fill_ranked(empty, torch.empty(0, 4, 4, dtype=torch.int32), 2, 0.0, backend=backend).shape == empty.shape
    )


def test_fill_gradient_is_the_keep_mask():
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    ranks = mask_ranks(torch.randn(3, 4, 4))
    out = mask_fill_ranked(x, ranks, 5, 0.0)  # grad recording: the torch path
    out.sum().backward()
    assert torch.equal(x.grad, (ranks >= 5).unsqueeze(1).expand(x.shape).float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill_rejects_bad_arguments(backend):
    x = torch.randn(2, 3, 4, 4)
    ranks = mask_ranks(torch.randn(2, 4, 4))
    with pytest.raises(TypeError, match="ranks must be int32"):
        mask_fill_ranked(x, ranks.long(), 1, backend=backend)
    with pytest.raises(ValueError, match="ranks must have"):
        mask_fill_ranked(x, ranks[:, :3], 1, backend=backend)
    with pytest.raises(TypeError, match="k must be"):
        mask_fill_ranked(x, ranks, 1.5, backend=backend)
    with pytest.raises(TypeError, match="k must be"):
        mask_fill_ranked(x, ranks, True, backend=backend)
    with pytest.raises(TypeError, match="integer dtype"):
        mask_fill_ranked(x, ranks, torch.tensor([1.0, 2.0]), backend=backend)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        mask_fill_ranked(x, ranks, torch.tensor([1, 2, 3]), backend=backend)
    with pytest.raises(ValueError, match="fill tensor must broadcast"):
        mask_fill_ranked(x, ranks, 1, torch.zeros(3, 1, 1, 1), backend=backend)
    with pytest.raises(TypeError, match="fill must be"):
        mask_fill_ranked(x, ranks, 1, "zero", backend=backend)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        mask_fill_ranked(x.long(), ranks, 1, backend=backend)


@needs_cpp
def test_opcheck():
    from torch.library import opcheck

    for largest in (False, True):
        opcheck(torch.ops.sdecor.mask_ranks.default, (tied((3, 50)), largest))
    opcheck(torch.ops.sdecor.mask_ranks.default, (torch.randn(2, 9, dtype=torch.float64), False))
    ranks = mask_ranks(torch.randn(3, 20))
    k = torch.tensor([0, 5, 20])
    opcheck(torch.ops.sdecor.mask_fill_ranked.default, (torch.randn(3, 2, 20), ranks, k, torch.randn(3, 2, 20)))
    opcheck(
        torch.ops.sdecor.mask_fill_ranked.default, (torch.randn(3, 1, 20), ranks, k, torch.zeros(()).expand(3, 1, 20))
    )


@needs_cpp
def test_cpp_op_checks_its_arguments():
    x = torch.randn(2, 1, 5)
    ranks = torch.zeros(2, 5, dtype=torch.int32)
    k = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="fill must have x's dtype"):
        torch.ops.sdecor.mask_fill_ranked(x, ranks, k, x.double())
    with pytest.raises(RuntimeError, match="ranks must be"):
        torch.ops.sdecor.mask_fill_ranked(x, ranks[:, :4], k, x)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ranks_and_fill_equal_cpu(dtype):
    s = tied((6, 3, 17, 19), dtype=dtype, seed=8)
    x = torch.randn(6, 3, 17, 19).to(dtype)
    k = torch.tensor([0, 1, 100, 500, 968, 969])
    for largest in (False, True):
        r_cpu = mask_ranks(s, largest=largest)
        r_gpu = mask_ranks(s.cuda(), largest=largest)
        assert r_gpu.device.type == "cuda" and torch.equal(r_gpu.cpu(), r_cpu)
        fill = torch.randn(6, 1, 1, 1).to(dtype)
        out = mask_fill_ranked(x.cuda(), r_gpu, k.cuda(), fill.cuda())
        assert torch.equal(out.cpu(), mask_fill_ranked(x, r_cpu, k, fill))
