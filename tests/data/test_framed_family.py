"""sdecor.data.framed: several digits, the framed one decides the class."""

import numpy as np
import pytest
import torch

from sdecor.data import FRAME_COLOUR, FramedDigits, load_optdigits, make_framed_digits, make_loaders


@pytest.fixture(scope="module")
def framed():
    return make_framed_digits("train", seed=2, n_samples=300, keep_backgrounds=True)


def test_framed_mask_is_exactly_the_framed_digit(framed):
    d = framed
    assert d.images.shape == (300, 3, 32, 32) and d.masks.dtype == torch.bool
    changed = (d.images != d.backgrounds).any(1, keepdim=True)
    assert torch.equal(changed, d.masks)
    # the mask lies inside the framed digit's strip, and the frame colour surrounds it there
    width = 32 // 2
    cols = d.masks[:, 0].any(1)  # (N, W)
    for i in range(20):
        xs = cols[i].nonzero().flatten()
        s = int(d.meta["slot"][i])
        assert xs.min() >= s * width and xs.max() < (s + 1) * width
    frame = (d.backgrounds == torch.tensor(FRAME_COLOUR)[None, :, None, None]).all(1)
    assert frame.flatten(1).sum(1).min() > 20


def test_framed_labels_and_other_digits(framed):
    _, labels = load_optdigits()
    labels = torch.from_numpy(labels.astype(np.int64))
    d = framed
    assert torch.equal(d.labels, labels[d.digit_ids])
    # every other digit is of another class: reading "any digit" is right for 1 / n_digits of the digits
    assert (labels[d.meta["other_ids"]] != d.labels[:, None]).all()
    assert 0.35 < d.meta["slot"].float().mean() < 0.65


def test_framed_split_by_source_digit():
    tr = make_framed_digits("train", seed=0)
    te = make_framed_digits("test", seed=0)
    train_digits = set(tr.digit_ids.tolist()) | set(tr.meta["other_ids"].flatten().tolist())
    test_digits = set(te.digit_ids.tolist()) | set(te.meta["other_ids"].flatten().tolist())
    assert not train_digits & test_digits
    assert len(tr) == 2 * 1438 and len(te) == 2 * 359


def test_framed_deterministic():
    a = make_framed_digits("test", seed=3, n_samples=50, n_digits=3)
    b = make_framed_digits("test", seed=3, n_samples=50, n_digits=3)
    c = make_framed_digits("test", seed=4, n_samples=50, n_digits=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    assert a.meta["other_ids"].shape == (50, 2)


@pytest.mark.parametrize(
    "kwargs, exc", [(dict(n_digits=1), ValueError), (dict(size=16), ValueError), (dict(split="x"), ValueError)]
)
def test_framed_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        make_framed_digits(**kwargs)


def test_framed_loaders():
    _, _, info = make_loaders("framed-digits", batch_size=8, n_train=16, n_test=16)
    assert info.num_classes == 10 and info.has_masks
    assert len(FramedDigits("test", n_samples=4)) == 4
