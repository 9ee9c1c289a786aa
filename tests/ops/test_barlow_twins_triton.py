"""Fused Triton Barlow Twins loss (interpreter on CPU): loss and both gradients against the float64
reference on awkward shapes (n < D and n > D, off the tile sizes), layouts, dtypes, the custom op."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sdecor.ops import barlow_twins_loss, barlow_twins_reference
from sdecor.ops.barlow_twins import triton as BT

pytestmark = pytest.mark.skipif(
    not BT.can_run(torch.zeros(2, 2))[0] and not torch.cuda.is_available(),
    reason="Triton cannot run here (not importable, or no GPU and no interpreter)",
)


def _views(n, D, seed, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, D, dtype=torch.float64, generator=gen) * 2.0 + 3.0
    z2 = 0.8 * z1 + torch.randn(n, D, dtype=torch.float64, generator=gen) - 1.0
    return z1.to(device=device, dtype=dtype), z2.to(device=device, dtype=dtype)


def _run(z1, z2, route=None, lambd=0.0051):
    """(loss, g1, g2) of the triton backend, and of the float64 reference on the same values."""
    a1, a2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    if route is None:
        loss = barlow_twins_loss(a1, a2, lambd=lambd, backend="triton")
    else:
        loss = BT.barlow_twins_triton(a1, a2, lambd=lambd, eps=1e-5, route=route)
    loss.backward()
    r1, r2 = z1.detach().double().requires_grad_(), z2.detach().double().requires_grad_()
    ref = barlow_twins_reference(r1, r2, lambd=lambd)
    ref.backward()
    return (loss, a1.grad, a2.grad), (ref, r1.grad, r2.grad)


def _check(z, out, ref, loss_rtol=1e-5, grad_rtol=1e-5):
    loss, g1, g2 = out
    rloss, r1, r2 = ref
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(rloss.item(), rel=loss_rtol)
    for g, r in ((g1, r1), (g2, r2)):
        assert g.dtype == z.dtype and g.shape == z.shape and torch.isfinite(g).all()
        err = ((g.double() - r).abs().max() / r.abs().max()).item()
        assert err < grad_rtol, f"gradient error {err:.3e}"


# interpreter tiles are 16: these cover partial tiles, one and several tiles, n < D and n > D
CASES = [(37, 5), (6, 23), (16, 16), (17, 16), (15, 16), (40, 33), (18, 50), (3, 2)]


@pytest.mark.parametrize("n,D", CASES)
def test_matches_reference_fp32(n, D):
    z1, z2 = _views(n, D, seed=n * 7 + D)
    _check(z1, *_run(z1, z2))


@pytest.mark.parametrize("route", ["D", "N"])
@pytest.mark.parametrize("n,D", [(20, 9), (9, 20), (16, 16)])
def test_both_routes_on_every_shape(route, n, D):
    z1, z2 = _views(n, D, seed=3)
    _check(z1, *_run(z1, z2, route=route, lambd=0.3))


@pytest.mark.parametrize("kind", ["transposed", "column_slice", "row_slice", "mixed"])
def test_non_contiguous_views(kind):
    z1, z2 = _views(19, 22, seed=5)
    if kind == "transposed":  # (D, n) storage read as (n, D)
        a, b = z1.T.contiguous().T, z2.T.contiguous().T
    elif kind == "column_slice":
        a, b = _views(19, 44, seed=6)
        a, b = a[:, ::2], b[:, 1::2]
    elif kind == "row_slice":
        a, b = _views(38, 22, seed=7)
        a, b = a[::2], b[1::2]
    else:
        a, b = z1.T.contiguous().T, z2[:, :]
    assert not (a.is_contiguous() and b.is_contiguous())
    _check(a, *_run(a, b))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("n,D", [(24, 10), (10, 24)])
def test_half_precision(dtype, tol, n, D):
    z1, z2 = _views(n, D, seed=9, dtype=dtype)
    _check(z1, *_run(z1, z2), loss_rtol=tol, grad_rtol=tol)


def test_one_view_detached_and_no_grad():
    z1, z2 = _views(12, 20, seed=13)
    a1 = z1.clone().requires_grad_()
    barlow_twins_loss(a1, z2, backend="triton").backward()
    r1 = z1.double().requires_grad_()
    barlow_twins_reference(r1, z2.double()).backward()
    assert ((a1.grad.double() - r1.grad).abs().max() / r1.grad.abs().max()).item() < 1e-5
    with torch.no_grad():
        plain = barlow_twins_loss(z1, z2, backend="triton")
    assert plain.item() == pytest.approx(barlow_twins_reference(z1.double(), z2.double()).item(), rel=1e-5)


def test_grad_output_scaling():
    z1, z2 = _views(10, 7, seed=17)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    (3.0 * barlow_twins_loss(a1, a2, backend="triton")).backward()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    barlow_twins_loss(b1, b2, backend="triton").backward()
    torch.testing.assert_close(a1.grad, 3.0 * b1.grad)
    torch.testing.assert_close(a2.grad, 3.0 * b2.grad)


def test_double_backward_raises():
    z1, z2 = _views(8, 5, seed=19)
    z1.requires_grad_()
    loss = barlow_twins_loss(z1, z2, backend="triton")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, z1, create_graph=True)


def test_float64_is_refused_by_the_triton_backend():
    z = torch.randn(6, 4, dtype=torch.float64)
    ok, why = BT.can_run(z)
    assert not ok and "float64" in why
    with pytest.raises(ValueError, match="float64"):
        barlow_twins_loss(z, z, backend="triton")
    assert barlow_twins_loss(z, z).dtype == torch.float64  # auto: the reference


def test_opcheck():
    z1, z2 = _views(12, 20, seed=23)
    op = torch.ops.sdecor.barlow_twins_fused.default
    torch.library.opcheck(op, (z1.clone().requires_grad_(), z2.clone().requires_grad_(), 0.0051, 1e-5, True))
    torch.library.opcheck(op, (z1, z2, 0.5, 1e-5, False))
    torch.library.opcheck(op, (z1.T.contiguous().T.requires_grad_(), z2.requires_grad_(), 0.1, 1e-5, True))


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 24)

    def forward(self, x1, x2):
        return barlow_twins_loss(self.lin(x1), self.lin(x2), backend="triton")


def test_compile_fullgraph_aot_eager():
    torch.manual_seed(0)
    model = _Tiny()
    x1, x2 = torch.randn(10, 8), torch.randn(10, 8)
    torch._dynamo.reset()
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x1, x2)
    out.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x1, x2)
    ref.backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


# A child process (the interpreter is fixed at triton's import) compiles the kernels for sm_90
# with ptxas, no GPU needed: a kernel that would not compile is caught without a GPU.
_SM90_CHILD = textwrap.dedent("""
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import ASTSource
        from sdecor.kernels import barlow_twins as K
    except Exception as exc:
        print("harness unavailable:", exc)
        sys.exit(3)
    FLOATS = {"inv_n", "eps", "lambd"}

    def build(fn, ptr_types, consts, num_warps=4):
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
    TYPES = [("*bf16", tl.bfloat16, "ieee"), ("*fp16", tl.float16, "ieee"), ("*fp32", tl.float32, "tf32x3")]
    for x, dot, prec in TYPES:
        views = {"z1_ptr": x, "z2_ptr": x}
        dots = dict(DOT_DTYPE=dot, PRECISION=prec, CAST_FP32=False)
        build(K._stats_kernel, views, dict(BLOCK_K=64, BLOCK_C=64))
        build(K._cross_kernel, views, dict(BLOCK=64, BLOCK_K=32, **dots))
        build(K._gram_kernel, views, dict(BLOCK=64, BLOCK_K=32, **dots))
        grads = {"self_ptr": x, "other_ptr": x}
        tiles = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_J=32, PRECISION="tf32x3", CAST_FP32=False)
        build(K._grad_d_kernel, grads, tiles)
        build(K._grad_n_kernel, grads, tiles)
        build(K._finish_kernel, {"self_ptr": x, "out_ptr": x}, dict(BLOCK_M=64, BLOCK_N=64))
        count += 6
    print("compiled", count)
""")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _SM90_CHILD], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiled 18" in proc.stdout


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("n,D", [(256, 1024), (1024, 256), (300, 300)])
def test_cuda_matches_reference(cuda_device, dtype, tol, n, D):
    z1, z2 = _views(n, D, seed=29, dtype=dtype, device=cuda_device)
    _check(z1, *_run(z1, z2), loss_rtol=tol, grad_rtol=tol)
