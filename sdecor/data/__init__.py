"""Data: the embedded "digits-in-clutter" data set and loaders for data the user has.

Public API (stable; other modules and the ``compare`` command build on it)
-------------------------------------------------------------------------

``make_digits_in_clutter(split="train", size=32, seed=0, *, n_samples=None, renders_per_digit=2,
invert_fraction=0.5, n_distractors=2, test_fraction=0.2, split_seed=0, keep_backgrounds=False,
device="cpu") -> ClutterData``
    Renders the whole split at once, vectorised in torch (a few thousand 32 x 32 images in well
    under a second on a CPU). Deterministic: the same arguments give bit-identical tensors.

``ClutterData`` (a dataclass) with tensors
    ``images``  float32 (N, 3, H, W) in [0, 1] (no normalisation applied),
    ``labels``  int64 (N,) digit class 0..9,
    ``masks``   bool (N, 1, H, W): True exactly on the digit's pixels (ground truth for the
                pointing game and relevance-mass metrics),
    ``digit_ids`` int64 (N,): index of the source digit (0..1796) each image was rendered from,
    ``inverted`` bool (N,): True for dark-on-light images, False for light-on-dark,
    ``backgrounds`` float32 (N, 3, H, W) or None: the canvas before the digit was drawn
                (only with ``keep_backgrounds=True``; outside the mask ``images == backgrounds``).
    ``len(data)``, ``data.dataset()`` -> ``torch.utils.data.TensorDataset(images, labels, masks)``,
    ``data.to(device)``.

``DigitsInClutter(split="train", size=32, seed=0, **kwargs)``
    A ``torch.utils.data.Dataset`` over the same tensors (kwargs as above); item ``i`` is
    ``(image (3, H, W) float32, label int64 scalar tensor, mask (1, H, W) bool)``. Its ``.data``
    is the underlying ``ClutterData``.

``make_loaders(name="digits-in-clutter", batch_size=128, *, size=32, seed=0, num_workers=0,
n_train=None, n_test=None, shuffle=True, drop_last=False, distributed=None, download=False,
**dataset_kwargs) -> (train_loader, test_loader, DatasetInfo)``
    ``name`` is one of
      * ``"digits-in-clutter"`` (the default, embedded; ``dataset_kwargs`` go to
        ``make_digits_in_clutter``),
      * a path to an ImageFolder-style directory: ``root/train/<class>/*.png`` and
        ``root/test/<class>/*`` (``val/`` is accepted for ``test/``); without such sub-folders
        ``root/<class>/*`` is split 80/20 per class, deterministically. Images are read with
        Pillow, converted to RGB and resized to ``size`` x ``size``,
      * ``"torchvision:NAME:ROOT"`` (e.g. ``"torchvision:CIFAR10:/data"``), a dataset class of
        ``torchvision.datasets`` constructed as ``NAME(ROOT, train=..., download=download)``;
        needs the optional extra ``sdecor[vision]``.
    Batches are tuples whose first two entries are always ``(images, labels)``; with
    ``info.has_masks`` a third entry is the (B, 1, H, W) bool ground-truth mask. The train loader
    shuffles with a generator seeded by ``seed``. ``n_train`` / ``n_test`` cap the sizes (the
    first n items, so deterministic). ``distributed=None`` means "use a DistributedSampler when
    torch.distributed is initialised" (``sdecor.train.fit`` also does this for you).

``DatasetInfo`` (dataclass; also readable as a mapping, ``info["num_classes"]``): ``name``,
``num_classes``, ``image_shape`` (C, H, W), ``has_masks``, ``class_names``, ``n_train``,
``n_test``; ``info.as_dict()`` is JSON-ready (store it in checkpoint meta under ``"data"``).

``load_optdigits() -> (images uint8 (1797, 8, 8) in 0..16, labels uint8 (1797,))``: the raw
embedded digits (see ``OPTDIGITS_LICENSE.txt``: UCI ML repository, Alpaydin & Kaynak 1998,
CC BY 4.0).

Two more generated families, with the same ``ClutterData`` tensors and exact object masks
(``make_loaders`` names in ``DATASET_NAMES``):

``make_shapes_in_texture(split, size=32, seed=0, *, n_samples=None, n_distractors=2, ...)``
    ``"shapes-in-texture"``: six shape classes (:data:`SHAPES`) told apart from a striped
    background of the same two colours only by their stripes' direction (no colour cue);
    distractors carry the object's texture.
``make_digits_shortcut(split, size=32, seed=0, *, cue_agreement=0.9, test_cue_agreement=None, ...)``
    ``"digits-shortcut"``: digits-in-clutter with a coloured corner square whose colour is the
    label's in ``cue_agreement`` of the train images and random in test (a shortcut);
    ``meta["cue_colour"]`` records it and :func:`cue_colours_of` reads it back from images.
``make_framed_digits(split, size=32, seed=0, *, n_digits=2, ...)``
    ``"framed-digits"``: several whole digits of different classes side by side; the one inside
    a thin red frame is the label and the only one in the mask.

``ImageFolderDataset(root, size=32, files=None)`` and ``torchvision_dataset(name, root, train,
download=False)``: the building blocks of ``make_loaders``; ``load_image(path, size, channels=3)``
reads one image as a float (C, H, W) tensor in [0, 1].

Normalisation: every loader returns images in [0, 1], un-normalised. The reference models in
``sdecor.models`` start with a batch-normalised convolution and need no input normalisation; a
user model that wants normalised inputs should include it as its first module, so that
attributions stay in the [0, 1] pixel space that the metrics and the plots assume.
"""

from .clutter import ClutterData, DigitsInClutter, load_optdigits, make_digits_in_clutter
from .framed import FRAME_COLOUR, FramedDigits, make_framed_digits
from .loaders import (
    DATASET_NAMES,
    DatasetInfo,
    ImageFolderDataset,
    load_image,
    make_loaders,
    torchvision_dataset,
)
from .shapes import SHAPES, ShapesInTexture, make_shapes_in_texture
from .shortcut import CUE_COLOURS, DigitsShortcut, cue_colours_of, make_digits_shortcut

__all__ = [
    "ClutterData",
    "DigitsInClutter",
    "load_optdigits",
    "make_digits_in_clutter",
    "DATASET_NAMES",
    "DatasetInfo",
    "ImageFolderDataset",
    "load_image",
    "make_loaders",
    "torchvision_dataset",
    "SHAPES",
    "ShapesInTexture",
    "make_shapes_in_texture",
    "CUE_COLOURS",
    "DigitsShortcut",
    "cue_colours_of",
    "make_digits_shortcut",
    "FRAME_COLOUR",
    "FramedDigits",
    "make_framed_digits",
]
