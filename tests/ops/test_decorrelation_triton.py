"""The fused Triton backend of decorrelation_loss against the float64 reference (loss and the
gradient autograd gives through the reference), on CPU under the Triton interpreter (tiny
shapes: the interpreter is slow) and, marked ``cuda``, on a GPU with larger shapes."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import sdecor
from sdecor.ops.decorrelation import triton as DT
from sdecor.ops.decorrelation.reference import decorrelation_reference

pytestmark = pytest.mark.skipif(
    not DT.can_run(torch.zeros(2, 2))[0] and not torch.cuda.is_available(),
    reason="Triton cannot run here (not importable, or no GPU and no interpreter)",
)

KERNELS = DT._kernels

# Small tiles, forced splits of the Gram and statistics reductions, both route-N epilogues.
SMALL_TILES = dict(
    gram_block=16,
    gram_block_r=16,
    grad_block_m=16,
    grad_block_n=16,
    grad_block_j=16,
    fin_block=16,
    stats_block_k=16,
    stats_block_c=16,
)


def _triton_and_reference(x, **opts):
    """(loss, grad) of the triton backend on x, and of the float64 reference on the same values."""
    xt = x.detach().clone().requires_grad_(True)
    loss = sdecor.decorrelation_loss(xt, backend="triton", **opts)
    loss.backward()
    xr = x.detach().to(torch.float64).requires_grad_(True)
    ref = decorrelation_reference(xr, **opts)
    ref.backward()
    return loss, xt.grad, ref, xr.grad


def _forward_with_config(x, config, mode="correlation", reduction="mean", correction=1, groups=1, eps=1e-5):
    """(loss, grad) of the launcher under ``config`` overrides, and the float64 reference's."""
    loss, grad = DT._forward(x, mode, reduction, correction, groups, eps, True, config=config)
    xr = x.detach().to(torch.float64).requires_grad_(True)
    opts = dict(mode=mode, reduction=reduction, correction=correction, groups=groups, eps=eps)
    ref = decorrelation_reference(xr, **opts)
    ref.backward()
    return loss, grad, ref, xr.grad


def _assert_close(x, loss, grad, ref, ref_grad, loss_rtol, grad_rtol):
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert grad.dtype == x.dtype and grad.shape == x.shape
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=loss_rtol, abs=1e-12)
    g = grad.to(torch.float64)
    err = (g - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30)
    assert err.item() < grad_rtol, f"gradient relative error {err.item():.3e}"
    # elementwise too, relative to the largest entry
    scale = ref_grad.abs().max().clamp_min(1e-30)
    assert ((g - ref_grad).abs().max() / scale).item() < 10 * grad_rtol


def _data(shape, seed, dtype=torch.float32, offset=3.0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + offset).to(device=device, dtype=dtype)


# (shape, groups): route D (n >= g) and route N (n < g), sizes off the block sizes, groups > 1
CASES = [
    ((37, 5), 1),  # D
    ((6, 23), 1),  # N
    ((19, 12), 3),  # D, groups
    ((4, 40), 4),  # N, groups (g = 10 > n = 4)
    ((70, 45), 1),  # D, several 32-tiles
    ((20, 70), 1),  # N, several 32-tiles of features
    ((12, 12), 1),  # n == g: route D
    ((11, 12), 1),  # n == g - 1: route N
]


@pytest.mark.parametrize("shape,groups", CASES)
@pytest.mark.parametrize("mode", ["correlation", "covariance"])
@pytest.mark.parametrize("reduction,correction", [("sum", 1), ("mean", 0)])
def test_matches_reference_fp32(shape, groups, mode, reduction, correction):
    x = _data(shape, seed=len(shape) * 100 + shape[0] + shape[1])
    out = _triton_and_reference(x, mode=mode, reduction=reduction, correction=correction, groups=groups)
    _assert_close(x, *out, loss_rtol=1e-5, grad_rtol=2e-5)


@pytest.mark.parametrize(
    "shape,groups,override",
    [
        ((70, 45), 1, dict(gram_split=3, stats_split=3)),  # D: atomic split + finish
        ((50, 34), 2, dict(gram_split=2)),  # D: split, groups
        ((20, 70), 1, dict(gram_split=3, stats_split=2, kz_row_loop=False)),  # N: split, two-pass epilogue
        ((20, 70), 1, dict(kz_row_loop=True)),  # N: one program per feature tile
        ((18, 64), 2, dict(kz_row_loop=False)),  # N: groups, two-pass
        ((40, 24), 2, dict(off64=True, gram_split=2)),  # D: 64-bit offsets
        ((12, 40), 1, dict(off64=True, kz_row_loop=False)),  # N: 64-bit offsets
    ],
)
@pytest.mark.parametrize("mode", ["correlation", "covariance"])
def test_splits_and_small_tiles(shape, groups, override, mode):
    x = _data(shape, seed=7)
    out = _forward_with_config(x, {**SMALL_TILES, **override}, mode=mode, reduction="sum", groups=groups)
    _assert_close(x, *out, loss_rtol=1e-5, grad_rtol=2e-5)


@pytest.mark.parametrize(
    "dtype,offset,loss_rtol,grad_rtol", [(torch.float32, 3.0, 1e-5, 2e-5), (torch.bfloat16, 100.0, 3e-2, 3e-2)]
)
@pytest.mark.parametrize("override", [dict(), dict(gram_split=2)])
def test_route_d_gram_with_raw_second_operand(dtype, offset, loss_rtol, grad_rtol, override):
    # the Gram's second operand straight from memory, centred in the epilogue (acc - colsum * mean)
    x = _data((70, 45), seed=73, dtype=dtype, offset=offset)
    out = _forward_with_config(x, {**SMALL_TILES, "raw_b": True, **override}, mode="correlation", groups=1)
    _assert_close(x, *out, loss_rtol=loss_rtol, grad_rtol=grad_rtol)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted_spatial"])
@pytest.mark.parametrize("shape,groups", [((3, 6, 5, 4), 2), ((2, 40, 3, 2), 1)])  # D route; N route (12 < 40)
def test_feature_maps(layout, shape, groups):
    x = _data(shape, seed=11)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "permuted_spatial":  # W outermost in memory: the spatial dims do not merge (copied)
        x = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    loss, grad, ref, ref_grad = _triton_and_reference(x, mode="correlation", reduction="mean", groups=groups)
    _assert_close(x, loss, grad, ref, ref_grad, loss_rtol=1e-5, grad_rtol=2e-5)
    if layout == "channels_last":
        assert grad.is_contiguous(memory_format=torch.channels_last)


def test_five_dim_input():
    x = _data((2, 6, 3, 2, 2), seed=3)
    _assert_close(x, *_triton_and_reference(x, mode="covariance", groups=3), loss_rtol=1e-5, grad_rtol=2e-5)


@pytest.mark.parametrize("kind", ["transposed", "column_slice", "strided_columns", "row_stride"])
def test_non_contiguous_2d(kind):
    base = _data((40, 30), seed=5)
    if kind == "transposed":
        x = base.t()[:, :17]  # (30, 17) with unit row stride
    elif kind == "column_slice":
        x = base[:, 3:26]  # offset pointer, row stride 30
    elif kind == "strided_columns":
        x = base[:, ::2]  # column stride 2
    else:
        x = base[::3, :]  # (14, 30): n < g, row stride 90
    assert not x.is_contiguous()
    _assert_close(x, *_triton_and_reference(x, mode="correlation"), loss_rtol=1e-5, grad_rtol=2e-5)


@pytest.mark.parametrize("dtype,loss_rtol,grad_rtol", [(torch.float16, 1e-2, 2e-2), (torch.bfloat16, 3e-2, 3e-2)])
@pytest.mark.parametrize("shape", [(64, 24), (12, 40)])
@pytest.mark.parametrize("mode", ["correlation", "covariance"])
def test_half_precision_with_large_mean(dtype, loss_rtol, grad_rtol, shape, mode):
    # +100 offset: a kernel forming X^T X - n mu mu^T would lose everything in fp16/bf16
    x = _data(shape, seed=13, dtype=dtype, offset=100.0)
    out = _triton_and_reference(x, mode=mode, reduction="mean")
    _assert_close(x, *out, loss_rtol=loss_rtol, grad_rtol=grad_rtol)


@pytest.mark.parametrize("shape", [(30, 7), (5, 12)])
def test_constant_feature_is_finite(shape):
    x = _data(shape, seed=17)
    x[:, 2] = 5.0
    out = _triton_and_reference(x, mode="correlation")
    _assert_close(x, *out, loss_rtol=1e-4, grad_rtol=1e-4)


def test_grad_output_scaling():
    x = _data((25, 9), seed=19).requires_grad_(True)
    sdecor.decorrelation_loss(x, backend="triton").backward()
    g1 = x.grad.clone()
    x.grad = None
    (sdecor.decorrelation_loss(x, backend="triton") * 3.0).backward()
    torch.testing.assert_close(x.grad, 3.0 * g1)


def test_no_grad_and_detached_inputs_give_the_same_loss():
    x = _data((25, 9), seed=23)
    with_grad = sdecor.decorrelation_loss(x.clone().requires_grad_(True), backend="triton")
    plain = sdecor.decorrelation_loss(x, backend="triton")
    with torch.no_grad():
        no_grad = sdecor.decorrelation_loss(x.clone().requires_grad_(True), backend="triton")
    assert plain.item() == pytest.approx(with_grad.item(), rel=1e-6)
    assert no_grad.item() == pytest.approx(with_grad.item(), rel=1e-6)
    assert not plain.requires_grad and not no_grad.requires_grad


def test_double_backward_raises():
    x = _data((20, 6), seed=29).requires_grad_(True)
    loss = sdecor.decorrelation_loss(x, backend="triton")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_float64_is_refused_by_the_triton_backend():
    x = torch.randn(10, 4, dtype=torch.float64)
    ok, why = DT.can_run(x)
    assert not ok and "float64" in why
    with pytest.raises(ValueError, match="float64"):
        sdecor.decorrelation_loss(x, backend="triton")
    # auto falls back to the reference
    assert sdecor.decorrelation_loss(x).dtype == torch.float64


def test_opcheck():
    x = _data((20, 12), seed=31).requires_grad_(True)
    op = torch.ops.sdecor.decorrelation_fused.default
    torch.library.opcheck(op, (x, "correlation", "mean", 1, 2, 1e-5, True))
    torch.library.opcheck(op, (x.detach(), "covariance", "sum", 0, 1, 1e-5, False))
    x4 = _data((2, 6, 3, 2), seed=37).to(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(op, (x4, "correlation", "sum", 1, 1, 1e-5, True))


@pytest.mark.parametrize("noise", [1e-2, 1e-3])
def test_route_n_fp16_strongly_correlated_features(noise):
    # every feature is one common signal plus a little noise: W = Z Moff reaches (g - 1) |Z| and
    # nearly cancels against Z r, so W must not be rounded to fp16 before the final step
    gen = torch.Generator().manual_seed(0)
    n, g = 16, 256
    common = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x = (common + noise * torch.randn(n, g, generator=gen, dtype=torch.float64) + 5.0).to(torch.float16)
    loss, grad, ref, ref_grad = _triton_and_reference(x, mode="correlation", reduction="sum")
    assert torch.isfinite(grad).all()
    _assert_close(x, loss, grad, ref, ref_grad, loss_rtol=1e-3, grad_rtol=2e-3)


def test_launch_plan_is_cached_per_key(monkeypatch):
    KERNELS.clear_plan_cache()
    calls = []
    select = KERNELS.select_config
    monkeypatch.setattr(KERNELS, "select_config", lambda *a, **k: calls.append(a) or select(*a, **k))
    x = _data((20, 9), seed=59)
    first = DT._forward(x, "correlation", "mean", 1, 1, 1e-5, True)
    second = DT._forward(x, "correlation", "mean", 1, 1, 1e-5, True)
    assert len(calls) == 1
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    torch.testing.assert_close(first[1], second[1], rtol=0, atol=0)
    DT._forward(x[:, :8], "correlation", "mean", 1, 1, 1e-5, True)  # other shape and strides: a new plan
    DT._forward(x, "correlation", "mean", 1, 1, 1e-5, True, config=dict(gram_block=16))  # other config
    DT._forward(x, "covariance", "mean", 1, 1, 1e-5, True)  # other mode
    assert len(calls) == 4


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="gram_blok"):
        DT._forward(_data((10, 4), seed=61), "correlation", "mean", 1, 1, 1e-5, True, config=dict(gram_blok=16))


class _TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 16)

    def forward(self, x):
        h = self.lin(x)
        return h.square().mean() + 0.1 * sdecor.decorrelation_loss(h, backend="triton")


def _compile_matches_eager(backend, device):
    torch.manual_seed(0)
    model = _TinyModel().to(device)
    x = torch.randn(32, 8, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(x)
    out.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x)
    ref.backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_compile_fullgraph_aot_eager():
    _compile_matches_eager("aot_eager", "cpu")


# A child process (the interpreter is fixed at triton's import) compiles the kernels for sm_90
# with ptxas, no GPU needed: CI, which has none, still catches a kernel that would not compile.
_SM90_CHILD = textwrap.dedent("""
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import ASTSource
        from sdecor.kernels import decorrelation as K
    except Exception as exc:
        print("harness unavailable:", exc)
        sys.exit(3)
    FLOATS = {"inv_nprime", "eps", "loss_factor", "coef"}

    def build(fn, ptr_types, consts, num_warps):
        consts = dict(consts)
        for name in ("S", "stride_c", "gstride_c"):  # 2-D row-major input, as the JIT specialises it
            if name in fn.arg_names:
                consts[name] = 1
        sig = {}
        for name in fn.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = ptr_types.get(name, "*fp32")
            else:
                sig[name] = "fp32" if name in FLOATS else "i32"
        try:
            src = ASTSource(fn, sig, constexprs=consts)
        except TypeError as exc:
            print("harness unavailable:", exc)
            sys.exit(3)
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=3))

    count = 0
    for x, dot, prec in [("*bf16", tl.bfloat16, "tf32"), ("*fp32", tl.float32, "tf32x3")]:
        dots = dict(DOT_DTYPE=dot, PRECISION=prec, CAST_FP32=False)
        for route_n in (False, True):
            br = 32 if route_n or x == "*fp32" else 64
            raw_b = x == "*bf16" and not route_n
            build(K._col_stats_kernel, {"x_ptr": x},
                  dict(CORR=True, FUSED=True, DIAG_LOSS=route_n, BLOCK_K=64, BLOCK_C=64, OFF64=False), 4)
            build(K._gram_kernel, {"x_ptr": x, "out_ptr": x},
                  dict(ROUTE_N=route_n, CORR=True, ATOMIC=False, BLOCK=128, BLOCK_R=br, RAW_B=raw_b, NUM_STAGES=3,
                       OFF64=False, **dots), 8)
            build(K._gram_kernel, {"x_ptr": x},
                  dict(ROUTE_N=route_n, CORR=True, ATOMIC=True, BLOCK=64, BLOCK_R=br, RAW_B=False, NUM_STAGES=3,
                       OFF64=True, **dots), 4)
            build(K._gram_finish_kernel, {}, dict(ROUTE_N=route_n, CORR=True, BLOCK=64, BLOCK_C=64, OFF64=False), 4)
            count += 4
        build(K._col_stats_combine_kernel, {}, dict(CORR=True, DIAG_LOSS=True, BLOCK_C=64), 4)
        build(K._grad_d_kernel, {"x_ptr": x, "grad_ptr": x, "m_ptr": x},
              dict(CORR=True, BLOCK_M=128, BLOCK_N=128, BLOCK_J=32 if x == "*bf16" else 16, GROUP_M=8,
                   NUM_STAGES=3, OFF64=False, **dots), 8)
        for row_loop, pass_ in ((True, 1), (False, 0), (False, 1)):
            build(K._kz_kernel, {"x_ptr": x, "grad_ptr": x, "k_ptr": x},
                  dict(CORR=True, ROW_LOOP=row_loop, PASS=pass_, SUM_LOSS=pass_ == 1, BLOCK_M=64, BLOCK_F=128,
                       BLOCK_L=64 if x == "*bf16" else 32, GROUP_M=8, NUM_STAGES=3, OFF64=False, **dots), 8)
        count += 5
    print("compiled", count)
""")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _SM90_CHILD], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiled 26" in proc.stdout


# ------------------------------------------------------------------------------- GPU variants
GPU_CASES = [
    ((512, 256), 1),  # D
    ((256, 1024), 1),  # N, row-loop epilogue
    ((1500, 700), 2),  # D, groups, ragged
    ((300, 2100), 3),  # N, groups, ragged
    ((8192, 128), 1),  # D, small g: split over samples (atomics + finish)
    ((64, 4096), 1),  # N, small n: split over features
    ((2048, 4096), 1),  # N, large n: two-pass epilogue
]
GPU_TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (5e-3, 1e-2), torch.bfloat16: (3e-2, 3e-2)}


def _gpu_tol(dtype, mode):
    if dtype == torch.float16 and mode == "covariance":  # bf16 tensor-core operands (fp16 range)
        return GPU_TOL[torch.bfloat16]
    return GPU_TOL[dtype]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,groups", GPU_CASES)
@pytest.mark.parametrize("mode", ["correlation", "covariance"])
def test_cuda_matches_reference(cuda_device, dtype, shape, groups, mode):
    x = _data(shape, seed=41, dtype=dtype, offset=100.0 if dtype != torch.float32 else 3.0, device=cuda_device)
    loss_rtol, grad_rtol = _gpu_tol(dtype, mode)
    out = _triton_and_reference(x, mode=mode, reduction="mean", groups=groups)
    _assert_close(x, *out, loss_rtol=loss_rtol, grad_rtol=grad_rtol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_feature_maps(cuda_device, dtype, layout):
    x = _data((8, 64, 12, 10), seed=43, dtype=dtype, device=cuda_device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    loss_rtol, grad_rtol = GPU_TOL[dtype]
    _assert_close(x, *_triton_and_reference(x, mode="correlation", groups=2), loss_rtol=loss_rtol, grad_rtol=grad_rtol)


@pytest.mark.cuda
def test_cuda_non_contiguous(cuda_device):
    x = _data((700, 900), seed=47, device=cuda_device).t()[:, :500]  # (900, 500), unit row stride
    _assert_close(x, *_triton_and_reference(x, mode="correlation"), loss_rtol=1e-5, grad_rtol=1e-4)


@pytest.mark.cuda
def test_cuda_no_host_sync(cuda_device):
    x = _data((1024, 256), seed=53, device=cuda_device).requires_grad_(True)
    sdecor.decorrelation_loss(x, backend="triton").backward()  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = sdecor.decorrelation_loss(x, backend="triton")
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_cuda_compile_fullgraph_inductor(cuda_device):
    _compile_matches_eager("inductor", cuda_device)


@pytest.mark.cuda
def test_cuda_graph_capture(cuda_device):
    x = _data((256, 512), seed=67, device=cuda_device).requires_grad_(True)
    opts = dict(backend="triton", mode="correlation")
    for _ in range(2):  # compile the kernels and build the plan outside the capture
        x.grad = None
        sdecor.decorrelation_loss(x, **opts).backward()
    expected = x.grad.clone()
    static_loss = sdecor.decorrelation_loss(x, **opts).detach()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        x.grad = None
        with torch.cuda.graph(graph):
            loss = sdecor.decorrelation_loss(x, **opts)
            loss.backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    assert loss.item() == pytest.approx(static_loss.item(), rel=1e-6)
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=0)


@pytest.mark.cuda
def test_cuda_second_device(cuda_device):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x = _data((300, 96), seed=71, device="cuda:1")
    assert torch.cuda.current_device() == 0
    loss, grad, ref, ref_grad = _triton_and_reference(x, mode="correlation")
    assert grad.device == x.device
    _assert_close(x, loss, grad, ref, ref_grad, loss_rtol=1e-5, grad_rtol=1e-4)
