"""RectGrad / NoBiasRectGrad: the percentile rule by hand, the padding trick, hook hygiene."""

import numpy as np
import pytest
import torch
from torch import nn

from sdecor.saliency import Gradient, GuidedBackprop, NoBiasRectGrad, RectGrad
from sdecor.saliency.rectgrad import nearest_rank_percentile, padding_border_mask


# ----------------------------------------------------------------------------------------------
# a literal port of the authors' TensorFlow code (1202kbs/Rectified-Gradient,
# deepexplain/tensorflow/methods.py, class RectifiedGradient) and of the percentile it calls
# (tf.contrib.distributions.percentile, interpolation=None -> 'nearest'), in torch
# ----------------------------------------------------------------------------------------------
def tf_percentile(x, q, axis):
    """tf.contrib.distributions.percentile(x, q, axis=axis, keep_dims=True), 'nearest'."""
    q = torch.tensor(q, dtype=torch.float64)  # q = math_ops.cast(q, dtypes.float64)
    front = [i for i in range(x.ndim) if i not in axis]
    y = x.permute(front + list(axis)).reshape([x.shape[i] for i in front] + [-1])  # _move_dims_to_flat_end
    frac_at_q_or_above = 1.0 - q / 100.0
    d = torch.tensor(y.shape[-1], dtype=torch.float64)
    index = torch.round((d - 1) * frac_at_q_or_above)  # tf.round: half to even, as torch.round
    index = int(index.clamp(0, y.shape[-1] - 1))
    sorted_y = torch.topk(y, k=y.shape[-1], dim=-1).values  # _sort_tensor: top_k, descending
    result = sorted_y[..., index]
    for i in sorted(axis):  # _insert_back_keep_dims
        result = result.unsqueeze(i)
    return result


def numpy_nearest(x, q, axis):
    """numpy's 'nearest' (ascending element round((d - 1) q / 100)): the rule the port must NOT match."""
    flat = x.reshape(x.shape[0], -1)
    tau = torch.tensor(np.percentile(flat.numpy(), q, axis=1, method="nearest"), dtype=x.dtype)
    return tau.reshape((-1,) + (1,) * (x.ndim - 1))


def tf_threshold(x, q, percentile=tf_percentile):
    """The authors' ``threshold``: axes [1, 2, 3] of 4-D (NHWC) tensors, axis 1 otherwise."""
    return percentile(x, q, axis=[1, 2, 3] if x.ndim > 3 else [1])


class AuthorsRelu(torch.autograd.Function):
    """tf.nn.relu with RectifiedGradient.nonlinearity_grad_override (NHWC / NC tensors)."""

    @staticmethod
    def forward(ctx, x, q, require_active, percentile):
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        ctx.q, ctx.require_active, ctx.percentile = q, require_active, percentile
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        activation_grad = out * grad
        thresh = tf_threshold(activation_grad, ctx.q, ctx.percentile)
        keep = thresh < activation_grad
        if ctx.require_active:  # sdecor's documented addition, off in the literal port
            keep = keep & (out > 0)
        return torch.where(keep, grad, torch.zeros_like(grad)), None, None, None


class AuthorsConvSame(torch.autograd.Function):
    """tf.nn.conv2d(x, w, strides 1, 'SAME') (NHWC, 3x3) with RectifiedGradient.conv2d_grad_override:
    the gradient at the output is zeroed on a one-pixel border before conv2d_backprop_input."""

    @staticmethod
    def forward(ctx, x_nhwc, weight):  # weight in torch's (out, in, 3, 3) layout
        ctx.save_for_backward(x_nhwc, weight)
        out = torch.nn.functional.conv2d(x_nhwc.permute(0, 3, 1, 2), weight, padding=1)
        return out.permute(0, 2, 3, 1)

    @staticmethod
    def backward(ctx, grad):
        x_nhwc, weight = ctx.saved_tensors
        shape = grad.shape
        mask = torch.nn.functional.pad(torch.ones(shape[0], shape[1] - 2, shape[2] - 2, shape[3]), (0, 0, 1, 1, 1, 1))
        grad = grad * mask.to(grad)
        g = grad.permute(0, 3, 1, 2)
        input_grad = torch.nn.grad.conv2d_input(x_nhwc.permute(0, 3, 1, 2).shape, weight, g, padding=1)
        return input_grad.permute(0, 2, 3, 1), None


def authors_rectgrad(forward, x, target, q, require_active=False, percentile=tf_percentile):
    """get_symbolic_attribution: tf.gradients(T, X) * X, T = the target logit summed over the batch."""
    x = x.detach().clone().requires_grad_(True)
    logits = forward(x, lambda a: AuthorsRelu.apply(a, q, require_active, percentile))
    (grad,) = torch.autograd.grad(logits[:, target].sum(), x)
    return grad * x.detach()


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
    #   (the authors' percentile: descending order (6, 2, 1, 1, 0, -2), element round(5 * 0.5) = 2)
    # sample 1: o = (2, 1, 1, 0, 1, 1), R = (2, -1, 5, 0, 4, .25); descending (5, 4, 2, .25, 0, -1)
    #   element 2: tau = 2 -> keep units 2, 4 (a per-sample threshold; numpy's ascending 'nearest'
    #   would take element 2 of (-1, 0, .25, 2, 4, 5), tau = .25, and also keep unit 0)
    grad = torch.tensor([[0.0, 0.0, 0.0, 2.0, 4.0, 0.0], [0.0, 0.0, 5.0, 0.0, 4.0, 0.0]])
    torch.testing.assert_close(NoBiasRectGrad(model, q=50).attribute(x, 0), grad)
    torch.testing.assert_close(RectGrad(model, q=50).attribute(x, 0), grad * x)
    torch.testing.assert_close(RectGrad(model, q=50, multiply_by_inputs=False).attribute(x, 0), grad)
    # q = 80: descending element round(5 * 0.2) = 1 -> tau = 2 (sample 0), 4 (sample 1): keep unit 3, resp. unit 2
    grad80 = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(NoBiasRectGrad(model, q=80).attribute(x, 0), grad80)
    # q = 98 (default): descending element round(0.1) = 0 -> tau = max(R): nothing passes
    torch.testing.assert_close(RectGrad(model).attribute(x, 0), torch.zeros_like(x))
    # q = 0: descending element 5 -> tau = min(R); everything above it and active passes
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
        tau = tf_percentile(r, q, axis=[1])
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


def test_nearest_rank_percentile_matches_the_tf_percentile():
    torch.manual_seed(0)
    for d in (2, 6, 11, 37, 51, 76, 176, 676):
        values = torch.randn(4, d, dtype=torch.float64)
        for q in (0, 10, 50, 73.3, 95, 98, 100):
            torch.testing.assert_close(nearest_rank_percentile(values, q), tf_percentile(values, q, axis=[1]))


@pytest.mark.parametrize("d,q", [(76, 98), (176, 98), (676, 98), (11, 95), (51, 95), (931, 95), (6, 50), (32, 50)])
def test_percentile_is_not_numpys_nearest_on_these_sizes(d, q):
    """The sizes used below: the authors' element and numpy's ascending 'nearest' element differ."""
    values = torch.randn(3, d, dtype=torch.float64)
    ours = nearest_rank_percentile(values, q)[:, 0]
    ascending = torch.tensor(np.percentile(values.numpy(), q, axis=1, method="nearest"))
    assert (ours != ascending).all()
    torch.testing.assert_close(ours, tf_percentile(values, q, axis=[1])[:, 0])


def _mostly_active(model):
    """Large positive biases: (nearly) every unit active, so the relevance values around the percentile
    are distinct (no block of zeros from inactive units)."""
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.bias.uniform_(2.0, 3.0)


def dense_net(widths):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-2], widths[-1])).double()
    _mostly_active(model)
    linears = [m for m in model if isinstance(m, nn.Linear)]

    def port_forward(x, relu):  # the same network written with the authors' ReLU
        for lin in linears[:-1]:
            x = relu(x @ lin.weight.t() + lin.bias)
        return x @ linears[-1].weight.t() + linears[-1].bias

    return model, port_forward


def conv_net(channels, side, classes=3):
    """3x3 'SAME' convolutions (the authors' padding trick applies) and a linear head."""
    torch.manual_seed(0)
    layers = []
    for a, b in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels[-1] * side * side, classes)).double()
    _mostly_active(model)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    head = model[-1]

    def port_forward(x, relu):  # NHWC, as the authors' TensorFlow graphs
        h = x.permute(0, 2, 3, 1)
        for conv in convs:
            h = relu(AuthorsConvSame.apply(h, conv.weight) + conv.bias)
        return h.permute(0, 3, 1, 2).flatten(1) @ head.weight.t() + head.bias

    return model, port_forward


# (network, q): every ReLU layer has a size d on which the authors' percentile element and numpy's
# ascending 'nearest' element differ (q = 98: d = 76 mod 100; q = 95: d = 11 mod 40; q = 50: even d)
PORT_CASES = {
    "dense-q98": (lambda: dense_net([7, 76, 176, 3]), (5, 7), 98),
    "dense-q95": (lambda: dense_net([6, 51, 11, 3]), (5, 6), 95),
    "dense-q50": (lambda: dense_net([4, 10, 6, 3]), (5, 4), 50),
    "conv-q98": (lambda: conv_net([3, 4, 4], 13), (3, 3, 13, 13), 98),  # 4 x 13 x 13 = 676 units
    "conv-q95": (lambda: conv_net([2, 19, 19], 7), (3, 2, 7, 7), 95),  # 19 x 7 x 7 = 931 units
    "conv-q50": (lambda: conv_net([1, 3, 3], 6), (4, 1, 6, 6), 50),  # 3 x 6 x 6 = 108 units
}


@pytest.mark.parametrize("case", list(PORT_CASES))
def test_matches_a_literal_port_of_the_authors_code(case):
    build, shape, q = PORT_CASES[case]
    model, port_forward = build()
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = RectGrad(model, q=q).attribute(x, 2)
    # the literal port; our 'unit must be active' condition changes nothing here (no threshold < 0)
    torch.testing.assert_close(ours, authors_rectgrad(port_forward, x, 2, q), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, authors_rectgrad(port_forward, x, 2, q, require_active=True))
    assert ours.abs().sum() > 0
    # the ascending element (our previous rule) gives another map on these sizes
    ascending = authors_rectgrad(port_forward, x, 2, q, percentile=numpy_nearest)
    assert (ascending - ours).abs().max() > 1e-3 * ours.abs().max()


def test_literal_port_passes_inactive_units_when_the_threshold_is_negative():
    """Where we differ on purpose: at tau < 0 the authors' rule lets an inactive unit (R = 0 > tau)
    pass gradient; ours requires o > 0."""
    G = [1.0, -1.0, 5.0, 2.0, 4.0, 0.25]
    model = identity_relu_net(G)
    x = torch.tensor([[1.0, 2.0, -1.0, 3.0, 0.5, 4.0]])

    def port_forward(inp, relu):
        return relu(inp @ model[0].weight.t()) @ model[2].weight.t()

    # R = (1, -2, 0, 6, 2, 1), q = 0: tau = -2; unit 2 is inactive (x = -1) with R = 0 > -2
    port = authors_rectgrad(port_forward, x, 0, 0) / x
    ours = NoBiasRectGrad(model, q=0).attribute(x, 0)
    torch.testing.assert_close(port, torch.tensor([[1.0, 0.0, 5.0, 2.0, 4.0, 0.25]]))
    torch.testing.assert_close(ours, torch.tensor([[1.0, 0.0, 0.0, 2.0, 4.0, 0.25]]))
    torch.testing.assert_close(authors_rectgrad(port_forward, x, 0, 0, require_active=True), ours * x)


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
    tau = tf_percentile(r, q, axis=[1])
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
