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


# ----------------------------------------------------------------------------------------------
# A literal port of the IterNorm authors' PyTorch implementation (huangleiBuaa/IterNorm-pytorch,
# extension/normailzation/iterative_normalization.py: iterative_normalization_py and IterNorm),
# in float64. Only the calls that torch 2 no longer accepts are rewritten: the positional
# baddbmm(beta, input, alpha, b1, b2) becomes baddbmm(input, b1, b2, beta=, alpha=), and
# ctx.saved_variables becomes ctx.saved_tensors. Their hand-written backward is kept as is.
# ----------------------------------------------------------------------------------------------
class _PortFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *args):
        X, running_mean, running_wmat, nc, ctx.T, eps, momentum, training = args
        ctx.g = X.size(1) // nc
        x = X.transpose(0, 1).contiguous().view(ctx.g, nc, -1)
        _, d, m = x.size()
        saved = []
        if training:
            mean = x.mean(-1, keepdim=True)
            xc = x - mean
            saved.append(xc)
            P = [None] * (ctx.T + 1)
            P[0] = torch.eye(d).to(X).expand(ctx.g, d, d)
            Sigma = torch.baddbmm(P[0], xc, xc.transpose(1, 2), beta=eps, alpha=1.0 / m)
            rTr = (Sigma * P[0]).sum((1, 2), keepdim=True).reciprocal_()
            saved.append(rTr)
            Sigma_N = Sigma * rTr
            saved.append(Sigma_N)
            for k in range(ctx.T):
                P[k + 1] = torch.baddbmm(P[k], torch.matrix_power(P[k], 3), Sigma_N, beta=1.5, alpha=-0.5)
            saved.extend(P)
            wm = P[ctx.T].mul_(rTr.sqrt())
            running_mean.copy_(momentum * mean + (1.0 - momentum) * running_mean)
            running_wmat.copy_(momentum * wm + (1.0 - momentum) * running_wmat)
        else:
            xc = x - running_mean
            wm = running_wmat
        xn = wm.matmul(xc)
        Xn = xn.view(X.size(1), X.size(0), *X.size()[2:]).transpose(0, 1).contiguous()
        ctx.save_for_backward(*saved)
        return Xn

    @staticmethod
    def backward(ctx, *grad_outputs):
        (grad,) = grad_outputs
        saved = ctx.saved_tensors
        xc = saved[0]
        rTr = saved[1]
        sn = saved[2].transpose(-2, -1)
        P = list(saved[3:])
        g, d, m = xc.size()
        g_ = grad.transpose(0, 1).contiguous().view_as(xc)
        g_wm = g_.matmul(xc.transpose(-2, -1))
        g_P = g_wm * rTr.sqrt()
        wm = P[ctx.T]
        g_sn = 0
        for k in range(ctx.T, 1, -1):
            P[k - 1].transpose_(-2, -1)
            P2 = P[k - 1].matmul(P[k - 1])
            g_sn += P2.matmul(P[k - 1]).matmul(g_P)
            g_tmp = g_P.matmul(sn)
            g_P.baddbmm_(g_tmp, P2, beta=1.5, alpha=-0.5)
            g_P.baddbmm_(P2, g_tmp, beta=1, alpha=-0.5)
            g_P.baddbmm_(P[k - 1].matmul(g_tmp), P[k - 1], beta=1, alpha=-0.5)
        g_sn += g_P
        g_tr = ((-sn.matmul(g_sn) + g_wm.transpose(-2, -1).matmul(wm)) * P[0]).sum((1, 2), keepdim=True) * P[0]
        g_sigma = (g_sn + g_sn.transpose(-2, -1) + 2.0 * g_tr) * (-0.5 / m * rTr)
        g_x = torch.baddbmm(wm.matmul(g_ - g_.mean(-1, keepdim=True)), g_sigma, xc)
        grad_input = g_x.view(grad.size(1), grad.size(0), *grad.size()[2:]).transpose(0, 1).contiguous()
        return grad_input, None, None, None, None, None, None, None


class _PortIterNorm(nn.Module):
    """Their IterNorm module (group-count logic, parameter shapes and buffers as theirs)."""

    def __init__(self, num_features, num_groups=1, num_channels=None, T=5, dim=4, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        self.T, self.eps, self.momentum, self.affine = T, eps, momentum, affine
        if num_channels is None:
            num_channels = (num_features - 1) // num_groups + 1
        num_groups = num_features // num_channels
        while num_features % num_channels != 0:
            num_channels //= 2
            num_groups = num_features // num_channels
        self.num_groups, self.num_channels = num_groups, num_channels
        shape = [1] * dim
        shape[1] = num_features
        if affine:
            self.weight = nn.Parameter(torch.ones(*shape))
            self.bias = nn.Parameter(torch.zeros(*shape))
        self.register_buffer("running_mean", torch.zeros(num_groups, num_channels, 1))
        # theirs: torch.eye(nc).expand(G, nc, nc), which their running update can copy_ into
        # once .cuda()/.double() has materialised it; the port materialises it at once
        self.register_buffer("running_wm", torch.eye(num_channels).expand(num_groups, -1, -1).clone())

    def forward(self, X):
        X_hat = _PortFn.apply(
            X, self.running_mean, self.running_wm, self.num_channels, self.T, self.eps, self.momentum, self.training
        )
        return X_hat * self.weight + self.bias if self.affine else X_hat


def _pair(C, groups, shape_dim, seed=0):
    """(ours, port) in float64 with the same random affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    ours = IterNorm(C, num_groups=groups, T=5).double()
    port = _PortIterNorm(C, num_groups=groups, T=5, dim=shape_dim).double()
    with torch.no_grad():
        ours.weight.copy_(torch.rand(C, dtype=F64, generator=gen) + 0.5)
        ours.bias.copy_(torch.randn(C, dtype=F64, generator=gen))
        port.weight.copy_(ours.weight.view(port.weight.shape))
        port.bias.copy_(ours.bias.view(port.bias.shape))
    return ours, port


PORT_SHAPES = [((32, 6), 1), ((32, 6), 2), ((4, 8, 3, 5), 2), ((5, 4, 3, 3), 1)]


@pytest.mark.parametrize("shape,groups", PORT_SHAPES)
def test_matches_a_literal_port_of_the_authors_code(shape, groups):
    ours, port = _pair(shape[1], groups, len(shape))
    assert port.num_groups == ours.num_groups and port.num_channels == ours.num_channels
    gen = torch.Generator().manual_seed(1)
    for _step in range(3):  # training steps: output, input gradient, running statistics
        x = (torch.randn(*shape, dtype=F64, generator=gen) * 2 + 1).requires_grad_()
        x_port = x.detach().clone().requires_grad_()
        upstream = torch.randn(*shape, dtype=F64, generator=gen)
        y, y_port = ours(x), port(x_port)
        torch.testing.assert_close(y, y_port, rtol=1e-12, atol=1e-12)
        (y * upstream).sum().backward()
        (y_port * upstream).sum().backward()  # their hand-written backward
        torch.testing.assert_close(x.grad, x_port.grad, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(ours.weight.grad, port.weight.grad.reshape(-1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.running_mean, port.running_mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ours.running_wm, port.running_wm, rtol=1e-12, atol=1e-14)
    # eval mode: the running statistics, same output
    ours.eval()
    port.eval()
    x = torch.randn(*shape, dtype=F64, generator=gen)
    torch.testing.assert_close(ours(x), port(x), rtol=1e-12, atol=1e-12)


def test_differences_from_the_authors_code_kept_on_purpose():
    # 1. eval-mode backward: ours returns the gradient (y = W (x - mu) is linear in x), theirs raises
    ours, port = _pair(6, 2, 2)
    x = torch.randn(16, 6, dtype=F64)
    ours(x), port(x)  # one training step for non-trivial running statistics
    ours.eval()
    port.eval()
    xo, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(16, 6, dtype=F64)
    (ours(xo) * upstream).sum().backward()
    with pytest.raises((IndexError, RuntimeError)):
        (port(xp) * upstream).sum().backward()
    gw = (upstream * ours.weight).reshape(16, 2, 3).permute(1, 2, 0)  # (G, g, N): dL/dy
    expected = (ours.running_wm.transpose(1, 2) @ gw).permute(2, 0, 1).reshape(16, 6)
    torch.testing.assert_close(xo.grad, expected, rtol=1e-12, atol=1e-12)
    # 2. a group count that does not divide the channels: theirs silently uses another one, ours raises
    assert _PortIterNorm(6, num_groups=4).num_groups == 3  # 3 groups of 2 channels
    assert _PortIterNorm(10, num_groups=4).num_groups == 10  # 10 groups of 1 channel: nothing is decorrelated
    with pytest.raises(ValueError, match="num_groups"):
        IterNorm(6, num_groups=4)
    # 3. affine parameter shapes: ours (C,), theirs (1, C, 1, 1) for dim=4 (or [1] * dim with C at dim 1)
    assert IterNorm(6).weight.shape == (6,) and _PortIterNorm(6).weight.shape == (1, 6, 1, 1)
