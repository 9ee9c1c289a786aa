"""sdecor.data.shortcut: digits-in-clutter with a class cue that holds in training only."""

import pytest
import torch

from sdecor.data import DigitsShortcut, cue_colours_of, make_digits_in_clutter, make_digits_shortcut, make_loaders


@pytest.fixture(scope="module")
def pair():
    tr = make_digits_shortcut("train", seed=1, keep_backgrounds=True)
    te = make_digits_shortcut("test", seed=1, keep_backgrounds=True)
    return tr, te


def test_cue_is_predictive_in_train_not_in_test(pair):
    tr, te = pair
    # the painted colour agrees with the label in ~90% of train and ~10% (chance) of test images
    agree_tr = (tr.meta["cue_colour"] == tr.labels).float().mean().item()
    agree_te = (te.meta["cue_colour"] == te.labels).float().mean().item()
    assert 0.87 < agree_tr < 0.93
    assert 0.06 < agree_te < 0.14
    # a cue-only classifier reading the images: ~0.9 train accuracy, chance in test; the gap is the shortcut
    acc_tr = (cue_colours_of(tr.images) == tr.labels).float().mean().item()
    acc_te = (cue_colours_of(te.images) == te.labels).float().mean().item()
    assert acc_tr > 0.8 and acc_te < 0.16
    assert acc_tr - acc_te > 0.7
    # the reader reads the painted cue (where the digit does not hide it)
    assert (cue_colours_of(tr.images) == tr.meta["cue_colour"]).float().mean() > 0.9


def test_shortcut_masks_are_exactly_the_digit(pair):
    tr, _ = pair
    changed = (tr.images != tr.backgrounds).any(1, keepdim=True)
    assert torch.equal(changed, tr.masks)


def test_shortcut_keeps_digits_in_clutter_split_and_renders():
    base = make_digits_in_clutter("test", seed=3, keep_backgrounds=True)
    cut = make_digits_shortcut("test", seed=3)
    assert torch.equal(base.digit_ids, cut.digit_ids) and torch.equal(base.masks, cut.masks)
    # only the cue square changed the image
    diff = (base.images != cut.images).any(1).flatten(1).sum(1)
    side = 32 // 6
    assert (diff <= side * side).all() and (diff > 0).float().mean() > 0.9
    tr = make_digits_shortcut("train", seed=3)
    assert not set(tr.digit_ids.tolist()) & set(cut.digit_ids.tolist())


def test_shortcut_deterministic():
    a = make_digits_shortcut("train", seed=6, n_samples=200)
    b = make_digits_shortcut("train", seed=6, n_samples=200)
    c = make_digits_shortcut("train", seed=7, n_samples=200)
    assert torch.equal(a.images, b.images) and torch.equal(a.meta["cue_colour"], b.meta["cue_colour"])
    assert not torch.equal(a.images, c.images)


def test_test_agreement_option():
    te = make_digits_shortcut("test", seed=0, test_cue_agreement=1.0)
    assert torch.equal(te.meta["cue_colour"], te.labels)
    tr = make_digits_shortcut("train", seed=0, cue_agreement=0.0, n_samples=100)
    assert not (tr.meta["cue_colour"] == tr.labels).any()


@pytest.mark.parametrize(
    "kwargs, exc",
    [(dict(cue_agreement=1.5), ValueError), (dict(cue_agreement="x"), TypeError), (dict(cue_size=0), ValueError)],
)
def test_shortcut_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        make_digits_shortcut(**kwargs)


def test_shortcut_loaders():
    _, test, info = make_loaders("digits-shortcut", batch_size=8, n_train=16, n_test=16)
    assert info.num_classes == 10 and info.has_masks
    assert len(DigitsShortcut("test", n_samples=5)) == 5
