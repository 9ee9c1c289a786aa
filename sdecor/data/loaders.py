"""Loaders: the embedded data set, ImageFolder directories (Pillow) and torchvision data sets.

See :mod:`sdecor.data` for the contract of :func:`make_loaders`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._validation import check_int
from .clutter import DigitsInClutter
from .framed import FramedDigits
from .shapes import ShapesInTexture
from .shortcut import DigitsShortcut

__all__ = ["DATASET_NAMES", "DatasetInfo", "ImageFolderDataset", "load_image", "make_loaders", "torchvision_dataset"]

#: Built-in (generated) data sets: name -> Dataset class ``(split, size, seed, **kwargs)`` with ``.classes``.
GENERATED = {
    "digits-in-clutter": DigitsInClutter,
    "shapes-in-texture": ShapesInTexture,
    "digits-shortcut": DigitsShortcut,
    "framed-digits": FramedDigits,
}
#: Built-in data set names (anything else is a directory or ``torchvision:NAME:ROOT``).
DATASET_NAMES = tuple(GENERATED)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class DatasetInfo:
    """What a model and the metrics need to know about a data set."""

    name: str
    num_classes: int
    image_shape: tuple  # (C, H, W)
    has_masks: bool
    class_names: list = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    # mapping-style access, so ``info["num_classes"]`` works as well as ``info.num_classes``
    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key, default) if key in self.__dataclass_fields__ else default

    def keys(self):
        return self.__dataclass_fields__.keys()


def load_image(path: str, size: int | tuple | None = None, channels: int = 3) -> torch.Tensor:
    """Read one image file as float32 (channels, H, W) in [0, 1] (RGB for 3 channels, grey for 1),
    resized (bilinear) to ``size`` (an int for a square, or (H, W)) when given."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if size is not None:
                h, w = (size, size) if isinstance(size, int) else tuple(size)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    t = torch.from_numpy(arr.copy()).float().div_(255.0)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _list_class_dir(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    items = []
    for ci, c in enumerate(classes):
        for dirpath, dirnames, files in os.walk(os.path.join(root, c), followlinks=True):
            dirnames.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    items.append((os.path.join(dirpath, f), ci))
    return classes, items


class ImageFolderDataset(Dataset):
    """``root/<class>/**/<image>`` (classes sorted by name), read with Pillow.

    Items are ``(image float32 (channels, size, size) in [0, 1], label int64 tensor)``.
    ``files`` (a list of ``(path, class_index)``) overrides the directory listing (used for
    the 80/20 split); ``classes`` then names the classes.
    """

    def __init__(self, root: str, size: int = 32, files=None, classes=None, channels: int = 3):
        if files is None:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"image folder not found: {root}")
            classes, files = _list_class_dir(root)
        if not files:
            raise ValueError(
                f"no images found under {root} (expected {root}/<class>/<image>, extensions "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        self.root = root
        self.size = size
        self.channels = channels
        self.classes = list(classes)
        self.samples = list(files)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return load_image(path, self.size, self.channels), torch.tensor(label, dtype=torch.long)


def torchvision_dataset(name: str, root: str, train: bool, download: bool = False, size: int | None = None):
    """``torchvision.datasets.<name>(root, train=train, download=download)`` with a transform to
    float tensors in [0, 1] (resized to ``size`` when given). Data sets with a ``split``
    argument instead of ``train`` (SVHN, STL10, ...) get ``split="train"/"test"``.

    Raises ``ImportError`` (with the install hint) without torchvision, ``ValueError`` for an
    unknown data set name and ``FileNotFoundError`` when the files are missing and
    ``download`` is False.
    """
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets, transforms
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise ImportError(
            f"the torchvision:{name} data set needs torchvision ('pip install sdecor[vision]'); "
            f"importing it failed: {exc}"
        ) from exc
    cls = getattr(datasets, name, None)
    if cls is None or not isinstance(cls, type):
        known = sorted(n for n in dir(datasets) if n[:1].isupper() and isinstance(getattr(datasets, n), type))
        raise ValueError(f"torchvision.datasets has no data set {name!r}; known: {', '.join(known)}")
    tf = [transforms.ToTensor()]
    if size is not None:
        tf.insert(0, transforms.Resize((size, size)))
    transform = transforms.Compose(tf)
    import inspect

    params = inspect.signature(cls.__init__).parameters
    kwargs = dict(transform=transform, download=download)
    if "train" in params:
        kwargs["train"] = train
    elif "split" in params:
        kwargs["split"] = "train" if train else "test"
    try:
        return cls(root, **kwargs)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        if "not found" in str(exc).lower() or "download" in str(exc).lower():
            raise FileNotFoundError(
                f"torchvision {name} not found under {root} (pass download=True to fetch it): {exc}"
            ) from exc
        raise


def _num_classes_of(ds) -> tuple[int, list]:
    classes = getattr(ds, "classes", None)
    if classes:
        return len(classes), [str(c) for c in classes]
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    if targets is not None:
        n = int(torch.as_tensor(np.asarray(targets)).max()) + 1
        return n, [str(i) for i in range(n)]
    raise ValueError("cannot tell the number of classes of this data set (no .classes or .targets)")


def _cap(ds, n: int | None, what: str):
    if n is None:
        return ds
    check_int(n, what, low=1)
    return ds if n >= len(ds) else Subset(ds, range(n))


def _split_folder(root: str, size: int, test_fraction: float = 0.2):
    classes, items = _list_class_dir(root)
    by_class: dict = {}
    for path, c in items:
        by_class.setdefault(c, []).append((path, c))
    train, test = [], []
    rng = np.random.default_rng(0)
    for c in sorted(by_class):
        files = by_class[c]
        order = rng.permutation(len(files))
        n_test = int(round(test_fraction * len(files))) if len(files) > 1 else 0
        test += [files[i] for i in sorted(order[:n_test])]
        train += [files[i] for i in sorted(order[n_test:])]
    if not train:
        raise ValueError(f"no images found under {root} (expected {root}/<class>/<image>)")
    tr = ImageFolderDataset(root, size, files=train, classes=classes)
    te = ImageFolderDataset(root, size, files=test, classes=classes) if test else None
    return tr, te, classes


def make_loaders(
    name: str = "digits-in-clutter",
    batch_size: int = 128,
    *,
    size: int = 32,
    seed: int = 0,
    num_workers: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    distributed: bool | None = None,
    download: bool = False,
    test_batch_size: int | None = None,
    **dataset_kwargs,
):
    """Build ``(train_loader, test_loader, info)``; see :mod:`sdecor.data` for ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    check_int(batch_size, "batch_size", low=1)
    check_int(size, "size", low=1)
    check_int(num_workers, "num_workers", low=0)
    if name in DATASET_NAMES:
        family = GENERATED[name]
        train_ds = family("train", size, seed, **dataset_kwargs)
        test_ds = family("test", size, seed, **dataset_kwargs)
        classes, shape, has_masks = family.classes, (3, size, size), True
    elif name.startswith("torchvision:"):
        parts = name.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"expected 'torchvision:NAME:ROOT' (e.g. torchvision:CIFAR10:/data), got {name!r}")
        if dataset_kwargs:
            raise TypeError(f"unexpected arguments for a torchvision data set: {sorted(dataset_kwargs)}")
        _, tv_name, root = parts
        train_ds = torchvision_dataset(tv_name, root, True, download=download)
        test_ds = torchvision_dataset(tv_name, root, False, download=download)
        _, classes = _num_classes_of(train_ds)
        x0 = train_ds[0][0]
        shape, has_masks = tuple(x0.shape), False
    elif os.path.isdir(name):
        if dataset_kwargs:
            raise TypeError(f"unexpected arguments for an image folder: {sorted(dataset_kwargs)}")
        sub = {d.lower(): d for d in os.listdir(name) if os.path.isdir(os.path.join(name, d))}
        if "train" in sub and ("test" in sub or "val" in sub):
            train_ds = ImageFolderDataset(os.path.join(name, sub["train"]), size)
            test_ds = ImageFolderDataset(os.path.join(name, sub.get("test", sub.get("val"))), size)
            if test_ds.classes != train_ds.classes:
                raise ValueError(
                    f"train and test class folders differ under {name}: {train_ds.classes} vs {test_ds.classes}"
                )
        else:
            train_ds, test_ds, _ = _split_folder(name, size)
        classes, shape, has_masks = train_ds.classes, (3, size, size), False
    else:
        raise ValueError(
            f"unknown data set {name!r}: expected one of {DATASET_NAMES}, an existing image-folder directory, "
            "or 'torchvision:NAME:ROOT'"
        )
    train_ds = _cap(train_ds, n_train, "n_train")
    test_ds = _cap(test_ds, n_test, "n_test") if test_ds is not None else None

    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    pin = torch.cuda.is_available()
    gen = torch.Generator().manual_seed(int(seed))
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, shuffle=shuffle, seed=int(seed), drop_last=drop_last)
        train_loader = DataLoader(
            train_ds,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=pin,
        )
    else:
        train_loader = DataLoader(
            train_ds,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=gen,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=pin,
        )
    test_loader = None
    if test_ds is not None:
        test_loader = DataLoader(
            test_ds,
            batch_size=test_batch_size or max(batch_size, 256),
            shuffle=False,
            num_workers=num_workers,
            pin_memory=pin,
        )
    info = DatasetInfo(
        name=name,
        num_classes=len(classes),
        image_shape=tuple(int(s) for s in shape),
        has_masks=has_masks,
        class_names=[str(c) for c in classes],
        n_train=len(train_ds),
        n_test=len(test_ds) if test_ds is not None else 0,
    )
    return train_loader, test_loader, info
