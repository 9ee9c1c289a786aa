"""sdecor.saliency against Captum on small random models (skipped without captum).

Install: pip install "captum>=0.7" (the ``compare`` extra).
"""

import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

from nets import pooled_float64_cnn as cnn  # noqa: E402

from sdecor.saliency import Gradient, GuidedBackprop, InputXGradient, IntegratedGradients, SmoothGrad  # noqa: E402

pytestmark = [pytest.mark.captum, pytest.mark.filterwarnings("ignore::UserWarning:captum")]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 4)).double().eval()


@pytest.fixture(params=["mlp", "cnn"])
def model_and_inputs(request):
    if request.param == "mlp":
        return mlp(), torch.randn(5, 6, dtype=torch.float64)
    return cnn(), torch.randn(5, 3, 8, 8, dtype=torch.float64)


TARGETS = [1, [0, 1, 2, 3, 0], torch.tensor([3, 2, 1, 0, 1])]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("absolute", [False, True])
def test_gradient_vs_captum_saliency(model_and_inputs, target, absolute):
    model, x = model_and_inputs
    ours = Gradient(model, abs=absolute).attribute(x, target)
    theirs = captum_attr.Saliency(model).attribute(x, target=target, abs=absolute)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("target", TARGETS)
def test_input_x_gradient_vs_captum(model_and_inputs, target):
    model, x = model_and_inputs
    ours = InputXGradient(model).attribute(x, target)
    theirs = captum_attr.InputXGradient(model).attribute(x, target=target)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "method", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
)
@pytest.mark.parametrize("n_steps", [7, 20])
def test_integrated_gradients_vs_captum(model_and_inputs, method, n_steps):
    model, x = model_and_inputs
    baselines = 0.1 * torch.randn_like(x)
    ours = IntegratedGradients(model, n_steps=n_steps, method=method, internal_batch_size=13).attribute(
        x, [0, 1, 2, 3, 0], baselines=baselines
    )
    theirs = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=baselines, target=[0, 1, 2, 3, 0], n_steps=n_steps, method=method
    )
    if method == "riemann_trapezoid":
        # Captum weighs its n trapezoid nodes by 1/n instead of 1/(n - 1) (see quadrature())
        theirs = theirs * n_steps / (n_steps - 1)
    # Captum builds its Riemann nodes in float32 (torch.linspace(...).tolist())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_without_inputs_factor_vs_captum(model_and_inputs):
    model, x = model_and_inputs
    ours = IntegratedGradients(model, n_steps=16, multiply_by_inputs=False).attribute(x, 2)
    theirs = captum_attr.IntegratedGradients(model, multiply_by_inputs=False).attribute(x, target=2, n_steps=16)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("target", TARGETS)
def test_guided_backprop_vs_captum(model_and_inputs, target):
    model, x = model_and_inputs
    ours = GuidedBackprop(model).attribute(x, target)
    theirs = captum_attr.GuidedBackprop(model).attribute(x, target=target)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_statistics_vs_captum_noise_tunnel(nt_type):
    """Both are Monte Carlo estimates of the same expectation, with different noise: agree within
    5 standard errors, the standard errors taken from the sampled gradients themselves."""
    model = mlp()
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64)
    # every sample spans a range of 1, so our relative noise level equals Captum's absolute stdev
    x = (x - x.amin(1, keepdim=True)) / (x.amax(1, keepdim=True) - x.amin(1, keepdim=True))
    level, n, target = 0.3, 4000, [0, 2, 3]
    ours = SmoothGrad(model, nt_type=nt_type, n_samples=n, noise_level=level, samples_batch_size=4000).attribute(
        x, target, generator=torch.Generator().manual_seed(0)
    )
    torch.manual_seed(1)
    theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
        x, nt_type=nt_type, nt_samples=n, stdevs=level, target=target, abs=False
    )
    # the per-copy quantity each statistic averages, sampled independently, for its spread
    gen = torch.Generator().manual_seed(7)
    noisy = (x[None] + level * torch.randn((n,) + x.shape, generator=gen, dtype=x.dtype)).reshape(-1, 6)
    grads = Gradient(model).attribute(noisy, target * n).reshape(n, 3, 6)
    per_copy = {"smoothgrad": grads, "smoothgrad_sq": grads**2, "vargrad": (grads - grads.mean(0)) ** 2}[nt_type]
    stderr = per_copy.std(0) * (2.0 / n) ** 0.5
    assert ((ours - theirs).abs() <= 5 * stderr + 1e-9).all()
    assert (per_copy.std(0) > 0).any()
