"""sdecor.saliency: shared conventions, Gradient / InputXGradient / SmoothGrad / IG / GuidedBackprop."""

import pytest
import torch
from nets import flat_cnn as small_cnn
from torch import nn
from torch.func import functional_call

from sdecor.saliency import (
    DANCE,
    METHODS,
    Gradient,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoBiasRectGrad,
    RectGrad,
    SmoothGrad,
    resolve_target,
)
from sdecor.saliency.integrated_gradients import quadrature


def small_mlp(dtype=torch.float32):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)


def build(name, model):
    cls = METHODS[name]
    if cls is DANCE:
        return cls(model, "gradient", model[0], n_steps=3, decoy_batch_size=16)
    return cls(model)


# ----------------------------------------------------------------------------------------------
# METHODS and the common contract
# ----------------------------------------------------------------------------------------------
def test_methods_registry():
    assert set(METHODS) == {
        "gradient",
        "input_x_gradient",
        "smoothgrad",
        "integrated_gradients",
        "guided_backprop",
        "rectgrad",
        "nobias_rectgrad",
        "dance",
    }
    for cls in METHODS.values():
        assert hasattr(cls, "attribute")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_shape_dtype_device_and_model_untouched(name):
    model = small_cnn(bn=True, dropout=0.2).eval()
    x = torch.rand(2, 3, 6, 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inplace = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    out = build(name, model).attribute(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == inplace
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"dance"}))
def test_train_mode_kept(name):
    model = small_cnn(bn=True, dropout=0.2).train()
    x = torch.rand(3, 3, 6, 6)
    out = build(name, model).attribute(x, target=1)
    assert out.shape == x.shape
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"dance"}))
def test_works_under_no_grad(name):
    model = small_cnn().eval()
    x = torch.rand(2, 3, 6, 6)
    method = build(name, model)
    if name == "smoothgrad":
        ref = method.attribute(x, 0, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = method.attribute(x, 0, generator=torch.Generator().manual_seed(0))
    else:
        ref = method.attribute(x, 0)
        with torch.no_grad():
            out = method.attribute(x, 0)
    torch.testing.assert_close(out, ref)


def test_options_and_overrides():
    model = small_mlp()
    x = torch.randn(4, 5)
    g = Gradient(model)
    torch.testing.assert_close(g.attribute(x, 0, abs=True), g.attribute(x, 0).abs())
    assert Gradient(model, abs=True).options["abs"] is True
    with pytest.raises(TypeError, match="unexpected option"):
        Gradient(model, absolute=True)
    with pytest.raises(TypeError, match="abs"):
        Gradient(model, abs=1)
    with pytest.raises(ValueError, match="nt_type"):
        SmoothGrad(model, nt_type="smooth")
    with pytest.raises(ValueError, match="method"):
        IntegratedGradients(model, method="simpson")
    with pytest.raises(ValueError, match="n_steps"):
        IntegratedGradients(model, method="riemann_left", n_steps=1)
    with pytest.raises(ValueError, match="q"):
        RectGrad(model, q=101)
    with pytest.raises(TypeError, match="model"):
        RectGrad(lambda z: z)
    with pytest.raises(TypeError, match="inputs"):
        g.attribute(x.long())
    with pytest.raises(ValueError, match="inputs"):
        g.attribute(torch.randn(5))
    assert "Gradient(" in repr(g)


# ----------------------------------------------------------------------------------------------
# target handling
# ----------------------------------------------------------------------------------------------
def test_target_forms_agree():
    model = small_mlp()
    x = torch.randn(3, 5)
    g = Gradient(model)
    by_int = g.attribute(x, 2)
    torch.testing.assert_close(g.attribute(x, [2, 2, 2]), by_int)
    torch.testing.assert_close(g.attribute(x, torch.tensor([2, 2, 2])), by_int)
    torch.testing.assert_close(g.attribute(x, torch.tensor(2)), by_int)
    torch.testing.assert_close(g.attribute(x, torch.tensor([2], dtype=torch.int32)), by_int)
    pred = model(x).argmax(1)
    torch.testing.assert_close(g.attribute(x), g.attribute(x, pred))
    mixed = g.attribute(x, [0, 1, 2])
    for i in range(3):
        torch.testing.assert_close(mixed[i], g.attribute(x[i : i + 1], i)[0])


@pytest.mark.parametrize("name", ["smoothgrad", "integrated_gradients", "rectgrad", "guided_backprop"])
def test_target_none_is_prediction(name):
    model = small_cnn().eval()
    x = torch.rand(3, 3, 6, 6)
    method = build(name, model)
    pred = model(x).argmax(1)
    kw = {"generator": torch.Generator().manual_seed(3)} if name == "smoothgrad" else {}
    a = method.attribute(x, None, **kw)
    kw = {"generator": torch.Generator().manual_seed(3)} if name == "smoothgrad" else {}
    b = method.attribute(x, pred, **kw)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "target, exc",
    [
        ([0, 1], ValueError),  # wrong length
        (torch.tensor([0, 1]), ValueError),
        (torch.zeros(3, 1, dtype=torch.long), ValueError),
        (3, ValueError),  # out of range (3 classes)
        (-1, ValueError),
        ([0, 1, 5], ValueError),
        (torch.tensor([0, 3, 1]), ValueError),
        (torch.tensor([0, -1, 1]), ValueError),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError),  # non-integer tensor
        (torch.tensor([True, False, True]), TypeError),
        (1.0, TypeError),
        (True, TypeError),
        ([0, 1.0, 2], TypeError),
        ("1", TypeError),
    ],
)
@pytest.mark.parametrize("name", ["gradient", "smoothgrad", "integrated_gradients", "rectgrad"])
def test_target_validation(name, target, exc):
    model = small_mlp()
    method = METHODS[name](model)
    with pytest.raises(exc, match="target"):
        method.attribute(torch.randn(3, 5), target)


def test_resolve_target_helper():
    out = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert resolve_target(None, 2, out.device, out).tolist() == [1, 0]
    assert resolve_target(2, 2, out.device).tolist() == [2, 2]
    assert resolve_target(torch.tensor([1, 0]), 2, out.device, out).dtype == torch.long
    with pytest.raises(ValueError, match="target"):
        resolve_target(None, 2, out.device)


def test_model_output_checked():
    g = Gradient(lambda z: z.sum(1))
    with pytest.raises(ValueError, match="logits"):
        g.attribute(torch.randn(2, 3), 0)


# ----------------------------------------------------------------------------------------------
# Gradient / InputXGradient
# ----------------------------------------------------------------------------------------------
def test_gradient_of_linear_model_is_its_weight():
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    out = Gradient(lin).attribute(x, [0, 1, 2, 0, 1])
    torch.testing.assert_close(out, lin.weight[[0, 1, 2, 0, 1]].detach())
    torch.testing.assert_close(InputXGradient(lin).attribute(x, 1), lin.weight[1].detach() * x)


def test_create_graph_trains_in_train_mode():
    model = small_cnn(bn=True, dropout=0.3).train()
    x = torch.rand(4, 3, 6, 6)
    y = torch.tensor([0, 1, 2, 3])
    sal = Gradient(model, create_graph=True).attribute(x, y)
    assert sal.requires_grad
    loss = nn.functional.cross_entropy(model(x), y) + sal.abs().mean()
    loss.backward()
    assert model.training
    assert all(p.grad is not None for p in model.parameters())
    # the saliency term alone reaches the first conv's weights (double backward)
    model.zero_grad()
    sal = Gradient(model, create_graph=True).attribute(x, y)
    (g,) = torch.autograd.grad((sal**2).sum(), model[0].weight)
    assert g.abs().sum() > 0
    # without create_graph the map is a constant
    assert not Gradient(model).attribute(x, y).requires_grad


def test_create_graph_matches_finite_differences_float64():
    """The gradient of a loss on the map w.r.t. a parameter: autograd (double backward) versus
    central differences, in train mode with BatchNorm and Dropout (mask fixed by reseeding)."""
    torch.manual_seed(0)
    net = (
        nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Dropout(0.3), nn.Linear(7, 3)).double().train()
    )
    x = torch.randn(6, 5, dtype=torch.float64)
    target = [0, 1, 2, 0, 1, 2]
    weights = torch.randn(6, 5, dtype=torch.float64)

    def loss_of(w):
        def forward(z):
            torch.manual_seed(123)  # same dropout mask at every evaluation
            return functional_call(net, {"0.weight": w}, (z,))

        sal = Gradient(forward, create_graph=True).attribute(x, target)
        return (sal * weights).sum() + (sal**2).sum()

    w0 = net[0].weight.detach().clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(loss_of(w0), w0)
    assert auto.abs().sum() > 0
    h = 1e-6
    for idx in [(0, 0), (3, 2), (6, 4), (2, 1)]:
        wp, wm = w0.detach().clone(), w0.detach().clone()
        wp[idx] += h
        wm[idx] -= h
        fd = (loss_of(wp) - loss_of(wm)) / (2 * h)
        torch.testing.assert_close(auto[idx], fd, rtol=1e-6, atol=1e-8)
    # and torch's own check of the loss's gradient (itself a double backward through the model)
    torch.autograd.gradcheck(loss_of, (w0,))


def test_create_graph_gradgradcheck_without_batchnorm():
    """One derivative further (third order through the model). Not with train-mode BatchNorm:
    PyTorch's own batch_norm double backward is not exactly differentiable again there."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Dropout(0.3), nn.Linear(7, 3)).double().train()
    x = torch.randn(6, 5, dtype=torch.float64)

    def loss_of(w):
        def forward(z):
            torch.manual_seed(123)
            return functional_call(net, {"0.weight": w}, (z,))

        return (Gradient(forward, create_graph=True).attribute(x, [0, 1, 2, 0, 1, 2]) ** 2).sum()

    w0 = net[0].weight.detach().clone().requires_grad_(True)
    torch.autograd.gradgradcheck(loss_of, (w0,))


def test_create_graph_differentiable_wrt_inputs_that_require_grad():
    model = small_mlp(torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda z: Gradient(model, create_graph=True).attribute(z, 1), (x,))
    torch.autograd.gradcheck(lambda z: InputXGradient(model, create_graph=True).attribute(z, 1), (x,))


# ----------------------------------------------------------------------------------------------
# SmoothGrad
# ----------------------------------------------------------------------------------------------
class Quadratic(nn.Module):
    """f_k(x) = sum_i w_ki x_i^2: gradient 2 w_k x, so SmoothGrad statistics are known exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) ** 2) @ self.w.t()


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_statistics_exact(nt_type):
    torch.manual_seed(0)
    w = torch.randn(3, 6, dtype=torch.float64)
    model = Quadratic(w)
    x = torch.randn(4, 6, dtype=torch.float64)
    target = [0, 1, 2, 1]
    n, level = 9, 0.2
    out = SmoothGrad(model, nt_type=nt_type, n_samples=n, noise_level=level, samples_batch_size=5).attribute(
        x, target, generator=torch.Generator().manual_seed(42)
    )
    # reproduce the documented noise: one (B, ...) standard-normal draw per copy, sigma = level * range
    gen = torch.Generator().manual_seed(42)
    sigma = level * (x.amax(1, keepdim=True) - x.amin(1, keepdim=True))
    grads = torch.stack(
        [2 * w[target] * (x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)) for _ in range(n)]
    )
    expected = {
        "smoothgrad": grads.mean(0),
        "smoothgrad_sq": (grads**2).mean(0),
        "vargrad": (grads**2).mean(0) - grads.mean(0) ** 2,
    }[nt_type]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_chunk_size_independent(nt_type):
    model = small_cnn().eval()
    x = torch.rand(3, 3, 6, 6)
    outs = [
        SmoothGrad(model, nt_type=nt_type, n_samples=7, samples_batch_size=sbs).attribute(
            x, 1, generator=torch.Generator().manual_seed(5)
        )
        for sbs in (1, 2, 4, 9, None)
    ]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=1e-6)


def test_smoothgrad_generator_repeatable_and_noise_free_limit():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 6, 6)
    sg = SmoothGrad(model, n_samples=4)
    a = sg.attribute(x, 0, generator=torch.Generator().manual_seed(1))
    b = sg.attribute(x, 0, generator=torch.Generator().manual_seed(1))
    c = sg.attribute(x, 0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(sg.attribute(x, 0, noise_level=0.0), Gradient(model).attribute(x, 0))
    lin = nn.Linear(6, 2)
    z = torch.randn(3, 6)
    torch.testing.assert_close(
        SmoothGrad(lin, nt_type="vargrad").attribute(z, 1), torch.zeros_like(z), rtol=0, atol=1e-6
    )
    with pytest.raises(TypeError, match="generator"):
        sg.attribute(x, 0, generator=1)


# ----------------------------------------------------------------------------------------------
# Integrated Gradients
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
)
def test_quadrature_rules_integrate(method):
    alphas, weights = quadrature(method, 40)
    assert len(alphas) == len(weights) == 40
    assert abs(sum(weights) - 1) < 1e-12
    approx = sum(w * a**2 for a, w in zip(alphas, weights))
    assert abs(approx - 1 / 3) < (1e-12 if method == "gausslegendre" else 2e-2)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre", "riemann_middle"])
def test_ig_completeness(method):
    torch.manual_seed(2)  # a smooth model: the quadrature rules converge at their usual rates
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    base = torch.randn(5, dtype=torch.float64)
    ig = IntegratedGradients(model, method=method, n_steps=300 if method != "gausslegendre" else 40)
    attr = ig.attribute(x, [0, 1, 2, 0], baselines=base)
    with torch.no_grad():
        diff = model(x) - model(base.expand_as(x))
    expected = diff[torch.arange(4), torch.tensor([0, 1, 2, 0])]
    torch.testing.assert_close(attr.sum(1), expected, rtol=1e-5, atol=1e-5)


def test_ig_linear_exact_and_baselines():
    lin = nn.Linear(4, 2).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(3, 4, dtype=torch.float64)
    ig = IntegratedGradients(lin, n_steps=5)
    w = lin.weight[1].detach()
    torch.testing.assert_close(ig.attribute(x, 1, baselines=b), w * (x - b))
    torch.testing.assert_close(ig.attribute(x, 1, baselines=b[:1]), w * (x - b[:1]))
    torch.testing.assert_close(ig.attribute(x, 1, baselines=0.5), w * (x - 0.5))
    torch.testing.assert_close(ig.attribute(x, 1), w * x)
    torch.testing.assert_close(ig.attribute(x, 1, multiply_by_inputs=False), w.expand_as(x))
    with pytest.raises(ValueError, match="baselines"):
        ig.attribute(x, 1, baselines=torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="baselines"):
        ig.attribute(x, 1, baselines="zero")


@pytest.mark.parametrize("method", ["riemann_left", "gausslegendre"])
def test_ig_chunk_size_independent(method):
    model = small_cnn().eval()
    x = torch.rand(3, 3, 6, 6)
    outs = [
        IntegratedGradients(model, n_steps=8, method=method, internal_batch_size=ibs).attribute(x, 2)
        for ibs in (1, 5, 8, 64, None)
    ]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Guided Backprop
# ----------------------------------------------------------------------------------------------
def test_guided_backprop_by_hand():
    lin1 = nn.Linear(2, 3, bias=False)
    lin2 = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        lin2.weight.copy_(torch.tensor([[2.0, -3.0, 0.5]]))
    model = nn.Sequential(lin1, nn.ReLU(), lin2)
    x = torch.tensor([[1.0, 2.0], [-1.0, 2.0]])
    # sample 0: hidden (1, 2, 3) all active; upstream (2, -3, 0.5) -> relu -> (2, 0, 0.5)
    # sample 1: hidden (-1, 2, 1): unit 0 inactive -> (0, 0, 0.5)
    expected = torch.tensor([[2.0 + 0.5, 0.5], [0.5, 0.5]])
    torch.testing.assert_close(GuidedBackprop(model).attribute(x, 0), expected)
    plain = torch.tensor([[2.0 + 0.5, -3.0 + 0.5], [0.5, -3.0 + 0.5]])
    torch.testing.assert_close(Gradient(model).attribute(x, 0), plain)


def test_guided_backprop_needs_relu_modules():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="nn.ReLU"):
        GuidedBackprop(model).attribute(torch.randn(2, 3), 0)


# ----------------------------------------------------------------------------------------------
# CUDA: the same numbers on the GPU, results on the inputs' device
# ----------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(METHODS))
def test_cuda_matches_cpu(name, cuda_device):
    model = small_cnn().eval()
    x = torch.rand(2, 3, 6, 6)
    if name == "smoothgrad":
        # the CPU and CUDA generators draw different noise: compare the noise-free limit
        cpu = SmoothGrad(model, noise_level=0.0, n_samples=3).attribute(x, 1)
        gpu_model = model.to(cuda_device)
        out = SmoothGrad(gpu_model, noise_level=0.0, n_samples=3).attribute(
            x.to(cuda_device), 1, generator=torch.Generator(device=cuda_device).manual_seed(0)
        )
    else:
        cpu = build(name, model).attribute(x, 1)
        gpu_model = model.to(cuda_device)
        out = build(name, gpu_model).attribute(x.to(cuda_device), torch.tensor([1, 1], device=cuda_device))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
def test_cuda_generator_device_checked(cuda_device):
    model = small_cnn().to(cuda_device)
    with pytest.raises(ValueError, match="generator"):
        SmoothGrad(model).attribute(torch.rand(1, 3, 6, 6, device=cuda_device), 0, generator=torch.Generator())


def test_nobias_rectgrad_is_exported():
    assert NoBiasRectGrad(small_mlp()).options["multiply_by_inputs"] is False
