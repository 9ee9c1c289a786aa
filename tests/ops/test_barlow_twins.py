"""Barlow Twins reference: against the original's formula (float64, 1e-12), both routes, gradcheck, API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sdecor.ops as ops
from sdecor.ops import BarlowTwinsLoss, barlow_twins_loss, barlow_twins_reference
from sdecor.ops.barlow_twins.reference import select_route

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Barlow Twins' own formula (facebookresearch/barlowtwins, main.py: BarlowTwins.forward and
# off_diagonal), single process (its all_reduce sums C over the ranks), float64
# ----------------------------------------------------------------------------------------------
def off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def original_loss(z1, z2, lambd, batch_size=None):
    bn = nn.BatchNorm1d(z1.shape[1], affine=False).to(z1)  # self.bn, in training mode
    c = bn(z1).T @ bn(z2)
    c.div_(batch_size or z1.shape[0])
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    return on_diag + lambd * off_diag


def views(n, D, seed=0, dtype=F64, correlated=True):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, D, dtype=F64, generator=gen) * 2.0 + 1.5
    z2 = torch.randn(n, D, dtype=F64, generator=gen) + 0.5
    if correlated:  # the two views share most of their signal, as augmentations of one image do
        z2 = z2 + 3.0 * z1
    return z1.to(dtype), z2.to(dtype)


SHAPES = [(2, 3), (3, 2), (16, 5), (5, 16), (12, 12), (11, 12), (64, 40), (24, 200)]


@pytest.mark.parametrize("n,D", SHAPES)
@pytest.mark.parametrize("lambd", [0.0051, 0.0, 1.0, 0.3])
@pytest.mark.parametrize("route", ["D", "N", None])
def test_reference_equals_the_original_formula(n, D, lambd, route):
    z1, z2 = views(n, D, seed=n * 100 + D)
    ref = original_loss(z1, z2, lambd)
    ours = barlow_twins_reference(z1, z2, lambd=lambd, route=route)
    assert ours.dtype == F64 and ours.shape == ()
    assert abs(float(ours) - float(ref)) <= 1e-12 * abs(float(ref)), (float(ours), float(ref))


@pytest.mark.parametrize("n,D", [(16, 5), (5, 16), (24, 200)])
@pytest.mark.parametrize("route", ["D", "N"])
def test_gradients_equal_the_original_formula(n, D, route):
    z1, z2 = views(n, D, seed=7)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    original_loss(a1, a2, 0.0051).backward()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    barlow_twins_reference(b1, b2, route=route).backward()
    torch.testing.assert_close(b1.grad, a1.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(b2.grad, a2.grad, rtol=1e-10, atol=1e-13)


def test_closed_form_gradient_of_the_module_docstring():
    """dL/dZ1 = s1 (B Gamma^T / n - A t), the formula the fused kernels implement."""
    n, D, lambd, eps = 9, 6, 0.2, 1e-5
    z1, z2 = views(n, D, seed=3)
    x1 = z1.clone().requires_grad_()
    barlow_twins_reference(x1, z2, lambd=lambd, eps=eps).backward()
    s1 = torch.rsqrt(z1.var(0, unbiased=False) + eps)
    A = (z1 - z1.mean(0)) * s1
    B = (z2 - z2.mean(0)) * torch.rsqrt(z2.var(0, unbiased=False) + eps)
    C = A.T @ B / n
    gamma = 2 * (1 - lambd) * torch.diagonal(C) - 2
    Gamma = 2 * lambd * C + torch.diag(gamma)
    W = B @ Gamma.T / n
    t = (W * A).mean(0)
    torch.testing.assert_close(x1.grad, s1 * (W - A * t), rtol=1e-10, atol=1e-13)
    # route N form of W: 2 lambd K_B A / n^2 + B gamma / n
    torch.testing.assert_close(W, 2 * lambd * (B @ B.T) @ A / n**2 + B * gamma / n, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n,D,route", [(7, 4, "D"), (4, 7, "N"), (5, 5, "D"), (5, 5, "N")])
def test_gradcheck_float64(n, D, route):
    z1, z2 = views(n, D, seed=11)
    z1.requires_grad_()
    z2.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_reference(a, b, lambd=0.3, route=route), (z1, z2))
    assert torch.autograd.gradgradcheck(lambda a, b: barlow_twins_reference(a, b, lambd=0.3, route=route), (z1, z2))


def test_route_selection_and_the_paper_setting():
    assert select_route(256, 8192) == "N" and select_route(8192, 8192) == "D" and select_route(100, 10) == "D"
    # n < D, as in the paper (D = 8192 projector outputs): the n x n route is exact
    z1, z2 = views(32, 512, seed=5)
    ref = original_loss(z1, z2, 0.0051)
    assert abs(float(barlow_twins_reference(z1, z2, route="N")) - float(ref)) <= 1e-12 * float(ref)


def test_public_api_and_module():
    z1, z2 = views(10, 6, seed=2)
    ref = original_loss(z1, z2, 0.0051)
    assert abs(float(barlow_twins_loss(z1, z2)) - float(ref)) <= 1e-12 * float(ref)
    assert abs(float(BarlowTwinsLoss(lambd=0.5)(z1, z2)) - float(original_loss(z1, z2, 0.5))) <= 1e-12 * float(ref)
    assert "lambd=0.5" in repr(BarlowTwinsLoss(lambd=0.5))
    assert ops.barlow_twins_loss is barlow_twins_loss
    # float32 / bfloat16 views are computed in float32
    out = barlow_twins_loss(z1.float(), z2.float(), backend="reference")
    assert out.dtype == torch.float32 and out.item() == pytest.approx(float(ref), rel=1e-5)
    assert barlow_twins_loss(z1.bfloat16(), z2.bfloat16(), backend="reference").dtype == torch.float32
    # identical views: C_ii = var / (var + eps), so the invariance term alone is ~ (eps / var)^2 per feature
    assert float(barlow_twins_loss(z1, z1, lambd=0.0)) < 1e-10


def test_validation():
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="z2 must have the shape"):
        barlow_twins_loss(z, torch.randn(8, 5))
    with pytest.raises(TypeError, match="dtype"):
        barlow_twins_loss(z, z.double())
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        barlow_twins_loss(z.reshape(8, 2, 2), z.reshape(8, 2, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        barlow_twins_loss(z[:1], z[:1])
    with pytest.raises(ValueError, match="lambd"):
        barlow_twins_loss(z, z, lambd=-1.0)
    with pytest.raises(TypeError, match="z1"):
        barlow_twins_loss(z.long(), z)
    with pytest.raises(ValueError, match="backend"):
        barlow_twins_loss(z, z, backend="cuda")
    with pytest.raises(ValueError, match="not initialised"):
        barlow_twins_loss(z, z, process_group=object())
