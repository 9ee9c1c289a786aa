"""Batched saliency masking: contract, backend agreement, fills, autograd, errors, registration."""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from sdecor.ops.masking import extension as _extension
from sdecor.ops.masking.dispatch import mask_features
from sdecor.ops.masking.reference import mask_select_reference

ROOT = str(pathlib.Path(__file__).resolve().parents[2])  # the repository root
HAS_CPP = _extension.has_cpu()
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason=f"sdecor._C not built ({_extension.load_error()})")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
CPU_BACKENDS = ["reference"] + (["cpp"] if HAS_CPP else [])


def tied_saliency(shape, dtype=torch.float32, levels=4, seed=0):
    """Integer-valued saliency with a few levels (heavy ties), with both signed zeros."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-levels, levels + 1, shape, generator=g).to(dtype)
    neg_zero = torch.rand(shape, generator=g) < 0.5
    return torch.where((s == 0) & neg_zero, torch.tensor(-0.0, dtype=dtype), s)


def brute_force_mask(sal_flat: torch.Tensor, k: list[int], largest: bool) -> torch.Tensor:
    """The definition: rank the (value, index) pairs; mask the first k."""
    out = torch.zeros(sal_flat.shape, dtype=torch.bool)
    for b in range(sal_flat.shape[0]):
        vals = sal_flat[b].double().tolist()
        order = sorted(range(len(vals)), key=lambda i: ((-vals[i] if largest else vals[i]), i))
        out[b, order[: k[b]]] = True
    return out


def gen(seed=123, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------- the tie rule


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("largest", [False, True])
def test_mask_matches_definition(backend, largest):
    x = torch.randn(5, 3, 6, 7)
    s = tied_saliency((5, 6, 7), levels=2)
    k = [0, 1, 13, 41, 42]
    masked, mask = mask_features(x, s, torch.tensor(k), largest=largest, fill=0.0, backend=backend)
    assert mask.shape == s.shape and mask.dtype == torch.bool
    assert torch.equal(mask.view(5, -1), brute_force_mask(s.view(5, -1), k, largest))
    assert mask.view(5, -1).sum(1).tolist() == k


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pixel", [True, False])
@pytest.mark.parametrize("largest", [False, True])
def test_cpp_matches_reference_tied(dtype, pixel, largest):
    B, C, H, W = 6, 3, 9, 11
    x = torch.randn(B, C, H, W, dtype=dtype)
    s = tied_saliency((B, 1, H, W) if pixel else (B, C, H, W), dtype=dtype, seed=1)
    F = s[0].numel()
    for k in [0, 1, 7, 0.25, 0.5, 1.0, F, torch.tensor([0, 1, F // 3, F // 2, F - 1, F])]:
        ref = mask_features(x, s, k, largest=largest, generator=gen(), backend="reference")
        cpp = mask_features(x, s, k, largest=largest, generator=gen(), backend="cpp")
        assert torch.equal(ref[1], cpp[1]), k
        assert torch.equal(ref[0], cpp[0]), k  # bitwise, uniform fill with the same generator


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpp_matches_reference_large_rows(dtype):
    """Long rows of continuous and of tied values exercise every radix narrowing step."""
    g = torch.Generator().manual_seed(5)
    B, F = 4, 50_000
    for s in (torch.rand(B, F, generator=g), torch.randn(B, F, generator=g) * 1e-30, tied_saliency((B, F), levels=20)):
        s = s.to(dtype)
        k = torch.tensor([1, 4_999, 25_000, 49_999])
        for largest in (False, True):
            ref = mask_select_reference(s, k, largest)
            got = torch.ops.sdecor.mask_select(s, k, largest)
            assert torch.equal(ref, got)
            assert got.sum(1).tolist() == k.tolist()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_signed_zero_and_infinities(backend):
    s = torch.tensor([[0.0, -0.0, float("inf"), -float("inf"), 0.0, -0.0, 1.0, -1.0]])
    x = torch.randn(1, 8)
    _, mask = mask_features(x, s, 3, fill=0.0, backend=backend)
    # -inf, -1, then the first of the four (tied) zeros
    assert mask[0].tolist() == [True, False, False, True, False, False, False, True]
    _, mask = mask_features(x, s, 3, largest=True, fill=0.0, backend=backend)
    assert mask[0].tolist() == [True, False, True, False, False, False, True, False]


# ----------------------------------------------------------------------------- k forms


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_k_forms(backend):
    x = torch.randn(3, 2, 4, 5)
    s = torch.rand(3, 4, 5)
    F = 20
    cases = [  # a list, not a dict: 0 and 0.0 (an int count and a fraction) are different cases
        (7, [7, 7, 7]),
        (0, [0, 0, 0]),
        (F, [F, F, F]),
        (0.33, [6, 6, 6]),  # floor(0.33 * 20)
        (1.0, [F, F, F]),
        (0.0, [0, 0, 0]),
    ]
    for k, expected in cases:
        _, mask = mask_features(x, s, k, fill=0.0, backend=backend)
        assert mask.view(3, -1).sum(1).tolist() == expected, k
    for kt in (
        torch.tensor([0, 5, 20]),
        torch.tensor([0, 5, 20], dtype=torch.int32),
        torch.tensor([3, 5, 20], dtype=torch.uint8),
    ):
        _, mask = mask_features(x, s, kt, fill=0.0, backend=backend)
        assert mask.view(3, -1).sum(1).tolist() == kt.tolist()
    _, mask = mask_features(x, s, torch.tensor(4), fill=0.0, backend=backend)  # 0-dim: like an int
    assert mask.view(3, -1).sum(1).tolist() == [4, 4, 4]
    _, mask = mask_features(x, s, torch.tensor(0.5), fill=0.0, backend=backend)  # 0-dim float: a fraction
    assert mask.view(3, -1).sum(1).tolist() == [10, 10, 10]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_layouts(backend):
    """Element masking for any (B, ...) x; pixel masking for (B, C, H, W) with (B, 1, H, W) or (B, H, W)."""
    for shape in [(4,), (4, 9), (4, 2, 9), (4, 2, 3, 3), (4, 2, 3, 3, 2)]:
        x = torch.randn(shape)
        masked, mask = mask_features(x, torch.rand(shape), 0.5, backend=backend, generator=gen())
        assert mask.shape == shape and masked.shape == shape
    x = torch.randn(4, 3, 5, 6)
    s = torch.rand(4, 5, 6)
    m1, mask1 = mask_features(x, s, 9, fill=0.0, backend=backend)
    m2, mask2 = mask_features(x, s.unsqueeze(1), 9, fill=0.0, backend=backend)
    assert mask1.shape == (4, 5, 6) and mask2.shape == (4, 1, 5, 6)
    assert torch.equal(mask1, mask2.squeeze(1)) and torch.equal(m1, m2)
    # a masked pixel is masked in every channel
    assert torch.equal((m1 == 0).all(1), mask1)
    assert int((m1 == 0).sum()) == 4 * 9 * 3


def test_noncontiguous_and_empty():
    x = torch.randn(3, 6, 5).transpose(1, 2)  # (3, 5, 6) non-contiguous
    s = torch.rand(3, 6, 5).transpose(1, 2)
    outs = [mask_features(x, s, 11, backend=b, generator=gen()) for b in CPU_BACKENDS]
    for masked, mask in outs[1:]:
        assert torch.equal(masked, outs[0][0]) and torch.equal(mask, outs[0][1])
    masked, mask = outs[0]
    assert torch.equal(masked[~mask], x[~mask])
    for b in CPU_BACKENDS:
        masked, mask = mask_features(torch.randn(0, 3, 4, 4), torch.rand(0, 4, 4), 0.5, backend=b)
        assert masked.shape == (0, 3, 4, 4) and mask.shape == (0, 4, 4)
        masked, mask = mask_features(torch.randn(2, 0), torch.rand(2, 0), 0.5, backend=b)
        assert masked.shape == (2, 0) and mask.shape == (2, 0)


# ----------------------------------------------------------------------------- fills


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fill_uniform_range(backend, dtype):
    x = torch.randn(4, 3, 8, 8, dtype=dtype) * torch.tensor([1.0, 5.0, 0.1], dtype=dtype).view(1, 3, 1, 1)
    s = torch.rand(4, 8, 8)
    masked, mask = mask_features(x, s, 0.5, fill="uniform", generator=gen(), backend=backend)
    assert masked.dtype == dtype and masked.shape == x.shape
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    m = mask.unsqueeze(1).expand_as(x)
    assert torch.equal(masked[~m], x[~m])
    inside = (masked >= lo) & (masked <= hi)
    assert bool(inside.all())
    # the draws are not a copy of x: masked values differ from the originals almost everywhere
    assert (masked[m] != x[m]).float().mean() > 0.9


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fill_mean_constant_tensor(backend):
    x = torch.randn(3, 2, 4, 4)
    s = torch.rand(3, 2, 4, 4)
    masked, mask = mask_features(x, s, 10, fill="mean", backend=backend)
    means = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    assert torch.equal(masked[mask], means[mask])
    assert torch.equal(masked[~mask], x[~mask])

    masked, mask = mask_features(x, s, 10, fill=-2.5, backend=backend)
    assert bool((masked[mask] == -2.5).all()) and torch.equal(masked[~mask], x[~mask])

    for baseline in (
        torch.randn(3, 2, 4, 4),
        torch.randn(2, 1, 1),
        torch.tensor(7.0),
        torch.randn(4, dtype=torch.float64),
    ):
        masked, mask = mask_features(x, s, 10, fill=baseline, backend=backend)
        expected = torch.where(mask, baseline.to(x.dtype).expand_as(x), x)
        assert torch.equal(masked, expected) and masked.dtype == x.dtype


def test_fill_half_precision_mean():
    x = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    masked, mask = mask_features(x, torch.rand(2, 4, 4), 5, fill="mean")
    mean = x.float().mean(dim=(2, 3)).to(torch.bfloat16)
    m = mask.unsqueeze(1).expand_as(x)
    assert torch.equal(masked[m].view(2, 3, 5), mean.unsqueeze(-1).expand(2, 3, 5))


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_generator_repeatable(backend):
    x = torch.randn(4, 3, 8, 8)
    s = tied_saliency((4, 8, 8))
    a = mask_features(x, s, 0.3, generator=gen(7), backend=backend)
    b = mask_features(x, s, 0.3, generator=gen(7), backend=backend)
    c = mask_features(x, s, 0.3, generator=gen(8), backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(a[1], c[1])  # the mask never depends on the random stream
    torch.manual_seed(3)
    d = mask_features(x, s, 0.3, backend=backend)  # default generator
    torch.manual_seed(3)
    e = mask_features(x, s, 0.3, backend=backend)
    assert torch.equal(d[0], e[0])


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fill", ["uniform", "mean", 0.0, "tensor"])
def test_gradient_is_keep_mask(backend, fill):
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    s = torch.rand(3, 5, 5, dtype=torch.float64, requires_grad=True)
    fill_arg = torch.randn(3, 2, 5, 5, dtype=torch.float64, requires_grad=True) if fill == "tensor" else fill
    masked, mask = mask_features(x, s, 8, fill=fill_arg, generator=gen(), backend=backend)
    grad_out = torch.randn_like(masked)
    masked.backward(grad_out)
    keep = (~mask).unsqueeze(1).to(grad_out.dtype)
    assert torch.equal(x.grad, grad_out * keep)
    assert s.grad is None
    if fill == "tensor":
        assert fill_arg.grad is None  # fill values are constants


@needs_cpp
def test_cpp_op_backward_and_double_backward():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.ops.sdecor.mask_select(torch.rand(2, 16, dtype=torch.float64), torch.tensor([6, 9]), False)
    u = torch.rand(3 * 15, dtype=torch.float64)
    out = torch.ops.sdecor.mask_fill_uniform(x, mask, u)
    g = torch.randn_like(out, requires_grad=True)
    (gx,) = torch.autograd.grad(out, x, g, create_graph=True)
    keep = (~mask).view(2, 1, 4, 4)
    assert torch.equal(gx, g * keep)
    (gg,) = torch.autograd.grad(gx.sum(), g)  # the backward is linear in grad_output
    assert torch.equal(gg, keep.expand_as(gg).to(gg.dtype))


# ----------------------------------------------------------------------------- errors


def test_errors():
    x = torch.randn(2, 3, 4, 4)
    s = torch.rand(2, 4, 4)
    cases = [
        ((x, s, -1), {}, ValueError, "k must be >= 0"),
        ((x, s, 17), {}, ValueError, "k must be <= 16"),
        ((x, s, 1.5), {}, ValueError, r"fractional k must lie in \[0, 1\]"),
        ((x, s, -0.1), {}, ValueError, r"fractional k must lie in \[0, 1\]"),
        ((x, s, float("nan")), {}, ValueError, r"fractional k must lie in \[0, 1\]"),
        ((x, s, True), {}, TypeError, "got bool"),
        ((x, s, "3"), {}, TypeError, "k must be an int"),
        ((x, s, torch.tensor([1, 2, 3])), {}, ValueError, r"shape \(2,\)"),
        ((x, s, torch.tensor([[1, 2]])), {}, ValueError, r"shape \(2,\)"),
        ((x, s, torch.tensor([1.0, 2.0])), {}, TypeError, "integer dtype"),
        ((x, s, torch.tensor([True, False])), {}, TypeError, "integer dtype"),
        ((x, s, torch.tensor([-1, 2])), {}, ValueError, "k must be >= 0"),
        ((x, s, torch.tensor([1, 17])), {}, ValueError, "k must be <= 16"),
        ((x, torch.rand(2, 3, 4, 5), 1), {}, ValueError, "saliency must have"),
        ((x, torch.rand(2, 2, 4, 4), 1), {}, ValueError, "saliency must have"),
        ((x, torch.rand(3, 4, 4), 1), {}, ValueError, "batch size"),
        ((x, torch.rand(()), 1), {}, ValueError, "batch size"),
        ((x, torch.randint(0, 3, (2, 4, 4)), 1), {}, TypeError, "saliency must be a floating"),
        ((x, [1, 2], 1), {}, TypeError, "saliency must be a torch.Tensor"),
        ((x.long(), s, 1), {}, TypeError, "x must have a floating dtype"),
        ((x, torch.where(s > 0.5, s, torch.nan), 1), {}, ValueError, "NaN"),
        ((x, s, 1), {"fill": "zeros"}, ValueError, "fill must be one of"),
        ((x, s, 1), {"fill": torch.zeros(2, 1, 4)}, ValueError, "must broadcast to x's shape"),
        ((x, s, 1), {"fill": torch.zeros(2, 3, 4, 4, 1)}, ValueError, "must broadcast to x's shape"),
        ((x, s, 1), {"fill": [0.0]}, TypeError, "fill must be"),
        ((x, s, 1), {"fill": True}, TypeError, "fill must be"),
        ((x, s, 1), {"backend": "triton"}, ValueError, "backend must be one of"),
        ((x, s, 1), {"backend": "cuda"}, ValueError, "backend='cuda'"),
        ((x, s, 1), {"largest": 1}, TypeError, "largest must be a bool"),
        ((x, s, 1), {"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ]
    for backend in CPU_BACKENDS:
        for args, kwargs, exc, pattern in cases:
            kw = {"backend": backend, **kwargs}
            with pytest.raises(exc, match=pattern):
                mask_features(*args, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_errors_device():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="saliency must be on x's device"):
        mask_features(x, torch.rand(2, 4, 4, device="cuda"), 1)
    with pytest.raises(ValueError, match="generator must be on x's device type"):
        mask_features(x, torch.rand(2, 4, 4), 1, generator=torch.Generator(device="cuda"))
    with pytest.raises(ValueError, match="fill tensor must be on x's device"):
        mask_features(x, torch.rand(2, 4, 4), 1, fill=torch.zeros(3, 1, 1, device="cuda"))


@needs_cpp
def test_raw_op_errors():
    with pytest.raises(ValueError, match="NaN"):
        torch.ops.sdecor.mask_select(torch.tensor([[1.0, float("nan")]]), torch.tensor([1]), False)
    with pytest.raises(ValueError, match=r"k must lie in \[0, 2\]"):
        torch.ops.sdecor.mask_select(torch.rand(1, 2), torch.tensor([3]), False)
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.sdecor.mask_select(torch.rand(1, 2), torch.tensor([1], dtype=torch.int32), False)
    mask = torch.tensor([[True, False, True]])
    with pytest.raises(RuntimeError, match="u has 1 draws"):
        torch.ops.sdecor.mask_fill_uniform(torch.rand(1, 3), mask, torch.rand(1))
    with pytest.raises(RuntimeError, match="u must be a 1-D Double"):
        torch.ops.sdecor.mask_fill_uniform(torch.rand(1, 3, dtype=torch.float64), mask, torch.rand(2))
    with pytest.raises(RuntimeError, match="entries per sample"):
        torch.ops.sdecor.mask_fill_uniform(torch.rand(1, 3, 2, 2), mask, torch.rand(2))


def test_cpp_backend_unavailable_message(monkeypatch):
    monkeypatch.setattr(_extension, "has_cpu", lambda: False)
    with pytest.raises(ValueError, match="pip install --no-build-isolation -e ."):
        mask_features(torch.randn(2, 3), torch.rand(2, 3), 1, backend="cpp")


# ----------------------------------------------------------------------------- torch.library


@needs_cpp
def test_opcheck():
    from torch.library import opcheck

    s = tied_saliency((4, 50))
    k = torch.tensor([0, 3, 25, 50])
    for largest in (False, True):
        opcheck(torch.ops.sdecor.mask_select.default, (s, k, largest))
    opcheck(torch.ops.sdecor.mask_select.default, (s.half(), k, False))
    mask = torch.ops.sdecor.mask_select(s, k, False)
    n = int(k.sum())
    opcheck(
        torch.ops.sdecor.mask_fill_uniform.default,
        (torch.randn(4, 3, 5, 10, requires_grad=True), mask, torch.rand(3 * n)),
    )
    opcheck(
        torch.ops.sdecor.mask_fill_uniform.default,
        (torch.randn(4, 50, dtype=torch.float64, requires_grad=True), mask, torch.rand(n, dtype=torch.float64)),
    )
    opcheck(
        torch.ops.sdecor.mask_fill_uniform.default,
        (torch.randn(4, 2, 50, dtype=torch.bfloat16), mask, torch.rand(2 * n)),
    )


@needs_cpp
def test_torch_compile():
    def f(x, s):
        return mask_features(x, s, 10, fill=0.0, backend="cpp")

    x = torch.randn(4, 3, 5, 6)
    s = torch.rand(4, 5, 6)
    got = torch.compile(f)(x, s)
    ref = f(x, s)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def _run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


@needs_cpp
@pytest.mark.parametrize("order", ["python_fragment_first", "extension_first"])
def test_shares_namespace_with_python_custom_ops(order):
    define = (
        "@torch.library.custom_op('sdecor::_probe_fragment_op', mutates_args=())\n"
        "def probe(x: torch.Tensor) -> torch.Tensor:\n"
        "    return x * 2\n"
    )
    load = (
        "from sdecor.ops.masking import extension as _extension\nassert _extension.has_cpu(), _extension.load_error()\n"
    )
    body = (define + load) if order == "python_fragment_first" else (load + define)
    code = (
        "import torch\n"
        + body
        + "assert torch.equal(torch.ops.sdecor._probe_fragment_op(torch.ones(2)), torch.full((2,), 2.0))\n"
        "m = torch.ops.sdecor.mask_select(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([1]), False)\n"
        "assert m.tolist() == [[False, True, False]]\n"
        "print('ok')\n"
    )
    proc = _run_py(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_fallback_warns_once_without_extension():
    code = (
        "import sys, warnings\n"
        "sys.modules['sdecor._C'] = None  # import of the extension now fails\n"
        "import torch\n"
        "from sdecor.ops.masking.dispatch import mask_features\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = mask_features(torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4), 0.5)\n"
        "    b = mask_features(torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4), 0.5)\n"
        "msgs = [str(x.message) for x in w if 'sdecor._C' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'pip install --no-build-isolation -e .' in msgs[0] and 'SDECOR_BUILD_CUDA=1' in msgs[0], msgs[0]\n"
        "assert a[1].view(2, -1).sum(1).tolist() == [8, 8]\n"
        "print('ok')\n"
    )
    proc = _run_py(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


# ----------------------------------------------------------------------------- CUDA


def test_nvcc_compiles_cuda_sources(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    assert sources, "no csrc/cuda/*.cu files"
    for src in sources:
        out = tmp_path / (os.path.basename(src) + ".o")
        proc = subprocess.run(
            [nvcc, "-std=c++17", "-O2", "-arch=sm_90", "-c", src, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"nvcc failed on {src}:\n{proc.stderr}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pixel", [True, False])
@pytest.mark.parametrize("largest", [False, True])
def test_cuda_matches_reference(dtype, pixel, largest):
    if not _extension.has_cuda():
        pytest.skip("sdecor._C built without its CUDA part")
    dev = torch.device("cuda")
    B, C, H, W = 6, 3, 33, 35
    x = torch.randn(B, C, H, W, dtype=dtype, device=dev)
    for s in (
        tied_saliency((B, 1, H, W) if pixel else (B, C, H, W), dtype=dtype, seed=2).to(dev),
        torch.rand((B, 1, H, W) if pixel else (B, C, H, W), dtype=dtype, device=dev),
    ):
        F = s[0].numel()
        for k in [0, 1, 0.1, 0.5, F, torch.tensor([0, 1, F // 3, F // 2, F - 1, F], device=dev)]:
            for fill in ("uniform", "mean", 0.5):
                ref = mask_features(
                    x, s, k, largest=largest, fill=fill, generator=gen(device="cuda"), backend="reference"
                )
                got = mask_features(x, s, k, largest=largest, fill=fill, generator=gen(device="cuda"), backend="cuda")
                assert torch.equal(ref[1], got[1]), k
                if fill != "uniform":  # uniform: the kernel draws its own (test_mask_features_cuda.py)
                    assert torch.equal(ref[0], got[0]), (k, fill)


@pytest.mark.cuda
def test_cuda_large_rows_and_gradients():
    if not _extension.has_cuda():
        pytest.skip("sdecor._C built without its CUDA part")
    dev = torch.device("cuda")
    s = torch.cat([torch.rand(3, 150_528, device=dev), tied_saliency((3, 150_528), levels=3).to(dev)])
    k = torch.tensor([1, 15_052, 75_264, 150_527, 100, 150_000], device=dev)
    for largest in (False, True):
        assert torch.equal(torch.ops.sdecor.mask_select(s, k, largest), mask_select_reference(s, k, largest))
    x = torch.randn(4, 3, 16, 16, device=dev, requires_grad=True)
    masked, mask = mask_features(x, torch.rand(4, 16, 16, device=dev), 0.5, backend="cuda")
    masked.sum().backward()
    assert torch.equal(x.grad, (~mask).unsqueeze(1).float().expand_as(x))
    from torch.library import opcheck

    opcheck(torch.ops.sdecor.mask_select.default, (s[:2].contiguous(), k[:2].contiguous(), False))


# ----------------------------------------------------------------------------- benchmark suite


def test_benchmark_suite_smoke():
    """The suite's implementations run and agree on what they mask (continuous saliency: no ties)."""
    from sdecor.benchmarks import masking

    groups = masking.run(torch.device("cpu"), quick=True, settings=[(3, 8, 8, "pixel", 0.5), (2, 8, 8, "element", 0.1)])
    assert [g.baseline for g in groups] == ["topk_scatter", "topk_scatter"]
    for g in groups:
        assert g.floor == "copy_floor"
        outs = {impl.name: impl.fn() for impl in g.impls if impl.name != g.floor}  # the floor does not mask
        assert set(outs) == {"ours", "topk_scatter", "reference", "sgt_loop"}
        masks = [o[1] for o in outs.values()]
        for m in masks[1:]:
            assert torch.equal(m, masks[0])
        x = g.impls[0].fn.__defaults__[0]  # the group's input image batch
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        for masked, mask in outs.values():
            m = (mask if mask.ndim == 4 else mask.unsqueeze(1)).expand(masked.shape)
            assert torch.equal(masked[~m], x[~m])
            assert bool(((masked >= lo) & (masked <= hi)).all())
    assert groups[0].params["backend"] in ("cpp", "reference")
