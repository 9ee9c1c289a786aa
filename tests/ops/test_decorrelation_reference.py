"""The pure-torch reference of the decorrelation penalty against an independent NumPy closed
form, both routes against each other, float64 gradcheck, the public API's validation."""

import numpy as np
import pytest
import torch

import sdecor
from sdecor.ops.decorrelation.reference import decorrelation_reference


def numpy_penalty(x: np.ndarray, mode: str, reduction: str, correction: int, groups: int, eps: float) -> float:
    """Loop-based closed form: build each group's covariance/correlation block explicitly."""
    if x.ndim > 2:
        x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    n, d = x.shape
    g = d // groups
    total = 0.0
    for b in range(groups):
        block = x[:, b * g : (b + 1) * g].astype(np.float64)
        centred = block - block.mean(axis=0)
        cov = centred.T @ centred / (n - correction)
        if mode == "correlation":
            scale = 1.0 / np.sqrt(np.diag(cov) + eps)
            cov = cov * scale[:, None] * scale[None, :]
        off = cov - np.diag(np.diag(cov))
        total += float((off**2).sum())
    if reduction == "mean":
        total /= groups * g * (g - 1)
    return total


CASES = [
    # (shape, groups)
    ((37, 5), 1),  # n > D
    ((6, 23), 1),  # n < D: Gram route
    ((19, 12), 3),  # groups, n > g
    ((3, 2, 5, 7), 1),  # 4-D: 70 samples of 2 features
    ((2, 9, 3, 1), 3),  # 4-D, n = 6 < g? g = 3: route D; groups over channels
    ((4, 40), 4),  # n < g = 10: Gram route with groups
]


@pytest.mark.parametrize("shape,groups", CASES)
@pytest.mark.parametrize("mode", ["covariance", "correlation"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("correction", [0, 1])
def test_reference_matches_numpy_closed_form(shape, groups, mode, reduction, correction):
    gen = torch.Generator().manual_seed(hash((shape, groups)) % 2**31)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + 3.0
    got = sdecor.decorrelation_loss(
        x, mode=mode, reduction=reduction, correction=correction, groups=groups, eps=1e-5, backend="reference"
    )
    want = numpy_penalty(x.numpy(), mode, reduction, correction, groups, 1e-5)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("mode", ["covariance", "correlation"])
@pytest.mark.parametrize("shape,groups", [((9, 14), 1), ((30, 14), 2), ((5, 12), 3)])
def test_routes_agree_in_value_and_gradient(mode, shape, groups):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    loss_d = decorrelation_reference(x, mode=mode, reduction="sum", groups=groups, route="D")
    (grad_d,) = torch.autograd.grad(loss_d, x)
    loss_n = decorrelation_reference(x, mode=mode, reduction="sum", groups=groups, route="N")
    (grad_n,) = torch.autograd.grad(loss_n, x)
    torch.testing.assert_close(loss_n, loss_d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_n, grad_d, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["covariance", "correlation"])
@pytest.mark.parametrize("shape,groups", [((7, 4), 1), ((3, 8), 2), ((2, 4, 2, 3), 2)])
def test_gradcheck_float64(mode, shape, groups):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: sdecor.decorrelation_loss(t, mode=mode, groups=groups, backend="reference"), (x,)
    )


@pytest.mark.parametrize("mode", ["covariance", "correlation"])
def test_closed_form_gradient(mode):
    """dP/dX = (4/n') s (Z Moff - Z r): the formula the fused kernels implement."""
    n, d, eps = 11, 6, 1e-5
    x = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(decorrelation_reference(x, mode=mode, reduction="sum", eps=eps), x)
    xc = x.detach() - x.detach().mean(0)
    n_prime = n - 1
    if mode == "correlation":
        s = torch.rsqrt(xc.square().sum(0) / n_prime + eps)
    else:
        s = torch.ones(d, dtype=torch.float64)
    z = xc * s
    m = z.T @ z / n_prime
    m_off = m - torch.diag(torch.diag(m))
    r = m_off.square().sum(1) if mode == "correlation" else torch.zeros(d, dtype=torch.float64)
    closed = 4.0 / n_prime * s * (z @ m_off - z * r)
    torch.testing.assert_close(auto, closed, rtol=1e-9, atol=1e-12)


def test_low_precision_input_is_accumulated_in_float32_and_centred():
    x64 = torch.randn(64, 8, dtype=torch.float64) + 1000.0
    want = decorrelation_reference(x64)
    for dtype in (torch.float16, torch.bfloat16):
        got = sdecor.decorrelation_loss(x64.to(dtype), backend="reference")
        assert got.dtype == torch.float32
        ref_rounded = decorrelation_reference(x64.to(dtype).double())
        torch.testing.assert_close(got.double(), ref_rounded, rtol=1e-4, atol=1e-6)
    assert want.item() < 0.2  # independent features: small correlation at n=64


def test_correlation_is_scale_invariant_and_covariance_is_not():
    x = torch.randn(50, 6, dtype=torch.float64)
    scale = torch.tensor([1.0, 10.0, 0.1, 3.0, 7.0, 0.5], dtype=torch.float64)
    corr = sdecor.decorrelation_loss(x, eps=0.0)
    corr_scaled = sdecor.decorrelation_loss(x * scale, eps=0.0)
    assert corr_scaled.item() == pytest.approx(corr.item(), rel=1e-10)
    cov = sdecor.decorrelation_loss(x, mode="covariance")
    cov_scaled = sdecor.decorrelation_loss(x * 0.1, mode="covariance")
    assert cov_scaled.item() == pytest.approx(cov.item() * 1e-4, rel=1e-10)


def test_constant_feature_gives_finite_loss_and_gradient():
    x = torch.randn(20, 5, dtype=torch.float64)
    x[:, 2] = 4.0
    x.requires_grad_(True)
    loss = sdecor.decorrelation_loss(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_perfectly_correlated_features_reach_the_maximum():
    base = torch.randn(30, 1, dtype=torch.float64)
    x = torch.cat([base, 2 * base, -base], dim=1)  # correlation +-1 everywhere
    loss = sdecor.decorrelation_loss(x, eps=0.0, reduction="mean")
    assert loss.item() == pytest.approx(1.0, rel=1e-10)


def test_rank_lower_bound_with_small_batches():
    """n < D: sum_{i != j} rho_ij^2 >= D^2 / (n - 1) - D (the Gram matrix has rank <= n - 1)."""
    n, d = 5, 16
    x = torch.randn(n, d, dtype=torch.float64)
    penalty = sdecor.decorrelation_loss(x, reduction="sum", eps=0.0)
    assert penalty.item() >= d * d / (n - 1) - d - 1e-9


def test_module_matches_function_and_weight():
    x = torch.randn(12, 6)
    mod = sdecor.DecorrelationLoss(mode="covariance", reduction="sum", correction=0, weight=0.5)
    assert mod(x).item() == pytest.approx(
        0.5 * sdecor.decorrelation_loss(x, mode="covariance", reduction="sum", correction=0).item(), rel=1e-6
    )
    assert "covariance" in repr(mod)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: sdecor.decorrelation_loss([[1.0, 2.0]]), TypeError, "x must be a torch.Tensor"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5)), ValueError, "at least 2 dimensions"),
        (lambda: sdecor.decorrelation_loss(torch.randint(0, 3, (5, 4))), TypeError, "floating dtype"),
        (lambda: sdecor.decorrelation_loss(torch.randn(1, 4)), ValueError, "at least correction \\+ 1 = 2 samples"),
        (lambda: sdecor.decorrelation_loss(torch.randn(2, 4), correction=2), ValueError, "correction \\+ 1 = 3"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5, 6), groups=4), ValueError, "groups must divide"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5, 6), groups=6), ValueError, "at least 2 features"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5, 6), mode="whiten"), ValueError, "mode must be one of"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5, 6), reduction="max"), ValueError, "reduction must be one of"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5, 6), backend="cuda"), ValueError, "backend must be one of"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5, 6), groups=1.5), TypeError, "groups must be an int"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5, 6), correction=-1), ValueError, "correction must be >= 0"),
        (lambda: sdecor.decorrelation_loss(torch.randn(5, 6), eps=-1.0), ValueError, "eps must be >= 0"),
        (
            lambda: sdecor.decorrelation_loss(torch.randn(5, 6, dtype=torch.float64), backend="triton"),
            ValueError,
            "backend='triton' cannot run",
        ),
        (lambda: sdecor.DecorrelationLoss(mode="nope"), ValueError, "mode must be one of"),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_compile_fullgraph_reference():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())

    def step(x):
        return sdecor.decorrelation_loss(model(x), backend="reference")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(16, 6)
    torch.testing.assert_close(compiled(x), step(x), rtol=1e-5, atol=1e-6)
