"""DANCE: every decoy satisfies its constraints; the map is the range over the decoy population."""

import pytest
import torch
from nets import two_conv_cnn as cnn
from torch import nn

from sdecor.saliency import DANCE, Gradient, InputXGradient, SmoothGrad


def check_decoys(model, layer, x, result, atol=1e-6):
    """Range, patch support and the eps bound on the layer's activations, for every decoy."""
    B, D = result.decoys.shape[:2]
    assert result.patch_masks.shape == (D,) + x.shape[-2:]
    decoys = result.decoys
    # range
    assert (decoys >= result.x_min[:, None]).all() and (decoys <= result.x_max[:, None]).all()
    # support: identical to x outside the decoy's patch
    outside = ~result.patch_masks[None, :, None]  # (1, D, 1, H, W)
    assert torch.equal(torch.where(outside, decoys, 0), torch.where(outside, x[:, None].expand_as(decoys), 0))
    # activations within eps
    with torch.no_grad():
        phi0 = layer_output(model, layer, x)
        phi = layer_output(model, layer, decoys.flatten(0, 1)).reshape((B, D) + phi0.shape[1:])
    dev = (phi - phi0[:, None]).abs().flatten(2).amax(2)
    assert (dev <= result.tolerance[:, None] + atol).all(), (dev / result.tolerance[:, None]).max()
    # directions: even decoys raise the patch, odd ones lower it
    change = (decoys - x[:, None]).flatten(2).sum(2)
    assert (change[:, 0::2] >= 0).all() and (change[:, 1::2] <= 0).all()
    return change


def layer_output(model, layer, x):
    store = []
    h = layer.register_forward_hook(lambda m, i, o: store.append(o))
    try:
        model(x)
    finally:
        h.remove()
    return store[0]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"patch_size": 2, "stride": 3},  # gaps between patches, plus the flush last position
        {"eps": 0.5, "eps_mode": "absolute", "patch_size": 4, "stride": 2},
        {"x_min": torch.tensor([0.0, -0.5]).view(2, 1, 1), "x_max": 1.5, "n_steps": 20},
        {"n_steps": 0},  # no solver steps: the input itself (gain 0) is the fallback
    ],
)
def test_every_decoy_satisfies_its_constraints(options):
    model = cnn()
    x = torch.rand(2, 2, 7, 7)
    dance = DANCE(model, "gradient", model[1], decoy_batch_size=13, **options)
    result = dance.decoys(x)
    change = check_decoys(model, model[1], x, result)
    if options.get("n_steps", 1) > 0:
        assert (change[:, 0::2] > 0).float().mean() > 0.5
        assert (change[:, 1::2] < 0).float().mean() > 0.5
    else:
        assert (change == 0).all()


def test_patches_cover_every_pixel_once_per_direction():
    model = cnn()
    x = torch.rand(1, 2, 7, 7)
    result = DANCE(model, "gradient", model[0], patch_size=3, n_steps=2).decoys(x)
    masks = result.patch_masks
    assert masks.shape[0] == 2 * 9  # starts 0, 3 and the flush 4, in each direction
    assert masks[0::2].any(0).all()
    assert torch.equal(masks[0::2], masks[1::2])
    assert (masks.flatten(1).sum(1) == 9).all()


def test_default_range_is_the_batch_range_and_layer_by_name():
    model = cnn()
    x = torch.rand(3, 2, 7, 7) * 2 - 0.5
    result = DANCE(model, "gradient", "2", n_steps=10).decoys(x)  # the second conv, by name
    assert torch.equal(result.x_min, x.amin().expand_as(x)) and torch.equal(result.x_max, x.amax().expand_as(x))
    check_decoys(model, model[2], x, result)


def test_map_is_range_over_population():
    model = cnn()
    x = torch.rand(2, 2, 7, 7)
    dance = DANCE(model, Gradient, model[1], n_steps=15, decoy_batch_size=7)
    result = dance.decoys(x)
    target = model(x).argmax(1)
    base = Gradient(model)
    maps = base.attribute(result.decoys.flatten(0, 1), target.repeat_interleave(result.decoys.shape[1]))
    maps = torch.cat([maps.reshape(result.decoys.shape), base.attribute(x, target)[:, None]], 1)
    expected = maps.amax(1) - maps.amin(1)
    out = dance.attribute(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out >= 0).all() and out.shape == x.shape
    # chunking does not change the decoys or the map
    torch.testing.assert_close(dance.attribute(x, decoy_batch_size=1000), out, rtol=1e-5, atol=1e-6)


def test_base_method_forms():
    model = cnn()
    x = torch.rand(1, 2, 7, 7)
    by_name = DANCE(model, "input_x_gradient", model[1], n_steps=3).attribute(x, 0)
    by_class = DANCE(model, InputXGradient, model[1], n_steps=3).attribute(x, 0)
    by_instance = DANCE(model, InputXGradient(model), model[1], n_steps=3).attribute(x, 0)
    torch.testing.assert_close(by_name, by_class)
    torch.testing.assert_close(by_name, by_instance)
    sg = DANCE(model, SmoothGrad(model, n_samples=2), model[1], n_steps=2).attribute(x, 0)
    assert sg.shape == x.shape
    with pytest.raises(ValueError, match="base_method"):
        DANCE(model, "dance", model[1])
    with pytest.raises(ValueError, match="base_method"):
        DANCE(model, "occlusion", model[1])
    with pytest.raises(TypeError, match="base_method"):
        DANCE(model, 3, model[1])


def test_errors_and_cleanup():
    model = cnn()
    x = torch.rand(2, 2, 7, 7)
    with pytest.raises(ValueError, match="layer"):
        DANCE(model, "gradient")
    with pytest.raises(ValueError, match="layer"):
        DANCE(model, "gradient", nn.ReLU())  # not part of the model
    with pytest.raises(ValueError, match="layer"):
        DANCE(model, "gradient", "nope")
    with pytest.raises(ValueError, match="patch_size"):
        DANCE(model, "gradient", model[1], patch_size=9).attribute(x, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        DANCE(model, "gradient", model[1]).attribute(torch.rand(2, 98), 0)
    with pytest.raises(ValueError, match="x_min"):
        DANCE(model, "gradient", model[1], x_min=0.5).attribute(x, 0)
    with pytest.raises(ValueError, match="target"):
        DANCE(model, "gradient", model[1], n_steps=1).attribute(x, 5)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.spare = nn.Linear(98, 3), nn.ReLU()

        def forward(self, z):
            return self.head(z.flatten(1))

    unused = Unused().eval()
    with pytest.raises(ValueError, match="not called"):
        DANCE(unused, "gradient", unused.spare).attribute(x, 0)
    with pytest.warns(UserWarning, match="train mode"):
        DANCE(model.train(), "gradient", model[1], n_steps=1).decoys(x)
    model.eval()
    for m in list(model.modules()) + list(unused.modules()):
        assert not m._forward_hooks
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.cuda
def test_dance_on_cuda(cuda_device):
    model = cnn().to(cuda_device)
    x = torch.rand(2, 2, 7, 7, device=cuda_device)
    dance = DANCE(model, "gradient", model[1], n_steps=10)
    result = dance.decoys(x)
    assert result.decoys.device.type == "cuda"
    check_decoys(model, model[1], x, result, atol=1e-5)
    assert dance.attribute(x).device.type == "cuda"
