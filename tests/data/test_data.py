"""sdecor.data: digits-in-clutter and the loaders."""

import os
import time

import numpy as np
import pytest
import torch

from sdecor.data import (
    DatasetInfo,
    DigitsInClutter,
    ImageFolderDataset,
    load_image,
    load_optdigits,
    make_digits_in_clutter,
    make_loaders,
)


@pytest.fixture(scope="module")
def train_small():
    return make_digits_in_clutter("train", size=32, seed=3, n_samples=400, keep_backgrounds=True)


def test_embedded_digits_are_the_uci_set():
    images, labels = load_optdigits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(np.unique(labels)) == set(range(10))
    assert images.min() == 0 and images.max() == 16
    # the first UCI / scikit-learn digit is a 0
    assert labels[0] == 0 and images[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]


def test_shapes_dtypes_ranges(train_small):
    d = train_small
    assert d.images.shape == (400, 3, 32, 32) and d.images.dtype == torch.float32
    assert d.labels.shape == (400,) and d.labels.dtype == torch.int64
    assert d.masks.shape == (400, 1, 32, 32) and d.masks.dtype == torch.bool
    assert d.images.min() >= 0 and d.images.max() <= 1
    assert set(d.labels.tolist()) == set(range(10))
    # every image has a visible digit of reasonable size
    area = d.masks.flatten(1).float().mean(1)
    assert (area > 0.03).all() and (area < 0.5).all()


def test_masks_cover_exactly_the_digit_pixels(train_small):
    d = train_small
    changed = (d.images != d.backgrounds).any(dim=1, keepdim=True)
    assert torch.equal(changed, d.masks)


def test_labels_match_source_digits(train_small):
    _, labels = load_optdigits()
    assert torch.equal(train_small.labels, torch.from_numpy(labels.astype(np.int64))[train_small.digit_ids])


def test_both_polarities_and_dark_digits_are_dark(train_small):
    d = train_small
    frac = d.inverted.float().mean().item()
    assert 0.35 < frac < 0.65
    digit_mean = (d.images * d.masks).sum((1, 2, 3)) / (3 * d.masks.sum((1, 2, 3)))
    bg_mean = (d.images * ~d.masks).sum((1, 2, 3)) / (3 * (~d.masks).sum((1, 2, 3)))
    assert (digit_mean[d.inverted] < bg_mean[d.inverted]).all()
    assert (digit_mean[~d.inverted] > bg_mean[~d.inverted]).all()
    assert make_digits_in_clutter("test", n_samples=50, invert_fraction=0.0).inverted.sum() == 0
    assert make_digits_in_clutter("test", n_samples=50, invert_fraction=1.0).inverted.all()


def test_clutter_is_present():
    clean = make_digits_in_clutter("train", n_samples=64, n_distractors=0, keep_backgrounds=True)
    busy = make_digits_in_clutter("train", n_samples=64, n_distractors=6, keep_backgrounds=True)
    spread = lambda bg: (bg - bg.mean((2, 3), keepdim=True)).abs().amax((1, 2, 3)).mean()  # noqa: E731
    assert spread(busy.backgrounds) > spread(clean.backgrounds) + 0.2


def test_split_by_digit_identity():
    tr = make_digits_in_clutter("train", seed=0)
    te = make_digits_in_clutter("test", seed=5)
    a, b = set(tr.digit_ids.tolist()), set(te.digit_ids.tolist())
    assert not a & b
    assert len(a) + len(b) == 1797
    assert len(tr) == 2 * len(a) and len(te) == 2 * len(b)
    # the seed changes the renders, never the split
    assert set(make_digits_in_clutter("test", seed=9).digit_ids.tolist()) == b


def test_deterministic_by_seed():
    a = make_digits_in_clutter("train", seed=7, n_samples=300)
    b = make_digits_in_clutter("train", seed=7, n_samples=300)
    c = make_digits_in_clutter("train", seed=8, n_samples=300)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    # train and test of the same seed are different renders of different digits
    t = make_digits_in_clutter("test", seed=7, n_samples=300)
    assert not torch.equal(a.images, t.images)


def test_generation_is_fast():
    # CPU time of this thread with one torch thread: robust to a busy machine (wall time is not)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_digits_in_clutter("test", n_samples=32)  # warm-up
        t0 = time.thread_time()
        make_digits_in_clutter("train")
        make_digits_in_clutter("test")
        cpu = time.thread_time() - t0
    finally:
        torch.set_num_threads(threads)
    assert cpu < 5.0  # about 0.6 s on one core


def test_other_sizes():
    d = make_digits_in_clutter("test", size=48, n_samples=20, keep_backgrounds=True)
    assert d.images.shape == (20, 3, 48, 48)
    assert torch.equal((d.images != d.backgrounds).any(1, keepdim=True), d.masks)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(split="val"), ValueError),
        (dict(size=8), ValueError),
        (dict(size=32.0), TypeError),
        (dict(n_samples=0), ValueError),
        (dict(invert_fraction=1.5), ValueError),
        (dict(test_fraction=0.0), ValueError),
        (dict(scale_range=(0.9, 0.5)), ValueError),
    ],
)
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        make_digits_in_clutter(**kwargs)


def test_dataset_view():
    ds = DigitsInClutter("test", size=32, seed=0, n_samples=20)
    x, y, m = ds[3]
    assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32) and m.dtype == torch.bool
    assert int(y) == int(ds.data.labels[3])
    assert len(ds) == 20 and len(ds.data.dataset()) == 20


def test_make_loaders_digits():
    train, test, info = make_loaders("digits-in-clutter", batch_size=16, n_train=64, n_test=40, seed=1)
    assert isinstance(info, DatasetInfo)
    assert info.num_classes == 10 and info["num_classes"] == 10
    assert info.image_shape == (3, 32, 32) and info.has_masks
    assert info.n_train == 64 and info.n_test == 40
    x, y, m = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,) and m.shape == (16, 1, 32, 32)
    assert len(test.dataset) == 40
    # shuffling is seeded
    a = next(iter(make_loaders(batch_size=16, n_train=64, seed=1)[0]))[1]
    b = next(iter(make_loaders(batch_size=16, n_train=64, seed=1)[0]))[1]
    assert torch.equal(a, b)
    assert info.as_dict()["image_shape"] == [3, 32, 32]


def _write_folder(root, classes=("cat", "dog"), n=5, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, c, f"{i}.png"))


def test_image_folder_split_80_20(tmp_path):
    _write_folder(str(tmp_path), n=5)
    train, test, info = make_loaders(str(tmp_path), batch_size=4, size=16)
    assert info.num_classes == 2 and info.class_names == ["cat", "dog"] and not info.has_masks
    assert info.n_train == 8 and info.n_test == 2
    x, y = next(iter(train))
    assert x.shape == (4, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert set(test.dataset.samples).isdisjoint(train.dataset.samples)


def test_image_folder_train_test_dirs(tmp_path):
    _write_folder(str(tmp_path / "train"), n=3)
    _write_folder(str(tmp_path / "test"), n=2)
    _, _, info = make_loaders(str(tmp_path), batch_size=4, size=8)
    assert (info.n_train, info.n_test) == (6, 4)
    ds = ImageFolderDataset(str(tmp_path / "train"), size=8)
    x, y = ds[5]
    assert x.shape == (3, 8, 8) and int(y) == 1


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        make_loaders(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown data set"):
        make_loaders(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="torchvision:NAME:ROOT"):
        make_loaders("torchvision:CIFAR10")


def test_load_image(tmp_path):
    from PIL import Image

    arr = np.zeros((5, 7, 3), dtype=np.uint8)
    arr[..., 0] = 255
    Image.fromarray(arr).save(tmp_path / "red.png")
    x = load_image(str(tmp_path / "red.png"))
    assert x.shape == (3, 5, 7) and torch.all(x[0] == 1) and torch.all(x[1:] == 0)
    assert load_image(str(tmp_path / "red.png"), 4, channels=1).shape == (1, 4, 4)
    with pytest.raises(FileNotFoundError):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_image(str(tmp_path / "bad.png"))


def test_torchvision_adapter(tmp_path):
    pytest.importorskip("torchvision")
    from sdecor.data import torchvision_dataset

    with pytest.raises(ValueError, match="no data set"):
        torchvision_dataset("NoSuchDataset", str(tmp_path), True)
    with pytest.raises(FileNotFoundError):
        make_loaders(f"torchvision:CIFAR10:{tmp_path}")


def test_torchvision_missing_gives_install_hint(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torchvision" or name.startswith("torchvision."):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"sdecor\[vision\]"):
        make_loaders(f"torchvision:CIFAR10:{tmp_path}")


def test_a_generated_family_must_define_its_generator():
    from sdecor.data.clutter import DigitsInClutter, GeneratedDataset, make_digits_in_clutter

    class NoGenerator(GeneratedDataset):
        classes = ["a"]

    with pytest.raises(TypeError, match="make"):
        NoGenerator()

    class Tiny(GeneratedDataset):
        classes = DigitsInClutter.classes
        make = staticmethod(make_digits_in_clutter)

    data = Tiny("test", size=32, seed=0)
    image, label, mask = data[0]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32) and label.dtype == torch.int64
