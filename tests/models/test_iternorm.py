"""IterNorm against the eigendecomposition (ZCA) reference, running statistics, gradcheck, drop-in use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdecor.models.iternorm import IterNorm, iterative_whitening_matrix, replace_last_batchnorm, zca_whitening_matrix

F64 = torch.float64


def _features(n, g, spread, seed=0, groups=1):
    """(n, groups*g) samples whose per-group covariance has eigenvalues spread over [1, spread^2]."""
    gen = torch.Generator().manual_seed(seed)
    cols = []
    for _ in range(groups):
        Q, _ = torch.linalg.qr(torch.randn(g, g, dtype=F64, generator=gen))
        scale = torch.linspace(1.0, spread, g, dtype=F64)
        cols.append((torch.randn(n, g, dtype=F64, generator=gen) * scale) @ Q.T + 2.0)
    return torch.cat(cols, dim=1)


def _zca(x2d, groups, eps):
    """Group-wise ZCA whitening of (m, C) samples: Sigma^-1/2 (x - mean) by eigh."""
    m, C = x2d.shape
    g = C // groups
    out = []
    for k in range(groups):
        xc = x2d[:, k * g : (k + 1) * g] - x2d[:, k * g : (k + 1) * g].mean(0)
        sigma = xc.T @ xc / m + eps * torch.eye(g, dtype=x2d.dtype)
        out.append(xc @ zca_whitening_matrix(sigma))  # symmetric W
    return torch.cat(out, dim=1)


def _cov_error(y2d, groups):
    m, C = y2d.shape
    g = C // groups
    yc = y2d - y2d.mean(0)
    err = 0.0
    for k in range(groups):
        blk = yc[:, k * g : (k + 1) * g]
        err = max(err, float((blk.T @ blk / m - torch.eye(g, dtype=y2d.dtype)).abs().max()))
    return err


def test_converges_to_zca_as_T_grows():
    x = _features(512, 8, spread=1.8)  # cond(Sigma) ~ 3.2 < 9: the Newton iteration is stable
    zca = _zca(x, 1, 1e-5)
    errors, cov_errors = [], []
    for T in (0, 1, 3, 5, 10, 30):
        y = IterNorm(8, T=T, affine=False).double()(x)
        errors.append(float((y - zca).norm() / zca.norm()))
        cov_errors.append(_cov_error(y, 1))
    assert all(a > b for a, b in zip(errors[:-2], errors[1:-1])), errors
    assert errors[-1] < 1e-10 and errors[-2] < 1e-8, errors
    assert cov_errors[-1] < 1e-4, cov_errors  # eps = 1e-5 on variances ~ 1..3
    # T = 5 is an approximation: a few per cent from ZCA on this well-conditioned input
    assert 1e-4 < errors[3] < 0.1, errors


def test_groups_and_feature_maps_match_groupwise_zca():
    x2d = _features(4 * 5 * 6, 4, spread=1.5, seed=3, groups=3)  # C = 12, G = 3 groups of 4
    x = x2d.reshape(4, 5, 6, 12).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W), samples N*H*W
    norm = IterNorm(12, num_groups=3, T=30, affine=False).double()
    y = norm(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y2d = y.permute(0, 2, 3, 1).reshape(-1, 12)
    zca = _zca(x2d, 3, 1e-5)
    assert float((y2d - zca).norm() / zca.norm()) < 1e-10
    assert IterNorm(12, num_channels=4).num_groups == 3


def test_whitening_matrix_matches_inverse_sqrt():
    sigma = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    W = iterative_whitening_matrix(sigma, 25)
    torch.testing.assert_close(W @ sigma @ W, torch.eye(2, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(W, zca_whitening_matrix(sigma), rtol=0, atol=1e-12)


def test_running_statistics_and_eval():
    x = _features(64, 6, spread=2.0, seed=5)
    norm = IterNorm(6, num_groups=2, T=5, momentum=1.0).double()
    y_train = norm(x)
    norm.eval()
    torch.testing.assert_close(norm(x), y_train, rtol=1e-10, atol=1e-10)  # momentum 1: running = batch
    # momentum 0.1: running = 0.9 * running + 0.1 * batch
    norm = IterNorm(6, T=5, momentum=0.1, affine=False).double()
    norm(x)
    xc = x - x.mean(0)
    wm = iterative_whitening_matrix(xc.T @ xc / 64 + 1e-5 * torch.eye(6, dtype=F64), 5)
    torch.testing.assert_close(norm.running_mean[0, :, 0], 0.1 * x.mean(0))
    torch.testing.assert_close(norm.running_wm[0], 0.9 * torch.eye(6, dtype=F64) + 0.1 * wm)


def test_affine_is_per_channel():
    x = torch.randn(32, 4, 3, 3, dtype=F64)
    norm = IterNorm(4, num_groups=2).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        norm.bias.copy_(torch.tensor([0.0, -1.0, 1.0, 5.0]))
    ref = IterNorm(4, num_groups=2, affine=False).double()(x)
    torch.testing.assert_close(norm(x), ref * norm.weight.view(1, 4, 1, 1) + norm.bias.view(1, 4, 1, 1))


@pytest.mark.parametrize("shape,groups", [((6, 4), 2), ((3, 4, 2, 1), 1)])
def test_gradcheck(shape, groups):
    torch.manual_seed(0)
    norm = IterNorm(shape[1], num_groups=groups, T=3).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: norm(t), (x,), eps=1e-6, atol=1e-6)
    # weight and bias gradients too
    w, b = norm.weight.detach().clone().requires_grad_(), norm.bias.detach().clone().requires_grad_()

    def call(ww, bb):
        return torch.func.functional_call(norm, {"weight": ww, "bias": bb}, (x.detach(),))

    assert torch.autograd.gradcheck(call, (w, b), eps=1e-6, atol=1e-6)


def test_drop_in_for_batchnorm():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
    )
    name = replace_last_batchnorm(net, T=5, num_groups=2)
    assert name == "4" and isinstance(net[4], IterNorm) and isinstance(net[1], nn.BatchNorm2d)
    x = torch.randn(4, 3, 8, 8)
    y = net(x)
    assert y.shape == (4, 8, 6, 6) and y.dtype == torch.float32
    y.square().mean().backward()
    assert net[4].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()
    # low precision input keeps its dtype (computed in float32)
    out = IterNorm(8)(torch.randn(16, 8).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    with pytest.raises(ValueError, match="no BatchNorm"):
        replace_last_batchnorm(nn.Sequential(nn.Linear(2, 2)))


def test_validation():
    with pytest.raises(ValueError, match="num_groups"):
        IterNorm(6, num_groups=4)
    with pytest.raises(ValueError, match="num_channels"):
        IterNorm(6, num_channels=4)
    with pytest.raises(ValueError, match="not both"):
        IterNorm(6, num_groups=2, num_channels=3)
    with pytest.raises(ValueError, match="expects input"):
        IterNorm(6)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="more than 1 value"):
        IterNorm(6)(torch.randn(1, 6))
