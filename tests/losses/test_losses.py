"""The training objectives, part by part, on tiny hand-built models."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from nets import PooledCNN as TinyCNN
from nets import PooledCNNWithoutFeatureLayer as PlainCNN
from nets import Recorder
from torch import nn

from sdecor import decorrelation_loss
from sdecor.losses import (
    MASKED_BN,
    OBJECTIVES,
    SCAAT,
    DeCov,
    SaliencyDecor,
    SaliencyGuidedTraining,
    Standard,
    adaptive_budget,
    build_objective,
    consistency_kl,
    decov_penalty,
    input_saliency,
)
from sdecor.losses.masking import eval_mode
from sdecor.models import record_features, resolve_feature_layer


class LinearNet(nn.Module):
    """f(x) = W x + b: its input gradient is known in closed form."""

    def __init__(self, shape=(2, 4, 4), classes=3):
        super().__init__()
        self.shape = shape
        self.fc = nn.Linear(math.prod(shape), classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def hook_count(model):
    """Forward hooks and forward pre-hooks left on any module of ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


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
    assert rec.modes[0] is False
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


def test_record_features_records_inside_the_block_only_and_forgets():
    model = TinyCNN()
    images, _ = batch()
    with record_features(model) as hook:
        assert hook.name == "pool"
        model(images)
        features = hook.pop()
        assert hook.features is None
        with pytest.raises(RuntimeError, match="did not run"):
            hook.pop()
    assert not model.pool._forward_hooks
    assert torch.allclose(features, model.features(images))
    model(images)  # after the block: nothing recorded, no hook
    assert hook.features is None and hook_count(model) == 0


def test_record_features_default_without_declared_layer_is_classifier_input():
    model = PlainCNN()
    images, _ = batch()
    with record_features(model) as hook:
        assert hook.record_input and hook.name.startswith("fc")
        model(images)
        assert torch.allclose(hook.pop(), model.features(images))
    assert not model.fc._forward_pre_hooks


def test_record_features_named_and_conv_layers():
    model = TinyCNN()
    images, _ = batch()
    for layer in ("relu", "conv", model.relu):
        with record_features(model, layer) as hook:
            model(images)
            assert hook.pop().shape == (6, 4, 4, 4)
    assert hook_count(model) == 0
    with pytest.raises(ValueError, match="not a module"):
        with record_features(model, "nope"):
            pass
    with pytest.raises(ValueError, match="not part of the model"):
        with record_features(model, nn.ReLU()):
            pass
    with pytest.raises(TypeError):
        with record_features(model, 3):
            pass
    with pytest.raises(ValueError, match="no nn.Linear"):
        with record_features(nn.Sequential(nn.Conv2d(2, 2, 1))):
            pass


def test_record_features_removes_the_hook_when_the_block_raises():
    model = TinyCNN()
    images, _ = batch()
    with pytest.raises(RuntimeError, match="boom"):
        with record_features(model) as hook:
            model(images)
            raise RuntimeError("boom")
    assert hook.features is None and hook_count(model) == 0

    class Tuple(nn.Module):  # a layer whose output is not a tensor: the hook itself raises
        def forward(self, x):
            return (x,)

    net = nn.Sequential(Tuple())
    with pytest.raises(ValueError, match="not a tensor"):
        with record_features(net, "0"):
            net(images)
    assert hook_count(net) == 0


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
    objective = DeCov(lambda_decov=0.3)
    loss, parts = objective(model, images, labels)
    assert hook_count(model) == 0  # hooked during the call only
    features = model.features(images)
    assert torch.allclose(parts["decov"], decov_penalty(features), atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(model(images), labels) + 0.3 * parts["decov"], atol=1e-6)
    assert not model.pool._forward_hooks
    # nothing is kept between calls: a second call gives the same parts
    torch.testing.assert_close(objective(model, images, labels)[1]["decov"], parts["decov"])


# ----------------------------------------------------------------------------- SGT


def test_sgt_masks_the_least_salient_fraction_and_uses_train_mode():
    inner = LinearNet()
    model = Recorder(inner).train()
    images, labels = batch()
    loss, parts = SaliencyGuidedTraining(mask_fraction=0.25)(model, images, labels)
    # three passes: saliency (eval), clean (train), masked (train)
    assert model.modes == [False, True, True]
    assert torch.equal(model.calls[1], images)
    masked = model.calls[2]
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
    masked = model.calls[2]
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
    shapes_modes = [(x.shape[0], training) for x, training in zip(model.calls, model.modes)]
    if masked_bn in ("train", "frozen"):  # frozen: train mode too, only the running statistics stay
        assert shapes_modes == [(6, False), (6, True), (6, True)]
    elif masked_bn == "joint":
        assert shapes_modes == [(6, False), (12, True)]
        assert torch.equal(model.calls[1][:6], images)
    else:
        assert shapes_modes == [(6, False), (6, True), (6, False)]
    assert model.training and net.bn.training
    assert torch.isfinite(loss)
    # the clean logits reported are those of the clean half
    assert parts["logits"].shape == (6, 3)


@pytest.mark.parametrize("masked_bn, updates", [("train", 2), ("joint", 1), ("eval", 1), ("frozen", 1)])
def test_running_stats_updates_per_masked_bn(masked_bn, updates):
    net = TinyCNN().train()
    reference = copy.deepcopy(net)
    images, labels = batch()
    SaliencyGuidedTraining(masked_bn=masked_bn)(net, images, labels)
    assert int(net.bn.num_batches_tracked) == updates
    if masked_bn in ("eval", "frozen"):  # only the clean batch reached the running statistics
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
    objective = SaliencyDecor(feature_layer="penultimate", lambda_consistency=0.7, lambda_decor=0.3)
    loss, parts = objective(model, images, labels)
    assert hook_count(model) == 0  # nothing kept between steps: the hook lived during the call only
    assert set(parts) == {"ce", "consistency", "decor", "total", "logits"}
    masked = model.calls[2]
    inner.train()
    logits = inner(images)
    features = inner.features(images)  # the hooked features are the clean batch's pooled features
    masked_logits = inner(masked)
    decor = decorrelation_loss(features, mode="correlation")
    assert torch.allclose(parts["decor"], decor, atol=1e-5)
    expected = F.cross_entropy(logits, labels) + 0.7 * kl_by_hand(logits, masked_logits) + 0.3 * decor
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(parts["total"], loss.detach())
    assert not inner.pool._forward_hooks and not inner.fc._forward_pre_hooks


def test_saliency_decor_conv_layer_and_covariance():
    model = TinyCNN().train()
    images, labels = batch(n=8)
    objective = SaliencyDecor(feature_layer="conv", decor_mode="covariance", lambda_decor=1.0)
    assert resolve_feature_layer(model, objective.feature_layer)[2] == "relu"
    _, parts = objective(model, images, labels)
    maps = model.relu(model.bn(model.conv(images)))
    assert torch.allclose(parts["decor"], decorrelation_loss(maps, mode="covariance"), atol=1e-5)


def test_saliency_decor_conv_layer_of_a_model_that_declares_none_is_its_last_conv():
    class Undeclared(TinyCNN):
        conv_feature_layer = None

    model = Undeclared().train()
    images, labels = batch(n=8)
    objective = SaliencyDecor(feature_layer="conv", lambda_decor=1.0)
    assert resolve_feature_layer(model, "conv")[2] == "conv"
    _, parts = objective(model, images, labels)
    raw = model.conv(images)
    assert torch.allclose(parts["decor"], decorrelation_loss(raw), atol=1e-5)
    # the train-mode BatchNorm after it (statistics over the same N*H*W positions) leaves the
    # channel correlations, and so the penalty, as they are (up to its eps)
    torch.testing.assert_close(decorrelation_loss(model.bn(raw)), decorrelation_loss(raw), rtol=2e-3, atol=0)
    assert not torch.allclose(decorrelation_loss(model.relu(model.bn(raw))), decorrelation_loss(raw), atol=1e-3)
    # a model with no conv layer: the default objective says what to pass instead
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"has neither: pass feature_layer=None"):
        SaliencyDecor()(mlp, images, labels)
    assert hook_count(mlp) == 0
    loss, _ = SaliencyDecor(feature_layer=None)(mlp, images, labels)
    assert torch.isfinite(loss)


def test_saliency_decor_joint_bn_decorrelates_the_clean_half():
    model = TinyCNN().train()
    images, labels = batch(n=8)
    objective = SaliencyDecor(feature_layer="penultimate", masked_bn="joint", lambda_decor=1.0)
    hooked = []
    handle = model.pool.register_forward_hook(lambda m, a, out: hooked.append(out.detach()))
    _, parts = objective(model, images, labels)
    handle.remove()
    joint = hooked[-1]
    assert joint.shape[0] == 16
    assert torch.allclose(parts["decor"], decorrelation_loss(joint[:8]), atol=1e-5)


def test_saliency_decor_reads_the_model_it_is_called_with():
    model, other = TinyCNN(), TinyCNN()
    images, labels = batch(n=8)
    objective = SaliencyDecor(feature_layer="penultimate", lambda_decor=1.0)
    for net in (model, other, model):  # one objective, any model, in any order
        _, parts = objective(net, images, labels)
        assert torch.allclose(parts["decor"], decorrelation_loss(net.features(images)), atol=1e-5)
        assert hook_count(model) == 0 and hook_count(other) == 0


def test_objective_is_not_a_container_of_the_model():
    objective = SaliencyDecor()
    objective(TinyCNN(), *batch())
    assert list(objective.parameters()) == []
    assert objective.state_dict() == {"_extra_state": {"step": 1}}  # no tensors: only the ramp's step


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
        "decov": DeCov(lambda_decov=0.1),
        "sgt": SaliencyGuidedTraining(generator=torch.Generator().manual_seed(0)),
        "scaat": SCAAT(generator=torch.Generator().manual_seed(0)),
        "saliencydecor": SaliencyDecor(lambda_decor=0.1, generator=torch.Generator().manual_seed(0)),
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
    assert hook_count(model) == 0


def test_build_objective_and_bad_arguments():
    model = TinyCNN()
    assert isinstance(build_objective("SGT", mask_fraction=0.5), SaliencyGuidedTraining)
    objective = build_objective("saliencydecor", lambda_decor=0.5)
    assert objective.lambda_decor == 0.5
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("nope")
    with pytest.raises(ValueError, match="mask_fraction"):
        SaliencyGuidedTraining(mask_fraction=1.5)
    with pytest.raises(TypeError, match="mask_fraction"):
        SaliencyGuidedTraining(mask_fraction="half")
    with pytest.raises(ValueError, match="masked_bn"):
        SaliencyGuidedTraining(masked_bn="shared")
    with pytest.raises(ValueError, match="fill"):
        SaliencyGuidedTraining(fill="zeros")
    with pytest.raises(ValueError, match="lambda_decor"):
        SaliencyDecor(lambda_decor=-1)
    with pytest.raises(ValueError, match="decor_mode"):
        SaliencyDecor(decor_mode="whitening")
    with pytest.raises(ValueError, match="min_fraction"):
        SCAAT(min_fraction=0.8, max_fraction=0.2)
    images, labels = batch()
    with pytest.raises(ValueError, match="labels"):
        Standard()(model, images, labels[:3])
    with pytest.raises(TypeError, match="labels"):
        Standard()(model, images, labels.float())


def test_saliency_decor_defaults_are_the_grid_choice():
    """The defaults are the grid's ``sd_conv_bn_frozen`` setting: the design sweep's choice
    (docs/experiments.md) with the decorrelation at weight 1 on the last conv layer and the masked
    batch leaving BatchNorm's running statistics alone (docs/grid.md)."""
    from sdecor.experiments.grid import ALL_METHODS
    from sdecor.experiments.sweep import SETTINGS
    from sdecor.losses.saliency_decor import DEFAULTS

    method, sweep = SETTINGS["sd_m50_abs_lc3"]
    assert method == "saliencydecor"
    assert DEFAULTS == {**sweep, "lambda_decor": 1.0, "feature_layer": "conv", "masked_bn": "frozen"}
    assert ALL_METHODS["sd_conv_bn_frozen"] == ("saliencydecor", DEFAULTS)
    objective = SaliencyDecor()
    for name, value in DEFAULTS.items():
        assert getattr(objective, name) == value
    # by default the penalty reads the declared conv feature map's channels
    model = TinyCNN().train()
    images, labels = batch(n=8)
    _, parts = objective(model, images, labels)
    maps = model.relu(model.bn(model.conv(images)))
    assert torch.allclose(parts["decor"], decorrelation_loss(maps), atol=1e-5)


# ----------------------------------------------------------------------------- construction and hooks


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_builds_without_arguments_and_leaves_no_hook(name):
    torch.manual_seed(0)
    objective = OBJECTIVES[name]()
    assert isinstance(build_objective(name), OBJECTIVES[name])
    for model in (TinyCNN().train(), PlainCNN().train()):
        images, labels = batch(n=8)
        loss, parts = objective(model, images, labels)
        assert torch.isfinite(loss) and parts["logits"].shape == (8, 3)
        assert torch.allclose(parts["ce"], F.cross_entropy(parts["logits"], labels), atol=1e-6)
        assert hook_count(model) == 0


class Failing(TinyCNN):
    """Raises in the classifier on the ``fail_at``-th forward pass (after the feature layer ran)."""

    def __init__(self, fail_at):
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        self.calls += 1
        features = self.features(x)
        if self.calls == self.fail_at:
            raise RuntimeError("classifier failed")
        return self.fc(features)


@pytest.mark.parametrize("name", ["decov", "saliencydecor"])
@pytest.mark.parametrize("feature_layer", [None, "conv"])
def test_no_hook_remains_after_a_call_that_raises(name, feature_layer):
    images, labels = batch(n=8)
    # the clean forward (the first for DeCov, the second after the saliency pass for SaliencyDecor) raises
    model = Failing(fail_at=1 if name == "decov" else 2).train()
    objective = build_objective(name, feature_layer=feature_layer)
    with pytest.raises(RuntimeError, match="classifier failed"):
        objective(model, images, labels)
    assert hook_count(model) == 0
    # the same objective still works afterwards, on the same model
    loss, _ = objective(model, images, labels)
    assert torch.isfinite(loss) and hook_count(model) == 0
    # a layer that is not a module of the model raises before any hook is placed
    with pytest.raises(ValueError, match="not a module"):
        build_objective(name, feature_layer="nope")(model, images, labels)
    assert hook_count(model) == 0


def test_objectives_reject_a_module_or_another_type_as_feature_layer():
    model = TinyCNN()
    for cls in (DeCov, SaliencyDecor):
        with pytest.raises(TypeError, match="feature_layer"):
            cls(feature_layer=model.pool)
        with pytest.raises(TypeError, match="feature_layer"):
            cls(feature_layer="")


@pytest.mark.parametrize("name", ["decov", "saliencydecor"])
def test_objectives_see_through_a_wrapper(name):
    net = TinyCNN().train()
    images, labels = batch(n=8)
    torch.manual_seed(0)
    _, bare = build_objective(name)(net, images, labels)
    torch.manual_seed(0)
    _, wrapped = build_objective(name)(nn.DataParallel(net), images, labels)
    key = "decov" if name == "decov" else "decor"
    torch.testing.assert_close(wrapped[key], bare[key])
    assert hook_count(net) == 0


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_options_lists_every_constructor_option_with_its_value(name):
    import inspect
    import json

    cls = OBJECTIVES[name]
    names = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "generator")]
    options = cls().options()
    assert list(options) == names
    json.dumps(options)  # JSON-ready
    assert cls(**options).options() == options  # rebuilds the same objective


def test_options_reports_the_given_values_after_validation():
    objective = SaliencyDecor(lambda_decor=0.25, masked_bn="eval", fill=1, feature_layer="penultimate")
    options = objective.options()
    assert options["lambda_decor"] == 0.25 and options["masked_bn"] == "eval"
    assert options["fill"] == 1.0 and isinstance(options["fill"], float)
    assert options["feature_layer"] == "penultimate"
    assert "generator" not in SaliencyDecor(generator=torch.Generator()).options()


def test_options_raises_when_a_subclass_hides_an_option():
    class Renamed(Standard):
        def __init__(self, smoothing: float = 0.0) -> None:
            super().__init__(label_smoothing=smoothing)

    with pytest.raises(TypeError, match="smoothing"):
        Renamed().options()
