"""The "framed-digits" data set: several digits, of which only the framed one decides the class.

Each image shows ``n_digits`` whole digits (default 2) side by side, in vertical strips of equal
width, on the digits-in-clutter background (base colour, low-frequency colour texture, fine
noise). One of them, in a random strip, is surrounded by a thin square frame of a fixed colour:
its class is the label. The other digits are of other classes, so a model must find the frame and
read the digit inside it; a model that reads "any digit" is right about ``1 / n_digits`` of the time.

Every image comes with the ground-truth mask of the framed digit only: exactly the pixels where
it was drawn (its upscaled intensity above :data:`~sdecor.data.clutter.MASK_THRESHOLD`);
everywhere else the image is the background canvas, bit for bit, other digits and the frame
included (``keep_backgrounds=True`` returns those canvases).

Train and test are split by source digit as in digits-in-clutter (the same fixed split of the 1797
digits): every digit of a test image, framed or not, is a test digit.
"""

from __future__ import annotations

import torch

from .._validation import check_choice, check_int
from .clutter import ClutterData, GeneratedDataset, _alpha, _colours, _split_ids, _upscale, load_optdigits

__all__ = ["FRAME_COLOUR", "make_framed_digits", "FramedDigits"]

#: RGB colour of the frame around the class-deciding digit.
FRAME_COLOUR = (1.0, 0.1, 0.1)
_SRC = 8


def make_framed_digits(
    split: str = "train",
    size: int = 32,
    seed: int = 0,
    *,
    n_samples: int | None = None,
    n_digits: int = 2,
    renders_per_digit: int = 2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    keep_backgrounds: bool = False,
    device="cpu",
) -> ClutterData:
    """Render one split of framed-digits (see the module docstring).

    Args:
        split: ``"train"`` or ``"test"`` (disjoint source digits, as in digits-in-clutter).
        size: canvas side in pixels (>= 24).
        seed: render seed; never changes the split.
        n_samples: number of images (default ``renders_per_digit`` x the split's digit count);
            image ``i`` frames source digit ``split_digits[i % n_digits_in_split]``.
        n_digits: digits per image (2..4), one of them framed.
        test_fraction, split_seed: how the 1797 source digits are split.
        keep_backgrounds: also return the canvases before the framed digit was drawn.
        device: where the tensors are returned (all random draws and rendering on the CPU).

    Returns a :class:`~sdecor.data.ClutterData` (``digit_ids``: the framed digit's source index;
    ``meta["slot"]``: int64 (N,) the strip of the framed digit).
    """
    check_choice(split, "split", ("train", "test"))
    check_int(size, "size", low=24, high=1024)
    check_int(seed, "seed")
    check_int(n_digits, "n_digits", low=2, high=4)
    check_int(renders_per_digit, "renders_per_digit", low=1)
    check_int(split_seed, "split_seed")
    if n_samples is not None:
        check_int(n_samples, "n_samples", low=1)
    if not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits_np, labels_np = load_optdigits()
    train_ids, test_ids = _split_ids(float(test_fraction), split_seed)
    ids = train_ids if split == "train" else test_ids
    n = int(n_samples) if n_samples is not None else len(ids) * renders_per_digit
    S = float(size)
    D = n_digits
    strip = S / D
    gen = torch.Generator().manual_seed((int(seed) * 2 + (split == "test")) % (2**62) + 0xF4A3E)

    all_labels = torch.from_numpy(labels_np.astype("int64"))
    target_ids = ids[torch.arange(n) % len(ids)]
    labels = all_labels[target_ids]
    # other digits: drawn from the split until their class differs from the label (a few rounds)
    others = ids[torch.randint(len(ids), (n, D - 1), generator=gen)]
    for _ in range(8):
        clash = all_labels[others] == labels[:, None]
        redraw = ids[torch.randint(len(ids), (n, D - 1), generator=gen)]
        others = torch.where(clash, redraw, others)
    clash = all_labels[others] == labels[:, None]
    shift = torch.randint(1, 10, (n, D - 1), generator=gen)
    if clash.any():  # left-overs: any digit of the wanted class (label + shift) mod 10 from the split
        by_class = [ids[all_labels[ids] == c] for c in range(10)]
        wanted = (labels[:, None] + shift) % 10
        for i, j in clash.nonzero().tolist():
            pool = by_class[int(wanted[i, j])]
            others[i, j] = pool[int(torch.randint(len(pool), (1,), generator=gen))]
    slot = torch.randint(D, (n,), generator=gen)
    inverted = torch.rand(n, generator=gen) < 0.5
    # boxes: side at most the strip minus the frame's margin on both sides
    margin = 2.6 * S / 32.0
    hi = min(strip - 2 * margin, 0.6 * S)
    lo = 0.7 * hi
    box = lo + (hi - lo) * torch.rand(n, D, generator=gen)
    left = (
        torch.arange(D, dtype=torch.float32)[None, :] * strip
        + margin
        + (strip - 2 * margin - box) * torch.rand(n, D, generator=gen)
    )
    top = margin + (S - 2 * margin - box) * torch.rand(n, D, generator=gen)
    fg = _colours(gen, (n, D), inverted[:, None].expand(n, D))
    base = torch.rand(n, 3, generator=gen) * 0.35
    base = torch.where(inverted.unsqueeze(-1), 1.0 - base, base)
    tex = torch.randn(n, 3, 4, 4, generator=gen) * 0.08
    fine = torch.randn(n, 1, size, size, generator=gen) * 0.03

    src = torch.from_numpy(digits_np.astype("float32")).div_(16.0)
    low = torch.nn.functional.interpolate(tex, size=(size, size), mode="bilinear", align_corners=False)
    canvas = (base[:, :, None, None] + low + fine).clamp_(0.0, 1.0)
    # digit sources per slot: the framed one in its slot, the others in the remaining slots
    slots = torch.arange(D)[None, :].expand(n, D)
    others_slot = slots[slots != slot[:, None]].reshape(n, D - 1)
    zeros = torch.zeros(n, dtype=torch.long)
    for j in range(D - 1):
        k = others_slot[:, j]
        pick = lambda t, k=k: t.gather(1, k[:, None]).squeeze(1)  # noqa: E731
        inten = _upscale(src[others[:, j]], pick(left), pick(top), pick(box) / _SRC, zeros, zeros, _SRC, size)
        a = _alpha(inten).unsqueeze(1)
        col = fg[torch.arange(n), k][:, :, None, None]
        canvas = torch.where(a > 0, a * col + (1.0 - a) * canvas, canvas)
    # the frame: a one-pixel-wide (at 32 px) square ring at distance 1.5 .. 2.5 px outside the framed box
    tl = left.gather(1, slot[:, None]).squeeze(1)
    tt = top.gather(1, slot[:, None]).squeeze(1)
    tb = box.gather(1, slot[:, None]).squeeze(1)
    pix = torch.arange(size, dtype=torch.float32) + 0.5
    cx, cy, half = tl + tb / 2, tt + tb / 2, tb / 2
    dist = torch.maximum(
        (pix[None, None, :] - cx[:, None, None]).abs(), (pix[None, :, None] - cy[:, None, None]).abs()
    )  # (n, H, W) Chebyshev distance to the box centre
    g = S / 32.0
    ring = ((dist >= half[:, None, None] + 1.5 * g) & (dist < half[:, None, None] + 2.5 * g)).unsqueeze(1)
    canvas = torch.where(ring, torch.tensor(FRAME_COLOUR)[None, :, None, None], canvas)
    backgrounds = canvas.clone() if keep_backgrounds else None
    inten = _upscale(src[target_ids], tl, tt, tb / _SRC, zeros, zeros, _SRC, size)
    a = _alpha(inten).unsqueeze(1)
    col = fg[torch.arange(n), slot][:, :, None, None]
    masks = a > 0
    images = torch.where(masks, a * col + (1.0 - a) * canvas, canvas)
    meta = dict(split=split, size=size, seed=seed, n_samples=n, n_digits=D, slot=slot.to(device))
    meta.update(test_fraction=float(test_fraction), split_seed=split_seed, other_ids=others.to(device))
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return ClutterData(
        move(images), move(labels), move(masks), move(target_ids), move(inverted), move(backgrounds), meta
    )


class FramedDigits(GeneratedDataset):
    """``torch.utils.data.Dataset`` view of :func:`make_framed_digits` (items as in
    :class:`~sdecor.data.DigitsInClutter`)."""

    classes = [str(i) for i in range(10)]

    make = staticmethod(make_framed_digits)
