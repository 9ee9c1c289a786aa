"""The training objectives, part by part, on tiny hand-built models."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdecor import decorrelation_loss
from sdecor.losses import (
    MASKED_BN,
    SCAAT,
    DeCov,
    FeatureHook,
    SaliencyDecor,
    SaliencyGuidedTraining,
    Standard,
    adaptive_budget,
    build_objective,
    consistency_kl,
    decov_penalty,
    input_saliency,
)
from sdecor.losses._common import eval_mode


class TinyCNN(nn.Module):
    """conv-BN-ReLU, pooled features (named by ``feature_layer``), linear head."""

    feature_layer = "pool"
    conv_feature_layer = "relu"

    def __init__(self, channels=2, classes=3, width=4):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, classes)

    def features(self, x):
        return self.pool(self.relu(self.bn(self.conv(x))))

    def forward(self, x):
        return self.fc(self.features(x))


class PlainCNN(TinyCNN):
    """The same network without the ``feature_layer`` attribute: features = the classifier's input."""

    feature_layer = None


class LinearNet(nn.Module):
    """f(x) = W x + b: its input gradient is known in closed form."""

    def __init__(self, shape=(2, 4, 4), classes=3):
        super().__init__()
        self.shape = shape
        self.fc = nn.Linear(math.prod(shape), classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Recorder(nn.Module):
    """Records every input batch and whether the model was in train mode."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, x):
        self.calls.append((x.detach().clone(), self.training))
        return self.inner(x)


def batch(n=6, shape=(2, 4, 4), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def kl_by_hand(clean, other):
    p = torch.softmax(clean, 1)
    return (p * (torch.log(p) - torch.log_softmax(other, 1))).sum(1).mean()


# ----------------------------------------------------------------------------- helpers


def test_consistency_kl_direction_and_batchmean():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert torch.allclose(consistency_kl(a, b), kl_by_hand(a, b), atol=1e-6)
    # KL is not symmetric: the other direction is a different number
    assert not torch.allclose(consistency_kl(a, b), consistency_kl(b, a), atol=1e-4)
    assert consistency_kl(a, a).abs() < 1e-6
    # both arguments get gradient (no detach), unless asked
    a.requires_grad_(True)
    b.requires_grad_(True)
    ga, gb = torch.autograd.grad(consistency_kl(a, b), (a, b))
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0
    a.grad = None
    consistency_kl(a, b, detach_target=True).backward()
    assert a.grad is None


def test_input_saliency_is_the_channel_mean_of_the_weight_row():
    model = LinearNet()
    images, labels = batch()
    saliency = input_saliency(model, images, labels)
    weight = model.fc.weight.detach().view(3, 2, 4, 4)
    expected = weight[labels].mean(1, keepdim=True)
    assert saliency.shape == (6, 1, 4, 4)
    assert torch.allclose(saliency, expected, atol=1e-6)
    assert torch.allclose(input_saliency(model, images, labels, absolute=True), expected.abs(), atol=1e-6)
    assert not saliency.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_input_saliency_runs_in_eval_mode_and_restores_each_flag():
    model = TinyCNN()
    model.train()
    model.bn.eval()  # a user-frozen BatchNorm stays frozen
    rec = Recorder(model)
    rec.train()
    model.bn.eval()
    running = model.bn.running_mean.clone()
    images, labels = batch()
    input_saliency(rec, images, labels)
    assert rec.calls[0][1] is False
    assert rec.training and model.conv.training and not model.bn.training
    assert torch.equal(model.bn.running_mean, running)


def test_input_saliency_elementwise_for_flat_inputs():
    model = nn.Linear(5, 3)
    x, y = torch.rand(4, 5), torch.tensor([0, 1, 2, 1])
    assert torch.allclose(input_saliency(model, x, y), model.weight.detach()[y], atol=1e-6)


def test_eval_mode_restores_flags_on_error():
    model = TinyCNN().train()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training
            raise RuntimeError("boom")
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- hooks


def test_feature_hook_records_only_when_armed_and_forgets():
    model = TinyCNN()
    images, _ = batch()
    hook = FeatureHook(model)
    assert hook.name == "pool"
    model(images)  # not armed: nothing kept
    assert hook._features is None
    with hook.armed():
        model(images)
    features = hook.pop()
    assert torch.allclose(features, model.features(images))
    assert hook._features is None
    with pytest.raises(RuntimeError, match="did not run"):
        hook.pop()
    hook.remove()
    assert not model.pool._forward_hooks


def test_feature_hook_default_without_declared_layer_is_classifier_input():
    model = PlainCNN()
    images, _ = batch()
    hook = FeatureHook(model)
    assert hook.record_input and hook.name.startswith("fc")
    with hook.armed():
        model(images)
    assert torch.allclose(hook.pop(), model.features(images))
    hook.remove()
    assert not model.fc._forward_pre_hooks


def test_feature_hook_named_and_conv_layers():
    model = TinyCNN()
    images, _ = batch()
    for layer in ("relu", "conv", model.relu):
        hook = FeatureHook(model, layer)
        with hook.armed():
            model(images)
        assert hook.pop().shape == (6, 4, 4, 4)
        hook.remove()
    with pytest.raises(ValueError, match="not a module"):
        FeatureHook(model, "nope")
    with pytest.raises(ValueError, match="not part of the model"):
        FeatureHook(model, nn.ReLU())
    with pytest.raises(TypeError):
        FeatureHook(model, 3)
    with pytest.raises(ValueError, match="no nn.Linear"):
        FeatureHook(nn.Sequential(nn.Conv2d(2, 2, 1)))


# ----------------------------------------------------------------------------- Standard, DeCov


def test_standard_is_cross_entropy():
    model = TinyCNN()
    images, labels = batch()
    loss, parts = Standard()(model, images, labels)
    logits = model(images)
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-6)
    assert set(parts) == {"ce", "total", "logits"}
    assert all(not v.requires_grad for v in parts.values())
    assert parts["logits"].shape == (6, 3)


def test_decov_penalty_by_hand():
    h = torch.randn(7, 5, dtype=torch.float64)
    hc = h - h.mean(0)
    cov = hc.T @ hc / 7  # biased, as in the DeCov paper
    expected = 0.5 * ((cov**2).sum() - (torch.diagonal(cov) ** 2).sum())
    assert torch.allclose(decov_penalty(h), expected)


def test_decov_objective_parts():
    model = TinyCNN()
    images, labels = batch()
    with DeCov(model, lambda_decov=0.3) as objective:
        loss, parts = objective(model, images, labels)
        features = model.features(images)
        assert torch.allclose(parts["decov"], decov_penalty(features), atol=1e-6)
        assert torch.allclose(loss, F.cross_entropy(model(images), labels) + 0.3 * parts["decov"], atol=1e-6)
        assert objective.hook._features is None
    assert not model.pool._forward_hooks
    with pytest.raises(RuntimeError, match="closed"):
        objective(model, images, labels)


# ----------------------------------------------------------------------------- SGT


def test_sgt_masks_the_least_salient_fraction_and_uses_train_mode():
    inner = LinearNet()
    model = Recorder(inner).train()
    images, labels = batch()
    loss, parts = SaliencyGuidedTraining(mask_fraction=0.25)(model, images, labels)
    # three passes: saliency (eval), clean (train), masked (train)
    assert [training for _, training in model.calls] == [False, True, True]
    assert torch.equal(model.calls[1][0], images)
    masked = model.calls[2][0]
    changed = (masked != images).any(dim=1)  # (B, H, W) pixels masked across channels
    saliency = inner.fc.weight.detach().view(3, 2, 4, 4)[labels].mean(1)  # (B, H, W)
    for b in range(6):
        assert changed[b].sum() <= 4  # 25% of 16 pixels (a uniform draw may equal the old value)
        order = torch.sort(saliency[b].flatten(), stable=True).indices[:4]
        expected = torch.zeros(16, dtype=torch.bool)
        expected[order] = True
        assert not (changed[b].flatten() & ~expected).any()
        # uniform fill stays inside each channel's [min, max]
        for c in range(2):
            lo, hi = images[b, c].min(), images[b, c].max()
            assert masked[b, c].min() >= lo - 1e-6 and masked[b, c].max() <= hi + 1e-6
    # total = CE + KL(p(x) || p(x_masked)) by hand
    logits, masked_logits = inner(images), inner(masked)
    expected_total = F.cross_entropy(logits, labels) + kl_by_hand(logits, masked_logits)
    assert torch.allclose(loss, expected_total, atol=1e-5)
    assert torch.allclose(parts["consistency"], kl_by_hand(logits, masked_logits), atol=1e-5)


def test_sgt_absolute_saliency_and_mean_fill():
    inner = LinearNet()
    model = Recorder(inner).train()
    images, labels = batch()
    SaliencyGuidedTraining(mask_fraction=0.5, fill="mean", saliency_abs=True)(model, images, labels)
    masked = model.calls[2][0]
    saliency = inner.fc.weight.detach().view(3, 2, 4, 4)[labels].mean(1).abs()
    for b in range(6):
        order = torch.sort(saliency[b].flatten(), stable=True).indices[:8]
        for c in range(2):
            got = masked[b, c].flatten()[order]
            assert torch.allclose(got, images[b, c].mean().expand(8), atol=1e-6)


@pytest.mark.parametrize("masked_bn", MASKED_BN)
def test_masked_bn_modes(masked_bn):
    net = TinyCNN()
    model = Recorder(net).train()
    images, labels = batch()
    loss, parts = SaliencyGuidedTraining(masked_bn=masked_bn)(model, images, labels)
    shapes_modes = [(x.shape[0], training) for x, training in model.calls]
    if masked_bn == "train":
        assert shapes_modes == [(6, False), (6, True), (6, True)]
    elif masked_bn == "joint":
        assert shapes_modes == [(6, False), (12, True)]
        assert torch.equal(model.calls[1][0][:6], images)
    else:
        assert shapes_modes == [(6, False), (6, True), (6, False)]
    assert model.training and net.bn.training
    assert torch.isfinite(loss)
    # the clean logits reported are those of the clean half
    assert parts["logits"].shape == (6, 3)


@pytest.mark.parametrize("masked_bn, updates", [("train", 2), ("joint", 1), ("eval", 1)])
def test_running_stats_updates_per_masked_bn(masked_bn, updates):
    net = TinyCNN().train()
    reference = copy.deepcopy(net)
    images, labels = batch()
    SaliencyGuidedTraining(masked_bn=masked_bn)(net, images, labels)
    assert int(net.bn.num_batches_tracked) == updates
    if masked_bn == "eval":  # only the clean batch reached the running statistics
        reference(images)
        assert torch.allclose(net.bn.running_mean, reference.bn.running_mean)
        assert torch.allclose(net.bn.running_var, reference.bn.running_var)


# ----------------------------------------------------------------------------- SaliencyDecor


@pytest.mark.parametrize("model_cls", [TinyCNN, PlainCNN])
def test_saliency_decor_parts_by_hand(model_cls):
    torch.manual_seed(0)
    inner = model_cls()
    model = Recorder(inner).train()
    images, labels = batch(n=8)
    with SaliencyDecor(model, lambda_consistency=0.7, lambda_decor=0.3) as objective:
        loss, parts = objective(model, images, labels)
        assert set(parts) == {"ce", "consistency", "decor", "total", "logits"}
        masked = model.calls[2][0]
        inner.train()
        logits = inner(images)
        features = inner.features(images)  # the hooked features are the clean batch's pooled features
        masked_logits = inner(masked)
        decor = decorrelation_loss(features, mode="correlation")
        assert torch.allclose(parts["decor"], decor, atol=1e-5)
        expected = F.cross_entropy(logits, labels) + 0.7 * kl_by_hand(logits, masked_logits) + 0.3 * decor
        assert torch.allclose(loss, expected, atol=1e-5)
        assert torch.allclose(parts["total"], loss.detach())
        assert objective.hook._features is None  # nothing kept between steps
    assert not inner.pool._forward_hooks and not inner.fc._forward_pre_hooks


def test_saliency_decor_conv_layer_and_covariance():
    model = TinyCNN().train()
    images, labels = batch(n=8)
    with SaliencyDecor(model, feature_layer="conv", decor_mode="covariance", lambda_decor=1.0) as objective:
        assert objective.feature_layer == "relu"
        _, parts = objective(model, images, labels)
        maps = model.relu(model.bn(model.conv(images)))
        assert torch.allclose(parts["decor"], decorrelation_loss(maps, mode="covariance"), atol=1e-5)


def test_saliency_decor_joint_bn_decorrelates_the_clean_half():
    model = TinyCNN().train()
    images, labels = batch(n=8)
    with SaliencyDecor(model, masked_bn="joint", lambda_decor=1.0) as objective:
        hooked = []
        handle = model.pool.register_forward_hook(lambda m, a, out: hooked.append(out.detach()))
        _, parts = objective(model, images, labels)
        handle.remove()
        joint = hooked[-1]
        assert joint.shape[0] == 16
        assert torch.allclose(parts["decor"], decorrelation_loss(joint[:8]), atol=1e-5)


def test_saliency_decor_rejects_another_model():
    model, other = TinyCNN(), TinyCNN()
    images, labels = batch()
    with SaliencyDecor(model) as objective:
        with pytest.raises(ValueError, match="different model"):
            objective(other, images, labels)


def test_objective_is_not_a_container_of_the_model():
    model = TinyCNN()
    with SaliencyDecor(model) as objective:
        assert list(objective.parameters()) == []
        assert objective.state_dict() == {}


# ----------------------------------------------------------------------------- SCAAT


def test_adaptive_budget_by_hand():
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 97.0]]).view(2, 1, 2, 2)
    # row 0: cumulative 1, 3, 6, 10; <= 0.3 * 10 = 3 -> 2 pixels; row 1: 1, 2, 3, 100; <= 30 -> 3
    assert adaptive_budget(s, 0.3, 0.0, 1.0).tolist() == [2, 3]
    assert adaptive_budget(s, 0.3, 0.0, 0.5).tolist() == [2, 2]
    assert adaptive_budget(s, 0.01, 0.5, 1.0).tolist() == [2, 2]


def test_scaat_perturbs_only_the_budgeted_pixels_within_epsilon():
    model = TinyCNN().train()
    images, labels = batch(n=5)
    objective = SCAAT(epsilon=0.2, steps=3, noise_mass=0.2, generator=torch.Generator().manual_seed(0))
    adversarial, mask = objective.perturb(model, images, labels)
    assert mask.shape == (5, 1, 4, 4) and mask.dtype == torch.bool
    delta = adversarial - images
    assert torch.all(delta[~mask.expand_as(delta)] == 0)
    dims = (2, 3)
    lo, hi = images.amin(dims, keepdim=True), images.amax(dims, keepdim=True)
    assert torch.all(delta.abs() <= 0.2 * (hi - lo) + 1e-6)
    assert torch.all(adversarial >= lo - 1e-6) and torch.all(adversarial <= hi + 1e-6)
    assert delta.abs().sum() > 0
    saliency = input_saliency(model, images, labels, absolute=True)
    k = adaptive_budget(saliency, 0.2, 0.05, 0.75)
    assert mask.flatten(1).sum(1).tolist() == k.tolist()
    assert model.training
    loss, parts = objective(model, images, labels)
    assert set(parts) == {"ce", "consistency", "budget", "total", "logits"}
    assert torch.isfinite(loss) and parts["consistency"] >= 0


# ----------------------------------------------------------------------------- training


def _objectives(model):
    return {
        "standard": Standard(),
        "decov": DeCov(model, lambda_decov=0.1),
        "sgt": SaliencyGuidedTraining(generator=torch.Generator().manual_seed(0)),
        "scaat": SCAAT(generator=torch.Generator().manual_seed(0)),
        "saliencydecor": SaliencyDecor(model, lambda_decor=0.1, generator=torch.Generator().manual_seed(0)),
    }


@pytest.mark.parametrize("name", ["standard", "decov", "sgt", "scaat", "saliencydecor"])
def test_one_training_step_lowers_the_loss(name):
    torch.manual_seed(0)
    model = TinyCNN().train()
    images, labels = batch(n=16)
    objective = _objectives(model)[name]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    saved = [(b, b.clone()) for b in model.buffers()]  # keep BN statistics out of the comparison

    def evaluate():
        if getattr(objective, "generator", None) is not None:
            objective.generator.manual_seed(0)
        return objective(model, images, labels)[0]

    def restore():
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)

    before = evaluate()
    optimizer.zero_grad()
    before.backward()
    restore()
    optimizer.step()
    with torch.no_grad():
        after = evaluate()
    assert after < before
    objective.close()


def test_build_objective_and_bad_arguments():
    model = TinyCNN()
    assert isinstance(build_objective("SGT", model, mask_fraction=0.5), SaliencyGuidedTraining)
    with build_objective("saliencydecor", model, lambda_decor=0.5) as objective:
        assert objective.lambda_decor == 0.5
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("nope", model)
    with pytest.raises(ValueError, match="mask_fraction"):
        SaliencyGuidedTraining(mask_fraction=1.5)
    with pytest.raises(TypeError, match="mask_fraction"):
        SaliencyGuidedTraining(mask_fraction="half")
    with pytest.raises(ValueError, match="masked_bn"):
        SaliencyGuidedTraining(masked_bn="frozen")
    with pytest.raises(ValueError, match="fill"):
        SaliencyGuidedTraining(fill="zeros")
    with pytest.raises(ValueError, match="lambda_decor"):
        SaliencyDecor(model, lambda_decor=-1)
    with pytest.raises(ValueError, match="decor_mode"):
        SaliencyDecor(model, decor_mode="whitening")
    with pytest.raises(ValueError, match="min_fraction"):
        SCAAT(min_fraction=0.8, max_fraction=0.2)
    images, labels = batch()
    with pytest.raises(ValueError, match="labels"):
        Standard()(model, images, labels[:3])
    with pytest.raises(TypeError, match="labels"):
        Standard()(model, images, labels.float())


def test_saliency_decor_defaults_are_the_sweep_choice():
    """The defaults are the setting the design sweep chose (docs/experiments.md)."""
    from sdecor.experiments.sweep import SETTINGS
    from sdecor.losses.saliency_decor import DEFAULTS

    method, options = SETTINGS["sd_m50_abs_lc3"]
    assert method == "saliencydecor" and options == DEFAULTS
    with SaliencyDecor(TinyCNN()) as objective:
        for name, value in DEFAULTS.items():
            if name != "feature_layer":
                assert getattr(objective, name) == value
