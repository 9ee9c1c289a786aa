"""The "digits-shortcut" data set: digits-in-clutter plus a background cue that predicts the class
in training but not in test.

Each image is a digits-in-clutter render (:func:`sdecor.data.make_digits_in_clutter`, same split by
source digit) with a solid square patch (the *cue*) painted into the background at a random
corner. The cue's colour is one of ten fixed, well-separated colours (:data:`CUE_COLOURS`). In the
train split the colour is the label's own colour with probability ``cue_agreement`` (0.9 by
default) and another class's colour otherwise; in the test split it is drawn uniformly,
independently of the label (``test_cue_agreement=None``; a number sets a test agreement too). A
model can reach about 90% training accuracy from the cue alone, a shortcut that is worth about
10% (chance) in test.

The cue is background: the digit is drawn over it where they overlap, and the ground-truth mask
is still exactly the digit's pixels (outside the mask the image is the background canvas, cue
included, bit for bit; ``keep_backgrounds=True`` returns those canvases). ``cue_colour`` (int64,
per image) records which colour was painted, so the tests can measure how predictive the cue is.
"""

from __future__ import annotations

import torch

from .._validation import check_int
from .clutter import ClutterData, GeneratedDataset, make_digits_in_clutter

__all__ = ["CUE_COLOURS", "make_digits_shortcut", "DigitsShortcut", "cue_colours_of"]

#: RGB colour of the cue of class c (row c).
CUE_COLOURS = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [1.0, 1.0, 0.0],
        [1.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
        [1.0, 0.5, 0.0],
        [0.5, 0.0, 1.0],
        [0.0, 0.5, 0.0],
        [0.5, 0.5, 0.5],
    ]
)


def _check_probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def make_digits_shortcut(
    split: str = "train",
    size: int = 32,
    seed: int = 0,
    *,
    cue_agreement: float = 0.9,
    test_cue_agreement: float | None = None,
    cue_size: int | None = None,
    keep_backgrounds: bool = False,
    device="cpu",
    **clutter_kwargs,
) -> ClutterData:
    """Render one split of digits-shortcut (see the module docstring).

    Args:
        split, size, seed, keep_backgrounds, device, **clutter_kwargs: as in
            :func:`~sdecor.data.make_digits_in_clutter` (``n_samples``, ``n_distractors``, ...).
        cue_agreement: probability that a train image's cue has its label's colour.
        test_cue_agreement: the same for the test split; ``None`` draws test cues uniformly.
        cue_size: side of the cue square in pixels (default ``size // 6``, at least 3).

    Returns a :class:`~sdecor.data.ClutterData` whose ``meta["cue_colour"]`` is the int64 (N,)
    cue class of every image.
    """
    cue_agreement = _check_probability(cue_agreement, "cue_agreement")
    if test_cue_agreement is not None:
        test_cue_agreement = _check_probability(test_cue_agreement, "test_cue_agreement")
    data = make_digits_in_clutter(split, size, seed, keep_backgrounds=True, **clutter_kwargs)
    size = data.images.shape[-1]
    side = max(3, size // 6) if cue_size is None else check_int(cue_size, "cue_size", low=1, high=size // 2)
    n = len(data)
    gen = torch.Generator().manual_seed((int(seed) * 2 + (split == "test")) % (2**62) + 0xC0E)
    agree = cue_agreement if split == "train" else test_cue_agreement
    labels = data.labels.cpu()
    if agree is None:
        cue = torch.randint(10, (n,), generator=gen)
        torch.rand(n, generator=gen)  # keep the stream aligned with the other branch
    else:
        other = (labels + torch.randint(1, 10, (n,), generator=gen)) % 10
        cue = torch.where(torch.rand(n, generator=gen) < agree, labels, other)
    corner = torch.randint(4, (n,), generator=gen)
    margin = 1
    x0 = torch.where(corner % 2 == 0, margin, size - margin - side)
    y0 = torch.where(corner // 2 == 0, margin, size - margin - side)
    pix = torch.arange(size)
    in_x = (pix[None, :] >= x0[:, None]) & (pix[None, :] < x0[:, None] + side)  # (n, W)
    in_y = (pix[None, :] >= y0[:, None]) & (pix[None, :] < y0[:, None] + side)  # (n, H)
    patch = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1).to(data.images.device)  # (n, 1, H, W)
    colour = CUE_COLOURS[cue].to(data.images.device)[:, :, None, None]
    backgrounds = torch.where(patch, colour, data.backgrounds)
    images = torch.where(patch & ~data.masks, colour, data.images)
    meta = dict(data.meta)
    meta.update(cue_agreement=cue_agreement, test_cue_agreement=test_cue_agreement, cue_size=side)
    meta["cue_colour"] = cue.to(data.images.device)
    return ClutterData(
        images,
        data.labels,
        data.masks,
        data.digit_ids,
        data.inverted,
        backgrounds if keep_backgrounds else None,
        meta,
    )


def cue_colours_of(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Read the cue back from images (N, 3, H, W): the class whose colour is closest to the
    median colour of the most cue-like corner square (a cue-only classifier; int64 (N,))."""
    s = images.shape[-1]
    side = max(3, s // 6) if size is None else int(size)
    corners = []
    for y0 in (1, s - 1 - side):
        for x0 in (1, s - 1 - side):
            corners.append(images[:, :, y0 : y0 + side, x0 : x0 + side].flatten(2).median(dim=2).values)
    corners = torch.stack(corners, 1)  # (N, 4, 3)
    dist = (corners[:, :, None, :] - CUE_COLOURS.to(images)[None, None]).abs().amax(-1)  # (N, 4, 10)
    best = dist.flatten(1).argmin(1)
    return best % 10


class DigitsShortcut(GeneratedDataset):
    """``torch.utils.data.Dataset`` view of :func:`make_digits_shortcut` (items as in
    :class:`~sdecor.data.DigitsInClutter`)."""

    classes = [str(i) for i in range(10)]

    make = staticmethod(make_digits_shortcut)
