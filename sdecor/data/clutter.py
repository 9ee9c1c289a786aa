"""The embedded "digits-in-clutter" data set.

Real handwritten digits (the 1797 UCI optical-recognition digits, 8 x 8, values 0..16, shipped
as ``optdigits.npz``; see ``OPTDIGITS_LICENSE.txt``) are upscaled by a random factor and placed
at a random position on an RGB canvas with a textured background and distractors: straight
strokes and fragments of *other* digits of the same split (as in the cluttered MNIST of Mnih et
al. 2014). Half of the images (``invert_fraction``) are dark-on-light, the others light-on-dark:
dark salient regions are where the input bias of RectGrad (``grad * input``) shows.

Every image comes with the ground-truth mask of its digit: exactly the pixels where the digit
was drawn (its upscaled intensity above ``MASK_THRESHOLD``); everywhere else the image is the
background canvas, bit for bit (``keep_backgrounds=True`` returns those canvases, which is how
the tests check it).

Train and test are split by digit identity: the 1797 source digits are divided once by a fixed
permutation (``split_seed``) into disjoint sets (``test_fraction`` of them for test); each source
digit is rendered ``renders_per_digit`` times with different positions, scales, colours and
clutter. ``seed`` changes the renders, never the split.

Everything is generated at once in torch (separable bilinear upscaling as two small batched
matmuls): a few thousand 32 x 32 images take well under a second on a CPU.
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .._validation import check_choice, check_int

__all__ = ["ClutterData", "DigitsInClutter", "load_optdigits", "make_digits_in_clutter", "MASK_THRESHOLD"]

_NPZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "optdigits.npz")

#: A canvas pixel belongs to the digit when the upscaled digit intensity (in [0, 1]) exceeds this.
MASK_THRESHOLD = 0.3
_ALPHA_FULL = 0.6  # intensity at which the digit / fragment is fully opaque
_CHUNK = 2048  # samples rendered together (fixed: per-chunk noise streams depend on it)
_SRC = 8  # source digits are 8 x 8

_CACHE: dict = {}


def load_optdigits() -> tuple[np.ndarray, np.ndarray]:
    """The raw embedded digits: ``images`` uint8 (1797, 8, 8) in 0..16 and ``labels`` uint8 (1797,)."""
    if "optdigits" not in _CACHE:
        with np.load(_NPZ) as z:
            images, labels = z["images"], z["labels"]
        images.setflags(write=False)
        labels.setflags(write=False)
        _CACHE["optdigits"] = (images, labels)
    return _CACHE["optdigits"]


@dataclass
class ClutterData:
    """Tensors of one rendered split (see the module docstring of :mod:`sdecor.data`)."""

    images: torch.Tensor  # float32 (N, 3, H, W) in [0, 1]
    labels: torch.Tensor  # int64 (N,)
    masks: torch.Tensor  # bool (N, 1, H, W)
    digit_ids: torch.Tensor  # int64 (N,) source digit index 0..1796
    inverted: torch.Tensor  # bool (N,) True = dark digit on light background
    backgrounds: torch.Tensor | None = None  # float32 (N, 3, H, W) canvas before the digit
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def dataset(self) -> TensorDataset:
        """``TensorDataset(images, labels, masks)`` (shares memory with this object)."""
        return TensorDataset(self.images, self.labels, self.masks)

    def to(self, device) -> ClutterData:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ClutterData(
            move(self.images),
            move(self.labels),
            move(self.masks),
            move(self.digit_ids),
            move(self.inverted),
            move(self.backgrounds),
            dict(self.meta),
        )


def _split_ids(test_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = load_optdigits()[0].shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    n_test = int(round(test_fraction * n))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _hat_weights(u: torch.Tensor, lo: torch.Tensor, win: int) -> torch.Tensor:
    """Bilinear weights (M, L, 8) of source pixels j at continuous source coordinates u (M, L),
    zero outside the source window [lo, lo + win) (zero padding, like grid_sample)."""
    j = torch.arange(_SRC, device=u.device, dtype=u.dtype)
    w = (1.0 - (u.unsqueeze(-1) - j).abs()).clamp_min(0.0)
    inside = (j >= lo.unsqueeze(-1)) & (j < lo.unsqueeze(-1) + win)  # (M, 8)
    return w * inside.unsqueeze(1).to(w.dtype)


def _upscale(
    src: torch.Tensor,
    left: torch.Tensor,
    top: torch.Tensor,
    scale: torch.Tensor,
    ox: torch.Tensor,
    oy: torch.Tensor,
    win: int,
    size: int,
) -> torch.Tensor:
    """Draw the source window [oy:oy+win, ox:ox+win] of each 8 x 8 ``src`` (M, 8, 8) with its
    top-left corner at canvas position (left, top) and ``scale`` canvas pixels per source pixel.
    Returns the bilinear intensity (M, size, size)."""
    pix = torch.arange(size, device=src.device, dtype=src.dtype) + 0.5
    ux = ox.to(src.dtype).unsqueeze(1) + (pix - left.unsqueeze(1)) / scale.unsqueeze(1) - 0.5
    uy = oy.to(src.dtype).unsqueeze(1) + (pix - top.unsqueeze(1)) / scale.unsqueeze(1) - 0.5
    wx = _hat_weights(ux, ox, win)  # (M, W, 8)
    wy = _hat_weights(uy, oy, win)  # (M, H, 8)
    return wy @ src @ wx.transpose(1, 2)


def _alpha(intensity: torch.Tensor) -> torch.Tensor:
    return torch.where(
        intensity > MASK_THRESHOLD, (intensity / _ALPHA_FULL).clamp(max=1.0), torch.zeros_like(intensity)
    )


def _segment_alpha(p0: torch.Tensor, p1: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased line segments: p0, p1 (M, 2) as (x, y), width (M,) -> alpha (M, size, size)."""
    pix = torch.arange(size, device=p0.device, dtype=p0.dtype) + 0.5
    py, px = torch.meshgrid(pix, pix, indexing="ij")
    d = p1 - p0
    len2 = (d * d).sum(1).clamp_min(1e-6)
    rx = px - p0[:, 0, None, None]
    ry = py - p0[:, 1, None, None]
    t = ((rx * d[:, 0, None, None] + ry * d[:, 1, None, None]) / len2[:, None, None]).clamp(0.0, 1.0)
    dx = rx - t * d[:, 0, None, None]
    dy = ry - t * d[:, 1, None, None]
    dist = torch.sqrt(dx * dx + dy * dy)
    return (width[:, None, None] / 2 + 0.5 - dist).clamp(0.0, 1.0)


def _colours(gen: torch.Generator, shape: tuple, dark: torch.Tensor) -> torch.Tensor:
    """Ink colours (…, 3): light (0.7..1) or, where ``dark``, dark (0..0.3); per channel."""
    c = torch.rand(*shape, 3, generator=gen) * 0.3
    return torch.where(dark.unsqueeze(-1), c, 1.0 - c)


def make_digits_in_clutter(
    split: str = "train",
    size: int = 32,
    seed: int = 0,
    *,
    n_samples: int | None = None,
    renders_per_digit: int = 2,
    invert_fraction: float = 0.5,
    n_distractors: int = 2,
    scale_range: tuple[float, float] = (0.45, 0.7),
    test_fraction: float = 0.2,
    split_seed: int = 0,
    keep_backgrounds: bool = False,
    device="cpu",
) -> ClutterData:
    """Render one split of digits-in-clutter (see the module docstring).

    Args:
        split: ``"train"`` or ``"test"`` (disjoint source digits).
        size: canvas side in pixels (>= 16; 32 is the default and what the reference models
            are tuned for).
        seed: render seed (positions, scales, colours, clutter); never changes the split.
        n_samples: number of images; default ``renders_per_digit`` x the split's digit count
            (1438 train / 359 test digits). Image ``i`` shows source digit
            ``split_digits[i % n_digits]``, so any ``n_samples`` covers the digits evenly.
        renders_per_digit: renders of every source digit when ``n_samples`` is None.
        invert_fraction: fraction of dark-on-light images.
        n_distractors: distractors per image; each is a straight stroke or a fragment of
            another digit of the same split (chosen at random, 50/50).
        scale_range: digit box side as a fraction of ``size``.
        test_fraction, split_seed: how the 1797 source digits are split.
        keep_backgrounds: also return the canvases before the digit was drawn.
        device: where the tensors are rendered and returned (random draws are on the CPU, so
            the result does not depend on the device beyond float rounding).
    """
    check_choice(split, "split", ("train", "test"))
    check_int(size, "size", low=16, high=1024)
    check_int(seed, "seed")
    check_int(renders_per_digit, "renders_per_digit", low=1)
    check_int(n_distractors, "n_distractors", low=0, high=64)
    check_int(split_seed, "split_seed")
    if n_samples is not None:
        check_int(n_samples, "n_samples", low=1)
    if not (0.0 <= float(invert_fraction) <= 1.0):
        raise ValueError(f"invert_fraction must be in [0, 1], got {invert_fraction}")
    if not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    lo_s, hi_s = (float(v) for v in scale_range)
    if not (0.1 <= lo_s <= hi_s <= 1.0):
        raise ValueError(f"scale_range must satisfy 0.1 <= low <= high <= 1, got {scale_range}")

    digits_np, labels_np = load_optdigits()
    train_ids, test_ids = _split_ids(float(test_fraction), split_seed)
    ids = train_ids if split == "train" else test_ids
    n = int(n_samples) if n_samples is not None else len(ids) * renders_per_digit
    K = n_distractors
    S = float(size)

    gen = torch.Generator().manual_seed((int(seed) * 2 + (split == "test")) % (2**62) + 0x5DEC0)
    digit_ids = ids[torch.arange(n) % len(ids)]
    # -- per-image parameters
    inverted = torch.rand(n, generator=gen) < float(invert_fraction)
    box = S * (lo_s + (hi_s - lo_s) * torch.rand(n, generator=gen))
    scale = box / _SRC
    left = (S - box) * torch.rand(n, generator=gen)
    top = (S - box) * torch.rand(n, generator=gen)
    fg = _colours(gen, (n,), inverted)
    base = torch.rand(n, 3, generator=gen) * 0.35
    base = torch.where(inverted.unsqueeze(-1), 1.0 - base, base)
    tex = torch.randn(n, 3, 4, 4, generator=gen) * 0.08
    # -- distractors: type, colour, fragment source / window / scale, stroke geometry, position
    is_frag = torch.rand(n, K, generator=gen) < 0.5
    d_col = _colours(gen, (n, K), inverted.unsqueeze(1).expand(n, K))
    frag_src = ids[torch.randint(len(ids), (n, K), generator=gen)]
    win = 4
    frag_ox = torch.randint(1, _SRC - win, (n, K), generator=gen)
    frag_oy = torch.randint(1, _SRC - win, (n, K), generator=gen)
    frag_scale = S * (lo_s + (hi_s - lo_s) * torch.rand(n, K, generator=gen)) / _SRC
    stroke_len = S * (0.25 + 0.3 * torch.rand(n, K, generator=gen))
    stroke_ang = math.pi * torch.rand(n, K, generator=gen)
    stroke_w = (S / 32.0) * (2.0 + 2.0 * torch.rand(n, K, generator=gen))
    # distractor centres: 4 candidates each, keep the first outside the digit box (if any)
    cand = S * torch.rand(n, K, 4, 2, generator=gen)
    cx0, cy0 = left[:, None, None], top[:, None, None]
    cx1, cy1 = cx0 + box[:, None, None], cy0 + box[:, None, None]
    outside = (cand[..., 0] < cx0) | (cand[..., 0] > cx1) | (cand[..., 1] < cy0) | (cand[..., 1] > cy1)
    pick = outside.to(torch.int8).argmax(dim=2)  # first outside candidate, else the first
    centre = cand.gather(2, pick[..., None, None].expand(n, K, 1, 2)).squeeze(2)  # (n, K, 2)
    noise_seed = int(torch.randint(2**62, (1,), generator=gen))

    src_all = torch.from_numpy(np.array(digits_np, dtype=np.float32)).div_(16.0)
    labels = torch.from_numpy(np.array(labels_np, dtype=np.int64))[digit_ids]

    device = torch.device(device)
    images = torch.empty(n, 3, size, size, device=device)
    masks = torch.empty(n, 1, size, size, dtype=torch.bool, device=device)
    backgrounds = torch.empty_like(images) if keep_backgrounds else None
    src_dev = src_all.to(device)
    for c, s in enumerate(range(0, n, _CHUNK)):
        sl = slice(s, min(n, s + _CHUNK))
        m = sl.stop - sl.start
        cg = torch.Generator().manual_seed((noise_seed + c) % (2**62))

        def to(t, sl=sl):
            return t[sl].to(device)

        # background: base colour + low-frequency colour texture + fine grey noise
        low = torch.nn.functional.interpolate(to(tex), size=(size, size), mode="bilinear", align_corners=False)
        fine = (torch.randn(m, 1, size, size, generator=cg) * 0.03).to(device)
        canvas = (to(base)[:, :, None, None] + low + fine).clamp_(0.0, 1.0)
        if K:
            # fragments of other digits
            fs = to(frag_scale).reshape(-1)
            half = win * fs / 2
            ctr = to(centre).reshape(-1, 2)
            frag = _upscale(
                src_dev[to(frag_src).reshape(-1)],
                ctr[:, 0] - half,
                ctr[:, 1] - half,
                fs,
                to(frag_ox).reshape(-1),
                to(frag_oy).reshape(-1),
                win,
                size,
            )
            frag_a = _alpha(frag)
            # straight strokes
            ang = to(stroke_ang).reshape(-1)
            half_len = to(stroke_len).reshape(-1) / 2
            dvec = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * half_len[:, None]
            stroke_a = _segment_alpha(ctr - dvec, ctr + dvec, to(stroke_w).reshape(-1), size)
            dis_a = torch.where(to(is_frag).reshape(-1, 1, 1), frag_a, stroke_a).reshape(m, K, 1, size, size)
            col = to(d_col)[:, :, :, None, None]  # (m, K, 3, 1, 1)
            for k in range(K):
                a = dis_a[:, k]
                canvas = a * col[:, k] + (1.0 - a) * canvas
        if backgrounds is not None:
            backgrounds[sl] = canvas
        zeros = torch.zeros(m, dtype=torch.long, device=device)
        inten = _upscale(src_dev[to(digit_ids)], to(left), to(top), to(scale), zeros, zeros, _SRC, size)
        a = _alpha(inten).unsqueeze(1)
        masks[sl] = a > 0
        images[sl] = torch.where(a > 0, a * to(fg)[:, :, None, None] + (1.0 - a) * canvas, canvas)

    meta = dict(
        split=split,
        size=size,
        seed=seed,
        n_samples=n,
        invert_fraction=float(invert_fraction),
        n_distractors=K,
        scale_range=(lo_s, hi_s),
        test_fraction=float(test_fraction),
        split_seed=split_seed,
    )
    return ClutterData(images, labels.to(device), masks, digit_ids.to(device), inverted.to(device), backgrounds, meta)


class GeneratedDataset(Dataset, abc.ABC):
    """``torch.utils.data.Dataset`` view of a generated family: a subclass names its generator
    ``make(split, size, seed, **kwargs) -> ClutterData`` and its ``classes`` (a subclass without
    ``make`` cannot be instantiated: ``TypeError``).

    Item ``i`` is ``(image float32 (3, H, W) in [0, 1], label int64 scalar tensor, mask bool
    (1, H, W))``. ``.data`` is the :class:`ClutterData`; ``.classes`` the class names.
    """

    classes: list[str] = []

    @staticmethod
    @abc.abstractmethod
    def make(split: str, size: int, seed: int, **kwargs) -> ClutterData:
        """The family's generator (see :func:`make_digits_in_clutter` for the contract)."""

    def __init__(self, split: str = "train", size: int = 32, seed: int = 0, **kwargs):
        self.data = self.make(split, size, seed, **kwargs)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        d = self.data
        return d.images[i], d.labels[i], d.masks[i]


class DigitsInClutter(GeneratedDataset):
    """Dataset view of :func:`make_digits_in_clutter` (items as in :class:`GeneratedDataset`)."""

    classes = [str(i) for i in range(10)]
    make = staticmethod(make_digits_in_clutter)
