"""SaliencyDecor's robustness options against hand computation: the consistency ramp, the
stop-gradient (fixed) target of the KL, and ``masked_bn="frozen"``."""

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import Recorder
from torch import nn

from sdecor import decorrelation_loss
from sdecor.losses import SaliencyDecor, consistency_kl


class Tiny(nn.Module):
    feature_layer = "pool"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 3)

    def features(self, x):
        return self.pool(self.relu(self.bn(self.conv(x))))

    def forward(self, x):
        return self.fc(self.features(x))


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 5, 5, generator=g), torch.randint(3, (n,), generator=g)


def _kl(clean, masked, detach=False):
    p = F.softmax(clean, 1)
    if detach:
        p = p.detach()
    return (p * (p.log() - F.log_softmax(masked, 1))).sum(1).mean()


def test_ramp_weight_at_step_t_and_the_loss_by_hand():
    torch.manual_seed(0)
    inner = Tiny()
    model = Recorder(inner).train()
    images, labels = _batch()
    if True:
        obj = SaliencyDecor(
            feature_layer="penultimate", lambda_consistency=2.0, lambda_decor=0.3, consistency_ramp_steps=4, fill=0.0
        )
        for t in range(6):
            expected_w = 2.0 * min(1.0, t / 4)
            assert obj.consistency_weight() == pytest.approx(expected_w)
            model.calls.clear()
            loss, parts = obj(model, images, labels)
            masked = model.calls[-1]
            logits = inner(images)
            hand = (
                F.cross_entropy(logits, labels)
                + expected_w * _kl(logits, inner(masked))
                + 0.3 * decorrelation_loss(inner.features(images))
            )
            assert torch.allclose(loss, hand, atol=1e-5), t
            assert int(obj.step) == t + 1
        assert obj.consistency_weight() == 2.0
        # evaluation (eval mode or no grad) does not advance the ramp
        obj.eval()
        obj(model, images, labels)
        obj.train()
        with torch.no_grad():
            obj(model, images, labels)
        assert int(obj.step) == 6
        # the ramp's step travels with the state_dict (checkpoints), and comes back
        state = obj.state_dict()
        assert state == {"_extra_state": {"step": 6}}
        fresh = SaliencyDecor(lambda_consistency=2.0, lambda_decor=0.3, consistency_ramp_steps=4, fill=0.0)
        fresh.load_state_dict(state)
        assert fresh.step == 6 and fresh.consistency_weight() == 2.0


def test_no_ramp_is_the_constant_weight():
    assert SaliencyDecor(lambda_consistency=3.0).consistency_weight() == 3.0
    with pytest.raises(ValueError):
        SaliencyDecor(consistency_ramp_steps=-1)
    with pytest.raises(TypeError):
        SaliencyDecor(consistency_ramp_steps=1.5)


def test_stop_gradient_target_by_hand():
    torch.manual_seed(1)
    inner = Tiny()
    model = Recorder(inner).train()
    images, labels = _batch(seed=3)
    grads = {}
    for detach in (True, False):
        net = copy.deepcopy(model)
        obj = SaliencyDecor(lambda_consistency=1.5, lambda_decor=0.0, detach_target=detach, fill=0.0)
        loss, _ = obj(net, images, labels)
        loss.backward()
        grads[detach] = [p.grad.clone() for p in net.inner.parameters()]
        masked = net.calls[-1]
        ref = copy.deepcopy(inner)
        logits = ref(images)
        hand = F.cross_entropy(logits, labels) + 1.5 * _kl(logits, ref(masked), detach=detach)
        hand.backward()
        for got, want in zip(grads[detach], [p.grad for p in ref.parameters()]):
            assert torch.allclose(got, want, atol=1e-6)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[True], grads[False]))


def test_stop_gradient_target_gives_no_gradient_to_the_clean_logits():
    clean = torch.randn(4, 5, requires_grad=True)
    masked = torch.randn(4, 5, requires_grad=True)
    consistency_kl(clean, masked, detach_target=True).backward()
    assert clean.grad is None or torch.count_nonzero(clean.grad) == 0
    assert torch.count_nonzero(masked.grad) > 0
    clean.grad = None
    consistency_kl(clean, masked).backward()
    assert torch.count_nonzero(clean.grad) > 0


@pytest.mark.parametrize("mode", ["frozen", "train"])
def test_frozen_masked_bn_leaves_running_stats_to_the_clean_batch(mode):
    torch.manual_seed(2)
    model = Tiny().train()
    clean_only = copy.deepcopy(model)
    images, labels = _batch(seed=5)
    obj = SaliencyDecor(masked_bn=mode, fill=0.0)
    loss, _ = obj(model, images, labels)
    loss.backward()  # the graph survives the frozen statistics
    clean_only(images)  # one train-mode forward of the clean batch
    same = torch.allclose(model.bn.running_mean, clean_only.bn.running_mean) and torch.allclose(
        model.bn.running_var, clean_only.bn.running_var
    )
    assert same == (mode == "frozen")
    assert int(model.bn.num_batches_tracked) == (1 if mode == "frozen" else 2)
    assert model.bn.momentum == clean_only.bn.momentum


# ----------------------------------------------------------------------------- adversarial fill


class Linear(nn.Module):
    """Logits W x + b of the flattened image (no BatchNorm: eval and train mode agree)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _masked_batch(seed=0):
    images, labels = _batch(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(images.shape[0], 1, 5, 5, generator=g) < 0.5
    fill = torch.rand(images.shape, generator=g)
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    masked = torch.where(mask, low + fill * (high - low), images)
    return images, labels, masked, mask, low, high


def test_value_range_per_sample_channel():
    from sdecor.losses.masking import value_range

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)[..., ::2]  # non-contiguous
    low, high = value_range(x)
    assert low.shape == high.shape == (2, 3, 1, 1)
    for b in range(2):
        for c in range(3):
            assert low[b, c, 0, 0] == x[b, c].min() and high[b, c, 0, 0] == x[b, c].max()
    flat = torch.tensor([[3.0, -1.0, 2.0], [0.5, 0.5, 0.25]])  # (B, F): per sample
    low, high = value_range(flat)
    assert torch.equal(low, torch.tensor([[-1.0], [0.25]])) and torch.equal(high, torch.tensor([[3.0], [0.5]]))


def test_adversarial_fill_one_step_by_hand():
    from sdecor.losses.masking import adversarial_fill

    model = Linear()
    images, _, masked, mask, low, high = _masked_batch()
    got = adversarial_fill(model, images, masked, mask, steps=1, step_size=0.1)
    # by hand: the sign of d KL(p(x) || p(x_m)) / d x_m, a step of 0.1 * range on the masked pixels
    xm = masked.clone().requires_grad_(True)
    kl = _kl(model(images).detach(), model(xm))
    (grad,) = torch.autograd.grad(kl, xm)
    want = (masked + 0.1 * (high - low) * grad.sign() * mask).clamp(min=low, max=high)
    assert torch.equal(got, want)
    keep = ~mask.expand_as(images)
    assert torch.equal(got[keep], masked[keep])  # the other pixels are the images'
    moved = (got - masked).abs()[mask.expand_as(images)]
    assert bool((moved > 0).any()) and bool(((got >= low) & (got <= high)).all())
    assert _kl(model(images), model(got)) > _kl(model(images), model(masked))  # the prediction moved away
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient touched
    assert adversarial_fill(model, images, masked, mask, steps=0, step_size=0.1) is not masked
    assert torch.equal(adversarial_fill(model, images, masked, mask, steps=0, step_size=0.1), masked)


def test_adversarial_fill_steps_stay_in_range_and_raise_the_kl():
    from sdecor.losses.masking import adversarial_fill

    model = Linear(seed=1)
    images, _, masked, mask, low, high = _masked_batch(seed=2)
    kls = []
    for steps in (0, 1, 3):
        out = adversarial_fill(model, images, masked, mask, steps=steps, step_size=0.05)
        assert bool(((out >= low) & (out <= high)).all())
        kls.append(_kl(model(images), model(out)).item())
    assert kls[0] < kls[1] < kls[2]


def test_saliencydecor_adversarial_steps():
    images, labels = _batch()
    torch.manual_seed(0)
    model = Tiny()
    plain = SaliencyDecor(fill=0.0)
    zero = SaliencyDecor(fill=0.0, adversarial_steps=0)
    assert repr(zero) == repr(plain)  # the repr checkpoints record is unchanged without the option
    twin = copy.deepcopy(model)  # a call moves BatchNorm's running statistics, which the saliency uses
    assert torch.equal(plain(model, images, labels)[0], zero(twin, images, labels)[0])
    recorder = Recorder(model)
    adv = SaliencyDecor(fill=0.0, adversarial_steps=2, adversarial_step_size=0.3, masked_bn="eval")
    assert "adversarial_steps=2, adversarial_step_size=0.3" in repr(adv)
    loss, parts = adv(recorder, images, labels)
    # calls: saliency, target, 2 attack steps, clean, masked; the masked batch is the attack's result
    assert len(recorder.calls) == 6
    masked_batch = recorder.calls[-1]
    zero_filled = recorder.calls[2]  # the attack starts from the fill (0.0 here)
    changed = masked_batch != zero_filled
    assert bool(changed.any())
    assert torch.equal(masked_batch[~changed], zero_filled[~changed])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="adversarial_steps"):
        SaliencyDecor(adversarial_steps=-1)
    with pytest.raises(TypeError, match="adversarial_steps"):
        SaliencyDecor(adversarial_steps=1.5)
    with pytest.raises(ValueError, match="adversarial_step_size"):
        SaliencyDecor(adversarial_step_size=0.0)
