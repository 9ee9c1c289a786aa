"""sdecor.metrics against Quantus on small random models and maps (needs the compare extra).

Quantus normalises by the maximum over the whole batch by default; ours is per sample, so the
Quantus side is given ``normalise_func_kwargs={"normalise_axes": [1, 2, 3]}`` (per sample) where
the normalisation is not a no-op.
"""

import warnings

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus")

from nets import StridedCNN as SmallCNN  # noqa: E402

import sdecor.metrics as M  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

PER_SAMPLE = {"normalise_axes": [1, 2, 3]}


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(6, 3, 12, 12, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    a = torch.randn(6, 1, 12, 12, generator=g)
    s = torch.zeros(6, 1, 12, 12, dtype=torch.bool)
    for i in range(6):
        r, c = 1 + i, 2 + (i * 3) % 6
        s[i, 0, r : r + 4, c : c + 5] = True
    return model, x, y, a, s


def _np(t):
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("abs_", [True])
@pytest.mark.parametrize("normalise", [True, False])
def test_sparseness_matches_quantus(data, abs_, normalise):
    model, x, y, a, _ = data
    q = quantus.Sparseness(abs=abs_, normalise=normalise, normalise_func_kwargs=PER_SAMPLE, disable_warnings=True)
    expected = np.asarray(q(model=None, x_batch=_np(x), y_batch=_np(y), a_batch=_np(a).copy()))
    ours = M.sparseness(a, abs=abs_, normalise=normalise)
    np.testing.assert_allclose(_np(ours), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalise", [True, False])
def test_complexity_matches_quantus(data, normalise):
    model, x, y, a, _ = data
    q = quantus.Complexity(abs=True, normalise=normalise, normalise_func_kwargs=PER_SAMPLE, disable_warnings=True)
    expected = np.asarray(q(model=None, x_batch=_np(x), y_batch=_np(y), a_batch=_np(a).copy()))
    ours = M.complexity(a, normalise=normalise)
    np.testing.assert_allclose(_np(ours), expected, rtol=1e-5, atol=1e-6)


def test_complexity_on_channel_maps_matches_quantus(data):
    model, x, y, _, _ = data
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    q = quantus.Complexity(disable_warnings=True, normalise_func_kwargs=PER_SAMPLE)
    expected = np.asarray(q(model=None, x_batch=_np(x), y_batch=_np(y), a_batch=_np(a).copy()))
    np.testing.assert_allclose(_np(M.complexity(a)), expected, rtol=1e-5)
    q = quantus.Sparseness(disable_warnings=True, normalise_func_kwargs=PER_SAMPLE)
    expected = np.asarray(q(model=None, x_batch=_np(x), y_batch=_np(y), a_batch=_np(a).copy()))
    np.testing.assert_allclose(_np(M.sparseness(a)), expected, rtol=1e-5)


@pytest.mark.parametrize("abs_", [False, True])
def test_localisation_matches_quantus(data, abs_):
    model, x, y, a, s = data
    # a planted maximum inside the mask for half of the samples, so hits and misses both occur
    a = a.clone()
    a[::2, 0, 3, 4] = 10.0
    kw = dict(abs=abs_, disable_warnings=True)
    args = dict(model=None, x_batch=_np(x), y_batch=_np(y), a_batch=_np(a), s_batch=_np(s).astype(np.float32))
    pg = np.asarray(quantus.PointingGame(**kw)(**args), dtype=np.float64)
    rma = np.asarray(quantus.RelevanceMassAccuracy(**kw)(**args))
    rra = np.asarray(quantus.RelevanceRankAccuracy(**kw)(**args))
    np.testing.assert_array_equal(_np(M.pointing_game(a, s, abs=abs_)), pg)
    assert 0 < pg.sum() < len(pg)
    np.testing.assert_allclose(_np(M.relevance_mass_accuracy(a, s, abs=abs_)), rma, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(M.relevance_rank_accuracy(a, s, abs=abs_)), rra, rtol=1e-6)
    # masks may also come as (B, H, W) and as {0, 1} floats
    np.testing.assert_allclose(_np(M.relevance_rank_accuracy(a, s[:, 0].float(), abs=abs_)), rra, rtol=1e-6)


def _saliency_explain(model, inputs, targets):
    inputs = inputs.detach().clone().requires_grad_(True)
    out = model(inputs)
    (grad,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), inputs)
    return grad.abs().sum(dim=1, keepdim=True)


def _quantus_explain(model, inputs, targets, **kwargs):
    a = _saliency_explain(model, torch.as_tensor(inputs, dtype=torch.float32), torch.as_tensor(targets).long())
    return a.numpy()


@pytest.mark.parametrize("normalise", [False, True])
def test_max_sensitivity_matches_quantus_on_the_same_noise(data, normalise):
    model, x, y, _, _ = data
    n = 7
    gen = torch.Generator().manual_seed(123)
    ours = M.max_sensitivity(
        model, x, y, _saliency_explain, radius=0.2, n_samples=n, normalise=normalise, generator=gen
    )

    # replay the identical noise draws into Quantus through its perturb_func argument
    gen = torch.Generator().manual_seed(123)
    draws = [_np(torch.rand(x.shape, generator=gen) * 0.4 - 0.2).reshape(x.shape[0], -1) for _ in range(n)]
    it = iter(draws)

    def replay(arr, indices, **kwargs):
        return arr + next(it)

    q = quantus.MaxSensitivity(
        nr_samples=n, perturb_func=replay, normalise=normalise, disable_warnings=True, normalise_func_kwargs=PER_SAMPLE
    )
    expected = np.asarray(q(model=model, x_batch=_np(x), y_batch=_np(y), explain_func=_quantus_explain, batch_size=64))
    # float32 noise in both: our x + (u * 2r - r) vs Quantus x + (u * 2r - r) computed identically
    np.testing.assert_allclose(_np(ours), expected, rtol=1e-4, atol=1e-6)


def test_pixel_flipping_matches_quantus_elementwise(data):
    """Per-element saliency without ties: our curves[:, 1:] are Quantus PixelFlipping's curves."""
    model, x, y, _, _ = data
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    step = 24  # Quantus needs it to divide H * W
    for softmax, output in ((False, "logit"), (True, "probability")):
        q = quantus.PixelFlipping(features_in_step=step, disable_warnings=True)
        expected = np.asarray(q(model=model, x_batch=_np(x), y_batch=_np(y), a_batch=_np(a), softmax=softmax))
        ours = M.pixel_flipping(model, x, a, y, step=step, output=output)
        np.testing.assert_allclose(_np(ours.curves[:, 1:]), expected, rtol=1e-4, atol=1e-5)


def test_region_perturbation_matches_quantus(data):
    model, x, y, _, _ = data
    g = torch.Generator().manual_seed(9)
    for shape in ((6, 1, 12, 12), (6, 3, 12, 12)):
        a = torch.randn(shape, generator=g)
        for patch, order in ((4, "morf"), (5, "lerf")):  # 5 does not divide 12: Quantus pads
            q = quantus.RegionPerturbation(patch_size=patch, order=order, regions_evaluation=6, disable_warnings=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = np.asarray(q(model=model, x_batch=_np(x), y_batch=_np(y), a_batch=_np(a), softmax=False))
            ours = M.region_perturbation(model, x, a, y, patch_size=patch, order=order, regions=6, output="logit")
            np.testing.assert_allclose(_np(ours.drop), expected, rtol=1e-4, atol=1e-5)
