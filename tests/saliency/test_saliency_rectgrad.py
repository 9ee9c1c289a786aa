"""RectGrad / NoBiasRectGrad: the percentile rule by hand, the padding trick, hook hygiene."""

import numpy as np
import pytest
import torch
from torch import nn

from sdecor.saliency import Gradient, GuidedBackprop, NoBiasRectGrad, RectGrad
from sdecor.saliency.rectgrad import nearest_rank_percentile, padding_border_mask


def identity_relu_net(upstream):
    """x (6) -> identity -> ReLU -> Linear(6 -> 1) with weights ``upstream``: the ReLU's input is x
    and the gradient arriving at its output is ``upstream``."""
    lin1 = nn.Linear(6, 6, bias=False)
    lin2 = nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.eye(6))
        lin2.weight.copy_(torch.tensor([upstream]))
    return nn.Sequential(lin1, nn.ReLU(), lin2)


def test_percentile_rule_by_hand():
    G = [1.0, -1.0, 5.0, 2.0, 4.0, 0.25]
    model = identity_relu_net(G)
    x = torch.tensor([[1.0, 2.0, -1.0, 3.0, 0.5, 4.0], [2.0, 1.0, 1.0, -2.0, 1.0, 1.0]])
    # sample 0: o = (1, 2, 0, 3, .5, 4), R = o * G = (1, -2, 0, 6, 2, 1); sorted (-2, 0, 1, 1, 2, 6)
    #   q = 50: nearest rank round(5 * 0.5) = 2 (ties to even) -> tau = 1 -> keep R > 1: units 3, 4
    # sample 1: o = (2, 1, 1, 0, 1, 1), R = (2, -1, 5, 0, 4, .25); sorted (-1, 0, .25, 2, 4, 5)
    #   tau = .25 -> keep units 0, 2, 4 (a per-sample threshold)
    grad = torch.tensor([[0.0, 0.0, 0.0, 2.0, 4.0, 0.0], [1.0, 0.0, 5.0, 0.0, 4.0, 0.0]])
    torch.testing.assert_close(NoBiasRectGrad(model, q=50).attribute(x, 0), grad)
    torch.testing.assert_close(RectGrad(model, q=50).attribute(x, 0), grad * x)
    torch.testing.assert_close(RectGrad(model, q=50, multiply_by_inputs=False).attribute(x, 0), grad)
    # q = 80: rank round(4.0) = 4 -> tau = 2 (sample 0), 4 (sample 1): keep unit 3, resp. unit 2
    grad80 = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(NoBiasRectGrad(model, q=80).attribute(x, 0), grad80)
    # q = 98 (default): rank round(4.9) = 5 -> tau = max(R): nothing passes
    torch.testing.assert_close(RectGrad(model).attribute(x, 0), torch.zeros_like(x))
    # q = 0: tau = min(R); everything above it and active passes
    grad0 = torch.tensor([[1.0, 0.0, 0.0, 2.0, 4.0, 0.25], [1.0, 0.0, 5.0, 0.0, 4.0, 0.25]])
    torch.testing.assert_close(NoBiasRectGrad(model, q=0).attribute(x, 0), grad0)
    # inactive units never pass, even when tau < 0 (R = 0 > tau): sample 0's unit 2, sample 1's unit 3
    assert grad0[0, 2] == 0 and grad0[1, 3] == 0


def reference_rectgrad(x, w1, w2, w3, q):
    """Two ReLU layers, backward written out: x -> w1 -> relu -> w2 -> relu -> w3 (one logit)."""
    a1 = x @ w1.t()
    o1 = a1.clamp_min(0)
    a2 = o1 @ w2.t()
    o2 = a2.clamp_min(0)

    def rule(o, g):
        r = o * g
        tau = torch.tensor(np.percentile(r.numpy(), q, axis=1, method="nearest"))[:, None]
        return g * ((r > tau) & (o > 0))

    g_o2 = w3.expand_as(o2)
    g_a2 = rule(o2, g_o2)
    g_o1 = g_a2 @ w2
    g_a1 = rule(o1, g_o1)
    return g_a1 @ w1


@pytest.mark.parametrize("q", [0, 30, 50, 75, 98])
def test_two_layer_network_matches_written_out_backward(q):
    torch.manual_seed(0)
    w1, w2, w3 = (
        torch.randn(9, 4, dtype=torch.float64),
        torch.randn(11, 9, dtype=torch.float64),
        torch.randn(1, 11, dtype=torch.float64),
    )
    model = nn.Sequential(
        nn.Linear(4, 9, bias=False),
        nn.ReLU(),
        nn.Linear(9, 11, bias=False),
        nn.ReLU(inplace=True),
        nn.Linear(11, 1, bias=False),
    ).double()
    with torch.no_grad():
        model[0].weight.copy_(w1)
        model[2].weight.copy_(w2)
        model[4].weight.copy_(w3)
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = reference_rectgrad(x, w1, w2, w3, q)
    torch.testing.assert_close(NoBiasRectGrad(model, q=q).attribute(x, 0), expected)
    torch.testing.assert_close(RectGrad(model, q=q).attribute(x, 0), expected * x)


def test_nearest_rank_percentile_matches_numpy():
    torch.manual_seed(0)
    values = torch.randn(4, 37, dtype=torch.float64)
    for q in (0, 10, 50, 73.3, 98, 100):
        ref = np.percentile(values.numpy(), q, axis=1, method="nearest")
        torch.testing.assert_close(nearest_rank_percentile(values, q)[:, 0], torch.tensor(ref))


def test_relu_module_called_twice_is_rectified_each_time():
    torch.manual_seed(0)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    twice = Twice().double()
    unrolled = nn.Sequential(twice.a, nn.ReLU(), twice.b, nn.ReLU(), twice.c)
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(RectGrad(twice, q=40).attribute(x, 1), RectGrad(unrolled, q=40).attribute(x, 1))
    assert twice.relu.inplace


def test_q_zero_percentile_keeps_more_than_default():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 36, 3),
    )
    x = torch.rand(2, 3, 6, 6)
    sparse = NoBiasRectGrad(model).attribute(x, 0)
    dense = NoBiasRectGrad(model, q=0, padding_trick=False).attribute(x, 0)
    assert (sparse != 0).sum() < (dense != 0).sum()


# ----------------------------------------------------------------------------------------------
# padding trick
# ----------------------------------------------------------------------------------------------
def test_padding_border_mask_shapes():
    m = padding_border_mask(nn.Conv2d(1, 1, 3, padding=1), (5, 5), "cpu", torch.float32)[0, 0]
    expected = torch.zeros(5, 5)
    expected[1:-1, 1:-1] = 1  # the original code's one-pixel border for 3x3 'SAME'
    torch.testing.assert_close(m, expected)
    m = padding_border_mask(nn.Conv2d(1, 1, 5, padding=2), (7, 7), "cpu", torch.float32)[0, 0]
    assert m.sum() == 9 and m[2:5, 2:5].all()
    m = padding_border_mask(nn.Conv2d(1, 1, 3, padding="same"), (5, 5), "cpu", torch.float32)[0, 0]
    torch.testing.assert_close(m, expected)
    # stride 2: output i reads inputs 2i-1 .. 2i+1 of 0..5
    m = padding_border_mask(nn.Conv2d(1, 1, 3, stride=2, padding=1), (6, 6), "cpu", torch.float32)[0, 0]
    assert m[:, 0].sum() == 0 and m[1:, 1:].all() and m.shape == (3, 3)
    m = padding_border_mask(nn.Conv2d(1, 1, 3, padding=(1, 0)), (5, 5), "cpu", torch.float32)[0, 0]
    assert m.shape == (5, 3) and m[0].sum() == 0 and m[-1].sum() == 0 and m[1:-1].all()
    m = padding_border_mask(nn.Conv1d(1, 1, 3, padding=1), (4,), "cpu", torch.float32)[0, 0]
    torch.testing.assert_close(m, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert padding_border_mask(nn.Conv2d(1, 1, 3), (5, 5), "cpu", torch.float32) is None
    assert padding_border_mask(nn.Conv2d(1, 1, 3, padding="valid"), (5, 5), "cpu", torch.float32) is None


@pytest.mark.parametrize("trick", [True, False])
def test_padding_trick_against_written_out_backward(trick):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    lin = nn.Linear(3 * 25, 2).double()
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    q = 60
    a = conv(x).detach()
    o = a.clamp_min(0)
    g_o = lin.weight[1].detach().reshape(1, 3, 5, 5).expand_as(o)
    r = (o * g_o).reshape(2, -1)
    tau = torch.tensor(np.percentile(r.numpy(), q, axis=1, method="nearest"))[:, None]
    g_a = (g_o.reshape(2, -1) * ((r > tau) & (o.reshape(2, -1) > 0))).reshape(o.shape)
    if trick:
        border = torch.zeros(5, 5, dtype=torch.float64)
        border[1:-1, 1:-1] = 1
        g_a = g_a * border
    g_x = torch.nn.grad.conv2d_input(x.shape, conv.weight.detach(), g_a, padding=1)
    out = NoBiasRectGrad(model, q=q, padding_trick=trick).attribute(x, 1)
    torch.testing.assert_close(out, g_x)


def test_padding_trick_inplace_after_conv_is_fine():
    class AddInPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.relu = nn.ReLU()
            self.head = nn.Linear(2 * 16, 2)

        def forward(self, x):
            y = self.conv(x)
            y += 1.0
            return self.head(self.relu(y).flatten(1))

    out = RectGrad(AddInPlace(), q=50).attribute(torch.rand(2, 1, 4, 4), 0)
    assert out.shape == (2, 1, 4, 4)


# ----------------------------------------------------------------------------------------------
# hooks: supported modules, cleanup on success and on error
# ----------------------------------------------------------------------------------------------
def assert_clean(model, inplace_flags):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == inplace_flags


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("cls", [RectGrad, NoBiasRectGrad, GuidedBackprop])
def test_hooks_removed_after_an_exception(cls):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.ReLU(), Boom())
    with pytest.raises(RuntimeError, match="boom"):
        cls(model).attribute(torch.rand(2, 1, 4, 4), 0)
    assert_clean(model, [True, False])
    # an error raised after the forward pass (bad target) inside the hooked region
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(32, 3))
    with pytest.raises(ValueError, match="target"):
        cls(model).attribute(torch.rand(2, 1, 4, 4), 7)
    assert_clean(model, [True])
    out = cls(model).attribute(torch.rand(2, 1, 4, 4), 1)
    assert out.shape == (2, 1, 4, 4)
    assert_clean(model, [True])


def test_user_hooks_are_kept():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    calls = []
    handle = model[1].register_forward_hook(lambda m, i, o: calls.append(1))
    RectGrad(model).attribute(torch.randn(2, 3), 0)
    assert calls and len(model[1]._forward_hooks) == 1
    handle.remove()


def test_no_relu_module_is_a_clear_error():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(ValueError, match="nn.ReLU"):
        RectGrad(Functional()).attribute(torch.randn(2, 3), 0)


def test_inplace_and_plain_relu_agree_and_model_unchanged():
    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    inplace = nn.Sequential(plain[0], nn.ReLU(inplace=True), plain[2], nn.ReLU(inplace=True), plain[4], plain[5])
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(RectGrad(plain, q=70).attribute(x, 2), RectGrad(inplace, q=70).attribute(x, 2))
    # after the call the model computes exactly what it did before
    before = plain(x)
    RectGrad(plain).attribute(x, 2)
    torch.testing.assert_close(plain(x), before, rtol=0, atol=0)
    torch.testing.assert_close(Gradient(plain).attribute(x, 2), Gradient(inplace).attribute(x, 2))
