"""Property-based tests of ``sdecor.decorrelation_loss`` (every backend that runs here).

For random tiny shapes (the Triton backend runs under its CPU interpreter here), (N, D) and
(N, C, H, W) inputs, groups, both modes, both reductions, corrections 0 and 1, dtypes, memory
layouts (transposed, sliced, channels_last, stride 0), heavy ties, constant features and
subnormals:

* the loss and its gradient agree with the float64 reference on the same values, within the
  dtype's tolerance (relative to the natural scale of the penalty, ||M||_F^2 over the blocks);
* the inputs are never modified (forward and backward);
* invalid arguments raise ``ValueError`` / ``TypeError`` whose message names the argument.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import Phase, assume, given, note, settings
from hypothesis import strategies as st
from property_helpers import LAYOUTS, assert_unmodified, budget, snapshot, tensors, with_layout

import sdecor


def _runs(backend: str, dtype=torch.float32) -> bool:
    try:
        sdecor.decorrelation_loss(torch.randn(4, 3, dtype=dtype), backend=backend)
    except ValueError:
        return False
    return True


HAS_TRITON = _runs("triton")
#: (backend, dtype) -> relative tolerance of the loss and the gradient, against the float64 values
TOLERANCE = {
    ("reference", torch.float64): 1e-10,
    ("reference", torch.float32): 1e-4,
    ("reference", torch.float16): 1e-4,  # computed in float32 from exact float16 values
    ("reference", torch.bfloat16): 1e-4,
}
if HAS_TRITON:
    TOLERANCE.update(
        {
            ("triton", torch.float32): 1e-4,
            ("triton", torch.float16): 2e-2,
            ("triton", torch.bfloat16): 5e-2,
        }
    )
# Values whose penalty is representable in float32: the huge kind (1e30) overflows the squared
# covariance by design and is checked on its own below.
KINDS = ("ties", "specials_small", "noise", "constant", "subnormal", "offset")


@st.composite
def decorrelation_inputs(draw, max_n=12, max_d=12):
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    groups = draw(st.integers(1, 3))
    g = draw(st.integers(2, max(2, max_d // groups)))
    d = groups * g
    if draw(st.booleans()):
        shape = (draw(st.integers(1, max_n)), d)
    else:
        shape = (draw(st.integers(1, 3)), d, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 2**31 - 1))
    x = with_layout(lambda s: _values(s, kind, seed, dtype), shape, draw(st.sampled_from(LAYOUTS)))
    opts = dict(
        mode=draw(st.sampled_from(["correlation", "covariance"])),
        reduction=draw(st.sampled_from(["mean", "sum"])),
        correction=draw(st.sampled_from([0, 1])),
        groups=groups,
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
    )
    n = x.numel() // d
    if n < opts["correction"] + 1:
        opts["correction"] = 0
    return x, opts, kind


def _values(shape, kind: str, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous (N, D, ...) tensor of ``kind`` values, cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "ties":
        base = torch.randint(-2, 3, shape, generator=g).to(torch.float64)
        base = torch.where((base == 0) & (torch.rand(shape, generator=g) < 0.5), -0.0, base)
    elif kind == "specials_small":  # signed zeros, eps, tiny normals, subnormals, unit values
        fi = torch.finfo(dtype)
        pool = torch.tensor([0.0, -0.0, 1.0, -1.0, fi.eps, fi.smallest_normal, fi.smallest_normal / 4, 3.0])
        base = pool[torch.randint(0, len(pool), shape, generator=g)].double()
    elif kind == "constant":  # some features constant, the others noise
        const = torch.rand(shape[1], generator=g) < 0.5
        base = torch.where(const.view((1, -1) + (1,) * (len(shape) - 2)), torch.full_like(base, 2.5), base)
    elif kind == "subnormal":
        base = base.sign() * torch.finfo(dtype).smallest_normal / 4
    elif kind == "offset":  # a large mean over a small spread
        base = 100.0 + base * 0.5
    return base.to(dtype)


def _blocks(x: torch.Tensor, mode, correction, groups, eps):
    """Per group, in float64: (column slice, s, Z, M) of the definition (see sdecor.ops' reference)."""
    d = x.shape[1]
    xs = (x.movedim(1, -1).reshape(-1, d) if x.ndim > 2 else x).double()
    n_prime = max(xs.shape[0] - correction, 1)
    xc = xs - xs.mean(0, keepdim=True)
    g = d // groups
    for i in range(groups):
        cols = slice(i * g, (i + 1) * g)
        xg = xc[:, cols]
        s = torch.rsqrt(xg.square().sum(0) / n_prime + eps) if mode == "correlation" else torch.ones(g).double()
        z = xg * s
        yield cols, s, z, z.t() @ z / n_prime, n_prime


def _scales(x: torch.Tensor, mode, reduction, correction, groups, eps) -> tuple[float, float]:
    """The sizes rounding errors scale with, in float64: (||M||_F^2 over the blocks, the norm of the
    gradient's terms taken in absolute value, (4 / n') s (|Z| |Moff| + |Z| r))."""
    g = x.shape[1] // groups
    loss_scale = 0.0
    grad_terms = torch.zeros(x.numel() // x.shape[1], x.shape[1], dtype=torch.float64)
    for cols, s, z, m, n_prime in _blocks(x, mode, correction, groups, eps):
        loss_scale += float(m.square().sum())
        moff = m - torch.diag(torch.diagonal(m))
        t = z.abs() @ moff.abs()
        if mode == "correlation":
            t = t + z.abs() * moff.square().sum(1)
        grad_terms[:, cols] = 4 / n_prime * s * t
    denom = groups * g * (g - 1) if reduction == "mean" else 1
    return loss_scale / denom, grad_terms.norm().item() / denom


def _loss_and_grad(x, backend, **opts):
    xg = x.detach().clone().requires_grad_(True)
    loss = sdecor.decorrelation_loss(xg, backend=backend, **opts)
    loss.backward()
    return loss.detach(), xg.grad


def _check_against_float64(x, opts, backends):
    ref_loss, ref_grad = _loss_and_grad(x.double(), "reference", **opts)
    assert math.isfinite(ref_loss.item())
    loss_scale, grad_scale = _scales(x, **opts)
    for backend in backends:
        rtol = TOLERANCE[(backend, x.dtype)]
        snap = snapshot(x)
        loss, grad = _loss_and_grad(x, backend, **opts)
        assert_unmodified(snap)
        assert loss.shape == () and loss.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
        assert grad.shape == x.shape and grad.dtype == x.dtype
        assert math.isfinite(loss.item()), f"{backend}: non-finite loss {loss.item()}"
        err = abs(loss.item() - ref_loss.item())
        assert err <= rtol * loss_scale + 1e-30, f"{backend}: loss {loss.item()} vs {ref_loss.item()} ({loss_scale})"
        assert bool(torch.isfinite(grad).all()), f"{backend}: non-finite gradient"
        gerr = (grad.double() - ref_grad).norm().item()
        # the gradient is rounded to x's dtype: an ulp of the largest entry per element, and entries
        # below the smallest subnormal flush to zero
        fi = torch.finfo(x.dtype)
        rounding = (fi.eps * ref_grad.abs().max().item() + fi.smallest_normal * fi.eps) * math.sqrt(x.numel())
        assert gerr <= rtol * grad_scale + rounding + 1e-30, f"{backend}: gradient error {gerr} (scale {grad_scale})"


@settings(max_examples=budget(1.0))
@given(case=decorrelation_inputs())
def test_the_reference_agrees_with_its_float64_self(case):
    x, opts, kind = case
    note(f"x {tuple(x.shape)} {x.dtype} strides {x.stride()} kind {kind}; {opts}")
    _check_against_float64(x, opts, ["reference"])


@pytest.mark.skipif(not HAS_TRITON, reason="the Triton backend cannot run here")
@settings(max_examples=budget(0.15))
@given(case=decorrelation_inputs(max_n=6, max_d=6).filter(lambda c: c[0].dtype != torch.float64))
def test_the_triton_backend_agrees_with_the_float64_reference(case):
    x, opts, kind = case
    note(f"x {tuple(x.shape)} {x.dtype} strides {x.stride()} kind {kind}; {opts}")
    _check_against_float64(x, opts, ["triton"])


HUGE_BACKENDS = ["reference", "triton"] if HAS_TRITON else ["reference"]


def _huge(x: torch.Tensor) -> torch.Tensor:
    """``x`` times 1e28 (entries up to ~1e30, beyond sqrt(max float32)); float16 becomes float32."""
    dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
    return (x.double() * 1e28).to(dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings in the Triton interpreter
@settings(max_examples=budget(0.25), phases=[Phase.explicit, Phase.generate])
@given(case=decorrelation_inputs(max_n=6, max_d=6), backend=st.sampled_from(HUGE_BACKENDS))
def test_huge_features_in_correlation_mode_give_the_float64_penalty_and_gradient(case, backend):
    """Correlation mode is scale-free: features near 1e30, whose squares overflow float32, still give
    the float64 penalty and gradient (the variance is taken in units of a power of two)."""
    x, opts, kind = case
    # not constant columns: with eps negligible against 1e60, the rounding of their mean is
    # scaled up to unit size, in float64 too (the definition's absolute eps; checked below)
    assume(kind in ("noise", "offset"))
    x = _huge(x)
    assume(not (backend == "triton" and x.dtype == torch.float64))
    note(f"x {tuple(x.shape)} {x.dtype} strides {x.stride()} kind {kind}; {opts}")
    _check_against_float64(x, {**opts, "mode": "correlation"}, [backend])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=budget(0.25), phases=[Phase.explicit, Phase.generate])
@given(case=decorrelation_inputs(max_n=6, max_d=6), backend=st.sampled_from(HUGE_BACKENDS))
def test_huge_features_in_covariance_mode_are_right_or_not_finite(case, backend):
    """Covariance mode is not scale-free: a covariance beyond max float is inf/NaN, never a finite wrong number."""
    x, opts, kind = case
    assume(kind in ("ties", "noise", "constant", "offset"))
    x = _huge(x)
    assume(not (backend == "triton" and x.dtype == torch.float64))
    opts = {**opts, "mode": "covariance"}
    ref = sdecor.decorrelation_loss(x.double(), backend="reference", **opts).item()
    got = sdecor.decorrelation_loss(x, backend=backend, **opts).item()
    note(f"x {tuple(x.shape)} {opts}: {backend} {got}, float64 {ref}")
    if math.isfinite(got):
        assert abs(got - ref) <= 1e-3 * _scales(x, **opts)[0]


@pytest.mark.parametrize("backend", HUGE_BACKENDS)
@pytest.mark.parametrize(
    "rows, expected",
    [
        ([[1e28, 2e28], [-1e28, 0.0]], 1.0),  # overflowed to a silent 0.0 before the rescaling
        ([[3e38, -3e38], [-3e38, 3e38], [1.0, 2.0]], 1.0),  # beyond 2^126: the unit is capped, still exact
        ([[1.5, 0.25], [-0.5, 1.0], [2.5, -3.0]], None),
        ([[3e30, 1e30], [3e30, -1e30]], 0.0),  # a constant column: Z = 0 there, not 0 * inf
    ],
)
def test_correlation_mode_at_the_ends_of_the_float32_range(backend, rows, expected):
    x = torch.tensor(rows, dtype=torch.float32).requires_grad_(True)
    eps = 1e-5 if expected == 0.0 else 0.0
    loss = sdecor.decorrelation_loss(x, backend=backend, correction=0, eps=eps, reduction="sum")
    loss.backward()
    if x.abs().max() < 1e37:  # near max float the gradient (~1/x) is subnormal and autograd's steps overflow
        assert bool(torch.isfinite(x.grad).all())
    got = loss.item()
    want = sdecor.decorrelation_loss(x.double(), backend="reference", correction=0, eps=eps, reduction="sum").item()
    if expected is not None:
        assert want == pytest.approx(2 * expected, rel=1e-6)  # sum over i != j of M_ij^2 = 2 M_01^2
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("backend", HUGE_BACKENDS)
def test_correlation_mode_is_exactly_invariant_to_power_of_two_scaling(backend):
    """The unit a is a power of two, so scaling x by 2^64 (squares beyond float32) changes nothing, bit for bit."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 11, generator=g) * torch.logspace(-3, 3, 11)
    x = x.requires_grad_(True)
    big = (x.detach() * 2.0**64).requires_grad_(True)
    small_loss = sdecor.decorrelation_loss(x, backend=backend, eps=0.0)
    big_loss = sdecor.decorrelation_loss(big, backend=backend, eps=0.0)
    small_loss.backward()
    big_loss.backward()
    assert small_loss.item() > 0.0
    assert big_loss.item() == small_loss.item()
    assert torch.equal(big.grad * 2.0**64, x.grad)


# ----------------------------------------------------------------------------- bad input

# name -> (build(x) -> (args, kwargs), the argument the message must name)
BAD = {
    "x not a tensor": (lambda x: ((x.tolist(),), {}), "x"),
    "x integer": (lambda x: ((x.to(torch.int32),), {}), "x"),
    "x 1-D": (lambda x: ((x[:, 0],), {}), "x"),
    "x 0-dim": (lambda x: ((x[0, 0],), {}), "x"),
    "x no samples": (lambda x: ((x[:0],), {}), "x"),
    "x one sample, unbiased": (lambda x: ((x[:1],), {"correction": 1}), "x"),
    "groups not dividing D": (lambda x: ((x,), {"groups": x.shape[1] + 1}), "groups"),
    "groups one feature each": (lambda x: ((x,), {"groups": x.shape[1]}), "groups"),
    "groups zero": (lambda x: ((x,), {"groups": 0}), "groups"),
    "groups bool": (lambda x: ((x,), {"groups": True}), "groups"),
    "groups float": (lambda x: ((x,), {"groups": 1.0}), "groups"),
    "mode unknown": (lambda x: ((x,), {"mode": "cov"}), "mode"),
    "mode not a str": (lambda x: ((x,), {"mode": 1}), "mode"),
    "reduction unknown": (lambda x: ((x,), {"reduction": "none"}), "reduction"),
    "correction negative": (lambda x: ((x,), {"correction": -1}), "correction"),
    "correction float": (lambda x: ((x,), {"correction": 1.0}), "correction"),
    "eps negative": (lambda x: ((x,), {"eps": -1e-5}), "eps"),
    "eps NaN": (lambda x: ((x,), {"eps": float("nan")}), "eps"),
    "eps inf": (lambda x: ((x,), {"eps": float("inf")}), "eps"),
    "eps string": (lambda x: ((x,), {"eps": "1e-5"}), "eps"),
    "backend unknown": (lambda x: ((x,), {"backend": "cuda"}), "backend"),
    "backend triton for float64": (lambda x: ((x.double(),), {"backend": "triton"}), "backend"),
}


@settings(max_examples=budget(1.0))
@given(
    x=st.tuples(st.integers(2, 6), st.sampled_from([2, 4, 6])).flatmap(lambda s: tensors(s, torch.float32)),
    name=st.sampled_from(sorted(BAD)),
    backend=st.sampled_from(["reference", "triton", "auto"]),
)
def test_bad_input_raises_naming_the_argument(x, name, backend):
    build, argument = BAD[name]
    args, kwargs = build(x)
    kwargs = {"backend": backend, **kwargs}
    snap = snapshot(x)
    with pytest.raises((ValueError, TypeError)) as info:
        sdecor.decorrelation_loss(*args, **kwargs)
    assert argument in str(info.value), f"{name}: the message does not name {argument!r}: {info.value}"
    assert_unmodified(snap)
