"""sdecor.metrics: hand-computed values on tiny inputs, chunking invariance, argument checks."""

import math
import re

import pytest
import torch
from nets import MeanPoolCNN as TinyCNN

import sdecor.metrics as M
from sdecor.metrics.perturbation.substrates import _rise_kernel_1d

pytestmark = pytest.mark.filterwarnings("ignore:sdecor. the C.. extension")


def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


class WeightedSum(torch.nn.Module):
    """Two logits: [sum(x * w), 0] per sample."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(dim=1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


# --------------------------------------------------------------------------- complexity


def test_sparseness_hand_values():
    a = torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    eps = 1e-7
    expected0 = (-3 * eps - eps + eps + 3 * (1 + eps)) / (4 * (1 + 4 * eps))
    got = M.sparseness(a, normalise=False)
    assert got[0].item() == pytest.approx(expected0, rel=1e-6)
    assert got[1].item() == pytest.approx(0.0, abs=1e-6)
    # scale and sign do not matter (abs, normalise); the result is on the input's dtype family
    assert torch.allclose(M.sparseness(-5 * a), got, atol=1e-6)
    assert M.sparseness(a.double()).dtype == torch.float64


def test_complexity_hand_values():
    a = torch.zeros(3, 1, 2, 4)
    a[0] = 1.0  # uniform over 8 -> log 8
    a[1, 0, 0, 0] = 2.0  # one-hot -> 0
    a[2, 0, 0, :2] = 1.0  # two equal -> log 2
    got = M.complexity(a)
    assert got[0].item() == pytest.approx(math.log(8), rel=1e-5)
    assert got[1].item() == pytest.approx(0.0, abs=1e-6)
    assert got[2].item() == pytest.approx(math.log(2), rel=1e-5)


def test_map_metrics_are_chunk_invariant_and_half_precision_ok():
    a = torch.randn(7, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    for fn in (M.sparseness, M.complexity):
        full = fn(a)
        assert full.shape == (7,)
        assert torch.allclose(fn(a, batch_size=2), full)
        assert torch.allclose(fn(a.half()), full, atol=2e-3)


# --------------------------------------------------------------------------- localisation


def test_localisation_hand_values():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    top = torch.tensor([[[1, 1], [0, 0]]])
    bottom_right = torch.tensor([[[0, 0], [0, 1]]], dtype=torch.bool)
    assert M.pointing_game(a, top).tolist() == [0.0]
    assert M.pointing_game(a, bottom_right).tolist() == [1.0]
    assert M.relevance_mass_accuracy(a, top).item() == pytest.approx(0.3)
    assert M.relevance_rank_accuracy(a, top).item() == 0.0  # top-2 are 4 and 3, both outside
    mask = torch.tensor([[[0, 1], [0, 1]]])
    assert M.relevance_rank_accuracy(a, mask).item() == 0.5  # top-2: 4 (in), 3 (out)


def test_pointing_game_ties_tolerance_and_empty_masks():
    a = torch.zeros(3, 1, 9, 9)
    a[:, 0, 0, 0] = 1.0
    a[1, 0, 8, 8] = 1.0  # a tie for the maximum: any maximum on the object is a hit
    m = torch.zeros(3, 1, 9, 9, dtype=torch.bool)
    m[0, 0, 0, 2:] = True  # 2 pixels away from the maximum (Euclidean)
    m[1, 0, 8, 8] = True
    assert M.pointing_game(a, m).tolist()[:2] == [0.0, 1.0]
    assert math.isnan(M.pointing_game(a, m)[2])  # empty mask
    assert M.pointing_game(a, m, tolerance=1)[0].item() == 0.0
    assert M.pointing_game(a, m, tolerance=2)[0].item() == 1.0
    d = torch.zeros(1, 1, 9, 9)
    d[0, 0, 0, 0] = 1
    diag = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    diag[0, 0, 2, 2] = True  # distance sqrt(8) = 2.83
    assert M.pointing_game(d, diag, tolerance=2).item() == 0.0
    assert M.pointing_game(d, diag, tolerance=3).item() == 1.0
    for fn in (M.relevance_mass_accuracy, M.relevance_rank_accuracy):
        assert math.isnan(fn(a, m)[2])


def test_localisation_broadcasts_masks_over_channels():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 3, 6, 6, generator=g)
    m = torch.rand(4, 6, 6, generator=g) > 0.6
    full = m[:, None].expand(4, 3, 6, 6)
    for fn in (M.pointing_game, M.relevance_mass_accuracy, M.relevance_rank_accuracy):
        assert torch.equal(fn(a, m), fn(a, full))
        assert torch.equal(fn(a, m[:, None]), fn(a, full))
        assert torch.equal(fn(a, m, batch_size=3), fn(a, full))
    # (B, H, W) maps with (B, 1, H, W) masks
    assert torch.equal(M.relevance_rank_accuracy(a[:, 0], m[:, None]), M.relevance_rank_accuracy(a[:, 0], m))


# --------------------------------------------------------------------------- deletion / insertion


def _linear_setup():
    w = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    x = torch.ones(1, 1, 2, 2)
    return WeightedSum(w).eval(), x, w.clone()


def test_deletion_curve_hand_values():
    model, x, sal = _linear_setup()
    r = M.deletion_curve(model, x, sal, step=1)
    expected = [sig(v) for v in (10, 6, 3, 1, 0)]  # remove 4, 3, 2, 1 (zero substrate)
    assert torch.allclose(r.curves[0], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(r.fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    auc = sum((expected[i] + expected[i + 1]) / 2 * 0.25 for i in range(4))
    assert r.auc.item() == pytest.approx(auc, rel=1e-6)
    assert M.deletion_auc(model, x, sal, step=1).item() == pytest.approx(auc, rel=1e-6)
    assert r.targets.tolist() == [0]
    # RISE's auc formula on the same curve
    rise = (sum(expected) - expected[0] / 2 - expected[-1] / 2) / 4
    assert r.auc.item() == pytest.approx(rise, rel=1e-6)
    # logits, and a step that does not divide the positions
    r = M.deletion_curve(model, x, sal, step=3, output="logit")
    assert r.curves[0].tolist() == [10.0, 1.0, 0.0]
    assert torch.allclose(r.fractions, torch.tensor([0, 0.75, 1.0]))
    assert r.auc.item() == pytest.approx((0.75 * (10 + 1) / 2 + 0.25 * (1 + 0) / 2) / 1.0)


def test_insertion_curve_hand_values():
    model, x, sal = _linear_setup()
    r = M.insertion_curve(model, x, sal, step=1, substrate=0.0, output="logit")
    assert r.curves[0].tolist() == [0.0, 4.0, 7.0, 9.0, 10.0]  # insert 4, 3, 2, 1
    r = M.insertion_curve(model, x, sal, step=2, substrate=0.5, output="logit")
    assert r.curves[0].tolist() == [5.0, 8.5, 10.0]
    # an explicit target follows that class instead of the top-1 prediction
    r = M.insertion_curve(model, x, sal, step=2, substrate=0.0, targets=torch.tensor([1]))
    assert torch.allclose(r.curves[0], torch.tensor([0.5, 1 - sig(7), 1 - sig(10)]), atol=1e-6)


def test_rise_blur_kernel_matches_scipy():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = scipy_ndimage.gaussian_filter(delta, 5)
    k1 = _rise_kernel_1d(11, 5.0).numpy()
    np.testing.assert_allclose(np.outer(k1, k1), k, atol=1e-15)
    # the blur is a per-channel convolution with zero padding
    x = torch.zeros(1, 2, 15, 15, dtype=torch.float64)
    x[0, 1, 7, 7] = 1.0
    y = M.rise_blur(x)
    assert torch.allclose(y[0, 1, 2:13, 2:13], torch.from_numpy(k))
    assert y[0, 0].abs().max() == 0


@pytest.mark.parametrize("pixel_layout", ["(B,1,H,W)", "(B,H,W)", "like x"])
def test_perturbation_curves_are_chunk_invariant(pixel_layout):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(5, 3, 6, 6, generator=g)
    y = torch.randint(0, 4, (5,), generator=g)
    sal = {
        "(B,1,H,W)": torch.rand(5, 1, 6, 6, generator=g),
        "(B,H,W)": torch.rand(5, 6, 6, generator=g),
        "like x": torch.rand(5, 3, 6, 6, generator=g),
    }[pixel_layout]
    runs = {
        "deletion": lambda bs: M.deletion_curve(model, x, sal, step=5, batch_size=bs),
        "insertion": lambda bs: M.insertion_curve(model, x, sal, step=7, batch_size=bs),
        "pf": lambda bs: M.pixel_flipping(model, x, sal, y, order="lerf", step=4, batch_size=bs),
        "pf_blur": lambda bs: M.pixel_flipping(model, x, sal, y, step=6, fill="blur", batch_size=bs),
        "rp": lambda bs: M.region_perturbation(model, x, sal, y, patch_size=4, regions=3, batch_size=bs),
    }
    for name, fn in runs.items():
        ref = fn(None)
        steps = ref.curves.shape[1]
        assert ref.curves.shape == (5, steps) and ref.fractions.shape == (steps,) and ref.auc.shape == (5,)
        for bs in (1, 3, 12):
            r = fn(bs)
            assert torch.allclose(r.curves, ref.curves, atol=1e-6), (name, bs)
            assert torch.allclose(r.auc, ref.auc, atol=1e-6), (name, bs)
    # the last deletion step has removed everything: every input is the substrate
    d = runs["deletion"](None)
    assert torch.allclose(d.fractions[-1], torch.tensor(1.0))
    with torch.no_grad():
        p0 = torch.softmax(model(torch.zeros_like(x)), 1)[torch.arange(5), d.targets]
    assert torch.allclose(d.curves[:, -1], p0, atol=1e-6)


def test_deletion_curves_use_the_top1_prediction_and_match_a_loop():
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = TinyCNN().eval()
    x = torch.rand(3, 3, 4, 4, generator=g)
    sal = torch.rand(3, 1, 4, 4, generator=g)
    r = M.deletion_curve(model, x, sal, step=4)
    with torch.no_grad():
        top = model(x).argmax(1)
    assert torch.equal(r.targets, top)
    # a plain loop over samples and steps (the RISE reference procedure)
    for b in range(3):
        order = torch.argsort(sal[b].flatten(), descending=True, stable=True)
        img = x[b : b + 1].clone()
        vals = []
        for t in range(5):
            with torch.no_grad():
                vals.append(torch.softmax(model(img), 1)[0, top[b]].item())
            idx = order[t * 4 : (t + 1) * 4]
            img.view(1, 3, 16)[0, :, idx] = 0.0
        assert torch.allclose(r.curves[b], torch.tensor(vals), atol=1e-6)


@pytest.mark.parametrize("fill", ["black", "blur", 0.25])
def test_ranked_engine_equals_per_step_mask_features(monkeypatch, fill):
    """The rank-once engine (C++ or torch) masks exactly what mask_features masks at every step."""
    import sdecor.metrics.perturbation.engine as P
    from sdecor.metrics.perturbation.substrates import make_substrate
    from sdecor.ops.masking.dispatch import mask_features

    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = TinyCNN().eval()
    x = torch.rand(4, 3, 5, 7, generator=g)
    y = torch.randint(0, 4, (4,), generator=g)
    sal = torch.randint(0, 3, (4, 5, 7), generator=g).float()  # heavy ties
    sal[0, 0, :3] = -0.0
    curves = {}
    for name, cpp in (("auto", None), ("torch", False)):
        if cpp is not None:
            monkeypatch.setattr(P, "cpp_available", lambda device, cpp=cpp: cpp)
        curves[name] = M.pixel_flipping(model, x, sal, y, step=3, fill=fill, output="logit", batch_size=3).curves
    assert torch.equal(curves["auto"], curves["torch"])
    sub = make_substrate(fill, x, "fill", None)
    with torch.no_grad():
        for t in range(curves["auto"].shape[1]):
            k = min(3 * t, 35)
            masked, _ = mask_features(
                x, sal, k, largest=True, fill=sub if isinstance(sub, float) else sub.expand(x.shape)
            )
            expect = model(masked).gather(1, y[:, None]).squeeze(1)
            assert torch.allclose(curves["auto"][:, t], expect, atol=1e-6), t


# --------------------------------------------------------------------------- pixel flipping / regions


def test_pixel_flipping_hand_values():
    w = torch.ones(1, 1, 2, 2)
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    model = WeightedSum(w).eval()
    t = torch.tensor([0])
    # MoRF with Quantus's "black" baseline (the sample's minimum, 1): 4 -> 1, 3 -> 1, 2 -> 1, 1 -> 1
    r = M.pixel_flipping(model, x, x.clone(), t, step=1, output="logit")
    assert r.curves[0].tolist() == [10.0, 7.0, 5.0, 4.0, 4.0]
    # LeRF with a zero fill: remove 1, 2, 3, 4
    r = M.pixel_flipping(model, x, x.clone(), t, order="lerf", step=1, fill=0.0, output="logit")
    assert r.curves[0].tolist() == [10.0, 9.0, 7.0, 4.0, 0.0]
    assert torch.allclose(r.drop[0], torch.tensor([1.0, 3.0, 6.0, 10.0]))
    assert r.aopc.item() == pytest.approx((0 + 1 + 3 + 6 + 10) / 5)
    # abs ranks by magnitude: -5 is the most relevant
    sal = torch.tensor([[[[1.0, -5.0], [3.0, 2.0]]]])
    r = M.pixel_flipping(model, x, sal, t, step=1, fill=0.0, output="logit", abs=True)
    assert r.curves[0].tolist() == [10.0, 8.0, 5.0, 1.0, 0.0]
    # random order is repeatable with a generator and ends at the fully flipped input
    r1 = M.pixel_flipping(
        model, x, sal, t, order="random", step=1, fill=0.0, generator=torch.Generator().manual_seed(3)
    )
    r2 = M.pixel_flipping(
        model, x, sal, t, order="random", step=1, fill=0.0, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(r1.curves, r2.curves)


def test_region_perturbation_uses_per_sample_counts_with_border_patches():
    # 5 x 5 image, patch 3: Quantus pads by (0, 1), so the patches hold 9, 6, 6 and 4 pixels
    x = torch.ones(2, 1, 5, 5)
    model = WeightedSum(torch.ones(1, 1, 5, 5)).eval()
    a = torch.zeros(2, 1, 5, 5)
    order0 = {(0, 0): 4.0, (1, 1): 3.0, (0, 1): 2.0, (1, 0): 1.0}  # remove 9, 4, 6, 6 pixels
    order1 = {(1, 0): 4.0, (0, 1): 3.0, (1, 1): 2.0, (0, 0): 1.0}  # remove 6, 6, 4, 9 pixels
    for b, order in enumerate((order0, order1)):
        for (pr, pc), v in order.items():
            a[b, 0, pr * 3, pc * 3] = v  # one pixel per patch carries the patch sum
    r = M.region_perturbation(model, x, a, torch.tensor([0, 0]), patch_size=3, fill=0.0, output="logit")
    assert r.curves[0].tolist() == [25.0, 16.0, 12.0, 6.0, 0.0]
    assert r.curves[1].tolist() == [25.0, 19.0, 13.0, 9.0, 0.0]
    assert torch.allclose(r.fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    # two regions per step, and at most three regions
    r = M.region_perturbation(
        model, x, a, torch.tensor([0, 0]), patch_size=3, fill=0.0, output="logit", regions=3, regions_per_step=2
    )
    assert r.curves.tolist() == [[25.0, 12.0, 6.0], [25.0, 13.0, 9.0]]
    r = M.region_perturbation(model, x, a, torch.tensor([0, 0]), patch_size=3, fill=0.0, output="logit", order="lerf")
    assert r.curves[0].tolist() == [25.0, 19.0, 13.0, 9.0, 0.0]


# --------------------------------------------------------------------------- SGT masked accuracy


class FirstElement(torch.nn.Module):
    """Class 0 when the first element is above 0.5."""

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        return torch.stack([v, torch.full_like(v, 0.5)], dim=1)


def test_masked_accuracy_hand_values():
    x = torch.ones(2, 1, 1, 10)
    sal = torch.arange(10.0).repeat(2, 1).view(2, 1, 1, 10)
    sal[0, 0, 0, 0] = 100.0  # sample 0: the first element is the most salient
    targets = torch.tensor([0, 0])
    r = M.masked_accuracy_curve(FirstElement(), x, sal, targets, fractions=(0.0, 0.1, 0.5, 0.9, 1.0), fill=0.0)
    assert r.correct.tolist() == [[True, False, False, False, False], [True, True, True, True, False]]
    assert torch.allclose(r.accuracy, torch.tensor([1.0, 0.5, 0.5, 0.5, 0.0]))
    auc = (0.1 * 0.75 + 0.4 * 0.5 + 0.4 * 0.5 + 0.1 * 0.25) / 1.0
    assert r.auc.item() == pytest.approx(auc)


def test_masked_accuracy_uniform_fill_is_repeatable_and_chunk_invariant():
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    model = TinyCNN().eval()
    x = torch.rand(6, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    sal = torch.rand(6, 1, 8, 8, generator=g)
    r1 = M.masked_accuracy_curve(model, x, sal, y, generator=torch.Generator().manual_seed(0))
    r2 = M.masked_accuracy_curve(model, x, sal, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1.correct, r2.correct)
    assert r1.correct.shape == (6, 6) and r1.accuracy.shape == (6,)
    with torch.no_grad():
        assert torch.equal(r1.correct[:, 0], model(x).argmax(1) == y)
    r = M.masked_accuracy_curve(model, x, sal, y, fill="mean")
    assert torch.equal(r.correct, M.masked_accuracy_curve(model, x, sal, y, fill="mean", batch_size=4).correct)


# --------------------------------------------------------------------------- max-sensitivity


def _identity_explain(model, inputs, targets):
    return inputs.clone()


def test_max_sensitivity_hand_values_and_repeatability():
    x = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5
    y = torch.zeros(3, dtype=torch.long)
    model = lambda v: torch.zeros(v.shape[0], 2)  # noqa: E731
    n, r = 5, 0.1
    got = M.max_sensitivity(
        model, x, y, _identity_explain, radius=r, n_samples=n, generator=torch.Generator().manual_seed(7)
    )
    g = torch.Generator().manual_seed(7)
    noise = torch.stack([torch.rand(x.shape, generator=g) * (2 * r) - r for _ in range(n)])  # (n, B, ...)
    expected = (noise.flatten(2).norm(dim=2) / x.flatten(1).norm(dim=1)).amax(dim=0)
    assert torch.allclose(got, expected, rtol=1e-5)
    for bs in (1, 2, 3, 7, 15, 100):
        again = M.max_sensitivity(
            model,
            x,
            y,
            _identity_explain,
            radius=r,
            n_samples=n,
            batch_size=bs,
            generator=torch.Generator().manual_seed(7),
        )
        assert torch.allclose(again, got, rtol=1e-6), bs
    # a constant explanation is perfectly robust
    const = lambda m, v, t: torch.ones(v.shape[0], 4)  # noqa: E731
    assert M.max_sensitivity(model, x, y, const, n_samples=3).tolist() == [0.0, 0.0, 0.0]


def test_max_sensitivity_nan_when_prediction_changes():
    x = torch.zeros(2, 1, 2, 2)
    model = lambda v: torch.stack([v.flatten(1).sum(1), torch.zeros(v.shape[0])], dim=1)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    a = torch.ones(2, 1, 2, 2)
    expl = lambda m, v, t: torch.ones_like(v)  # noqa: E731
    got = M.max_sensitivity(
        model, x, None, expl, attributions=a, n_samples=20, generator=g, return_nan_when_prediction_changes=True
    )
    assert torch.isnan(got).all()
    got = M.max_sensitivity(model, x, None, expl, attributions=a, n_samples=20)
    assert got.tolist() == [0.0, 0.0]


def test_max_sensitivity_uses_gradients_and_leaves_grad_mode():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(2, 3, 5, 5)
    y = torch.tensor([0, 1])

    def grad_explain(m, inputs, targets):
        inputs = inputs.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(inputs).gather(1, targets[:, None]).sum(), inputs)
        return g

    s = M.max_sensitivity(model, x, y, grad_explain, n_samples=3, normalise=True, abs=True)
    assert s.shape == (2,) and bool((s >= 0).all())
    assert torch.is_grad_enabled()


# --------------------------------------------------------------------------- model mode, validation, directions


def test_model_mode_and_grad_mode_are_left_alone():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 6, 6)
    sal = torch.rand(4, 1, 6, 6)
    for train in (False, True):
        model = TinyCNN(bn=True).train(train)
        M.deletion_curve(model, x, sal, step=9)
        M.pixel_flipping(model, x, sal, torch.zeros(4, dtype=torch.long), step=9)
        assert model.training is train
        assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


def test_validation_errors_name_the_argument():
    model = TinyCNN().eval()
    x = torch.rand(2, 3, 4, 4)
    a = torch.rand(2, 1, 4, 4)
    m = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    bad = a.clone()
    bad[0, 0, 0, 0] = float("nan")
    for fn in (M.sparseness, M.complexity):
        with pytest.raises(ValueError, match="attributions.*NaN"):
            fn(bad)
    for fn in (M.pointing_game, M.relevance_mass_accuracy, M.relevance_rank_accuracy):
        with pytest.raises(ValueError, match="attributions.*NaN"):
            fn(bad, m)
        with pytest.raises(ValueError, match="masks"):
            fn(a, m.float() + 2)
        with pytest.raises(ValueError, match="batch size"):
            fn(a, m[:1])
        with pytest.raises(ValueError, match="masks of shape"):
            fn(a, torch.zeros(2, 1, 3, 4, dtype=torch.bool))
        with pytest.raises(TypeError, match="attributions"):
            fn(a.long(), m)
    with pytest.raises(ValueError, match="attributions.*NaN"):
        M.deletion_curve(model, x, bad)
    with pytest.raises(ValueError, match="inputs"):
        M.deletion_curve(model, x * float("nan"), a)
    with pytest.raises(ValueError, match="batch size"):
        M.deletion_curve(model, x, a[:1])
    with pytest.raises(ValueError, match="attributions must have"):
        M.deletion_curve(model, x, torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match="step"):
        M.deletion_curve(model, x, a, step=0)
    with pytest.raises(ValueError, match="batch_size"):
        M.deletion_curve(model, x, a, batch_size=0)
    with pytest.raises(ValueError, match="substrate"):
        M.insertion_curve(model, x, a, substrate="gray")
    with pytest.raises(ValueError, match="substrate"):
        M.insertion_curve(model, x, a, substrate=torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="output"):
        M.deletion_curve(model, x, a, output="prob")
    with pytest.raises(ValueError, match="targets"):
        M.pixel_flipping(model, x, a, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="targets"):
        M.pixel_flipping(model, x, a, torch.tensor([0, 9]))
    with pytest.raises(TypeError, match="targets"):
        M.pixel_flipping(model, x, a, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="order"):
        M.pixel_flipping(model, x, a, order="most")
    with pytest.raises(TypeError, match="generator"):
        M.pixel_flipping(model, x, a, order="random", generator=1)
    with pytest.raises(TypeError, match="generator"):
        M.max_sensitivity(model, x, None, _identity_explain, generator=1)
    with pytest.raises(ValueError, match="patch_size"):
        M.region_perturbation(model, x, a, patch_size=5)
    with pytest.raises(ValueError, match="fractions"):
        M.masked_accuracy_curve(model, x, a, torch.tensor([0, 1]), fractions=(0.0, 1.5))
    with pytest.raises(TypeError, match="targets"):
        M.masked_accuracy_curve(model, x, a, None)
    with pytest.raises(ValueError, match="model must return"):
        M.deletion_curve(lambda v: v, x, a)
    with pytest.raises(TypeError, match="explain_fn"):
        M.max_sensitivity(model, x, torch.tensor([0, 1]), None)
    with pytest.raises(ValueError, match="n_samples"):
        M.max_sensitivity(model, x, torch.tensor([0, 1]), _identity_explain, n_samples=0)
    with pytest.raises(ValueError, match="pointing_game|tolerance"):
        M.pointing_game(torch.rand(2, 5), torch.ones(2, 5), tolerance=1)


def test_directions_cover_every_metric():
    metric_functions = {n for n in M.__all__ if n[0].islower() and n not in ("direction", "rise_blur")}
    assert metric_functions == set(M.DIRECTIONS)
    assert set(M.DIRECTIONS.values()) == {"higher", "lower"}
    assert M.direction("pixel_flipping", "lerf") == "higher"
    assert M.direction("deletion_auc") == "lower"
    for name, way in M.DIRECTIONS.items():  # every docstring states the same direction (bold, first)
        found = re.search(r"\*\*(higher|lower)[^*]*is better\*\*", getattr(M, name).__doc__, flags=re.IGNORECASE)
        assert found and found.group(1).lower() == way, name


@pytest.mark.cuda
def test_metrics_on_cuda_match_cpu(cuda_device):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(4, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (4,), generator=g)
    a = torch.rand(4, 1, 8, 8, generator=g)
    m = torch.rand(4, 1, 8, 8, generator=g) > 0.5
    mc = TinyCNN().eval()
    mc.load_state_dict(model.state_dict())
    mc = mc.to(cuda_device)
    xc, yc, ac, mk = x.to(cuda_device), y.to(cuda_device), a.to(cuda_device), m.to(cuda_device)
    for fn in (M.sparseness, M.complexity):
        assert torch.allclose(fn(ac).cpu(), fn(a), atol=1e-5)
    for fn in (M.pointing_game, M.relevance_mass_accuracy, M.relevance_rank_accuracy):
        assert torch.allclose(fn(ac, mk).cpu(), fn(a, m), atol=1e-5, equal_nan=True)
    for fn in (
        lambda mm, xx, aa, yy: M.deletion_curve(mm, xx, aa, step=8),
        lambda mm, xx, aa, yy: M.insertion_curve(mm, xx, aa, step=8),
        lambda mm, xx, aa, yy: M.pixel_flipping(mm, xx, aa, yy, step=8),
        lambda mm, xx, aa, yy: M.region_perturbation(mm, xx, aa, yy, patch_size=3),
    ):
        rc, r = fn(mc, xc, ac, yc), fn(model, x, a, y)
        assert rc.curves.device.type == "cuda"
        assert torch.allclose(rc.curves.cpu(), r.curves, atol=1e-4)
    r = M.masked_accuracy_curve(mc, xc, ac, yc, generator=torch.Generator(device=cuda_device).manual_seed(0))
    assert r.correct.device.type == "cuda"
    with pytest.raises(ValueError, match="device"):
        M.relevance_mass_accuracy(ac, m)
    with pytest.raises(ValueError, match="generator"):
        M.pixel_flipping(mc, xc, ac, yc, order="random", generator=torch.Generator())


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.inner(x)


def test_forward_pass_budget_and_chunk_sizes():
    """Deletion and pixel flipping evaluate exactly B * (steps + 1) inputs, in chunks <= batch_size."""
    torch.manual_seed(0)
    x = torch.rand(6, 3, 4, 4)
    sal = torch.rand(6, 1, 4, 4)
    for fn, extra in (
        (lambda m, bs: M.deletion_curve(m, x, sal, step=4, batch_size=bs), 0),
        (lambda m, bs: M.pixel_flipping(m, x, sal, step=4, batch_size=bs), 0),
        (lambda m, bs: M.insertion_curve(m, x, sal, step=4, batch_size=bs), 6),
    ):
        for bs in (None, 4, 10):
            m = Counting(TinyCNN().eval())
            fn(m, bs)
            assert sum(m.seen) == 6 * 5 + extra
            assert max(m.seen) <= (bs or 6)


def test_progress_bars_run(capsys):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 4)
    sal = torch.rand(2, 1, 4, 4)
    model = TinyCNN().eval()
    plain = M.deletion_curve(model, x, sal, step=4)
    shown = M.deletion_curve(model, x, sal, step=4, progress=True)
    assert torch.equal(plain.curves, shown.curves)
    assert torch.equal(M.sparseness(sal, progress=True), M.sparseness(sal))
    M.max_sensitivity(model, x, None, _identity_explain, n_samples=2, progress=True)
