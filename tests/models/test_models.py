"""sdecor.models: shapes, layer names, hook-friendliness."""

import pytest
import torch
from torch import nn

from sdecor.models import (
    MODEL_NAMES,
    ResNet20,
    SmallCNN,
    build_model,
    get_layer,
    record_features,
    resnet20,
    resolve_feature_layer,
    unwrap_model,
)


def _capture(model, name, x):
    out = {}
    h = get_layer(model, name).register_forward_hook(lambda m, i, o: out.setdefault("y", o))
    logits = model(x)
    h.remove()
    return logits, out["y"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_feature_layers(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    x = torch.rand(4, 3, 32, 32)
    logits, feats = _capture(model, model.feature_layer, x)
    assert logits.shape == (4, 7)
    assert feats.shape == (4, model.num_features)
    _, fmap = _capture(model, model.conv_feature_layer, x)
    assert fmap.ndim == 4 and fmap.shape[:2] == (4, model.num_features)
    # the pooled features are the spatial mean of the conv feature map
    torch.testing.assert_close(fmap.mean((2, 3)), feats)


def test_parameter_counts():
    n_small = sum(p.numel() for p in SmallCNN().parameters())
    n_res = sum(p.numel() for p in resnet20().parameters())
    assert 40_000 < n_small < 100_000
    assert 250_000 < n_res < 300_000


@pytest.mark.parametrize("model", [SmallCNN(), resnet20()], ids=["small_cnn", "resnet20"])
def test_relus_are_modules_not_inplace_and_used_once(model):
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    calls = {}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1)) for m in relus]
    model(torch.rand(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert len(calls) == len(relus) and set(calls.values()) == {1}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_double_backward(name):
    torch.manual_seed(0)
    model = build_model(name)
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, torch.tensor([[0], [1], [2]])).sum(), x, create_graph=True)
    g.abs().sum().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_full_backward_hooks_on_relus():
    # RectGrad / guided backprop rewrite the ReLU gradient with module backward hooks
    model = SmallCNN().eval()
    hooks = [
        m.register_full_backward_hook(lambda m, gi, go: (gi[0].clamp(min=0),))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model(x)[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for h in hooks:
        h.remove()


def test_in_channels_and_other_sizes():
    m = SmallCNN(num_classes=3, in_channels=1, width=16)
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    r = ResNet20(num_classes=5, in_channels=1, depth=32)
    assert r(torch.rand(2, 1, 64, 64)).shape == (2, 5)


def test_build_model_config_roundtrip():
    m = build_model("smallcnn", num_classes=4, width=8)
    assert m.config == {"name": "small_cnn", "kwargs": {"num_classes": 4, "in_channels": 3, "width": 8}}
    m2 = build_model(m.config["name"], **m.config["kwargs"])
    m2.load_state_dict(m.state_dict())
    assert isinstance(build_model("ResNet-20"), ResNet20)


def test_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")
    with pytest.raises(TypeError):
        build_model(3)
    with pytest.raises(ValueError, match="6n"):
        ResNet20(depth=21)
    with pytest.raises(ValueError, match="num_classes"):
        SmallCNN(num_classes=0)
    with pytest.raises(ValueError, match="did you mean"):
        get_layer(SmallCNN(), "pol")


def test_get_layer_through_wrapper():
    m = SmallCNN()
    wrapped = nn.DataParallel(m)
    assert get_layer(wrapped, "pool") is m.pool
    assert get_layer(wrapped, "module.pool") is m.pool


def test_introspection_unwraps_and_finds_layers():
    m = SmallCNN(width=8)

    class Compiled(nn.Module):  # what torch.compile returns: the model under _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert unwrap_model(Compiled(nn.DataParallel(m))) is m and unwrap_model(m) is m
    assert get_layer(Compiled(m), "_orig_mod.block4") is m.block4
    assert get_layer(m, m.fc) is m.fc  # a module of the model is accepted as it is
    with pytest.raises(ValueError, match="not part of the model"):
        get_layer(m, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="layer name"):
        get_layer(m, 3)
    with pytest.raises(TypeError, match="nn.Module"):
        get_layer("model", "pool")
    # the penultimate rule: the declared feature layer, "conv", a name
    assert resolve_feature_layer(m) == (m.pool, False, "pool")
    assert resolve_feature_layer(nn.DataParallel(m), "penultimate") == (m.pool, False, "pool")
    assert resolve_feature_layer(m, "conv") == (m.block4, False, "block4")
    assert resolve_feature_layer(m, "block2") == (m.block2, False, "block2")
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert resolve_feature_layer(plain) == (plain[3], True, "3 (input)")
    with pytest.raises(ValueError, match="conv_feature_layer.*nn.Conv2d.*has neither"):
        resolve_feature_layer(plain, "conv")
    # a model that declares no conv layer: its last nn.Conv2d, wrapped or not
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten())
    assert resolve_feature_layer(cnn, "conv") == (cnn[2], False, "2")
    assert resolve_feature_layer(nn.DataParallel(cnn), "conv") == (cnn[2], False, "2")


def test_record_features_hooks_only_inside_the_block():
    m = SmallCNN(width=8).eval()
    x = torch.rand(2, 3, 32, 32)
    with record_features(nn.DataParallel(m), "conv") as record:
        assert len(m.block4._forward_hooks) == 1
        m(x)
        fmap = record.pop()
    assert fmap.shape == (2, 16, 8, 8) and not m.block4._forward_hooks
    with pytest.raises(KeyError):
        with record_features(m) as record:
            m(x)
            raise KeyError("the body fails")
    assert record.features is None and not m.pool._forward_hooks
