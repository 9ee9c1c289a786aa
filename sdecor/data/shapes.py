"""The "shapes-in-texture" data set: the class is a shape that only its texture sets apart.

Each image is a striped canvas: two colours (drawn per image) alternate along a random direction
with a random period, plus fine grey noise. The object is one of :data:`SHAPES` (the class),
randomly sized, rotated and placed, filled with stripes of *the same two colours* at a direction
at least 45 degrees away from the background's and another period and phase. Object and
background therefore have the same colour statistics: a model must find the shape by its
texture boundary, not by colour (the digits-in-clutter digits differ in colour from their
background). Distractors are bars and blobs filled with the object's texture (so the texture alone
does not locate the object; its shape does).

Every image comes with the ground-truth mask of its object: exactly the pixels whose centre lies
inside the shape; everywhere else the image is the background canvas (distractors included), bit
for bit (``keep_backgrounds=True`` returns those canvases).

The shapes are procedural, so there are no source objects to split: train and test are drawn
from different random streams (``seed`` and the split both change the stream). Rendering is
vectorised in torch: a few thousand 32 x 32 images take well under a second on a CPU.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_choice, check_int
from .clutter import ClutterData, GeneratedDataset, _segment_alpha

__all__ = ["SHAPES", "make_shapes_in_texture", "ShapesInTexture"]

#: Class names, in label order.
SHAPES = ("disk", "square", "triangle", "cross", "ring", "ell")
_CHUNK = 2048


def _inside(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether the points (u, v) (M, H, W) in each shape's own frame (unit half-size, centred,
    unrotated) lie inside shape ``kind`` (M,). Every shape fits in [-1, 1]^2 and covers a
    comparable area (0.35 .. 0.8 of the box)."""
    k = kind[:, None, None]
    au, av = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    disk = r <= 1.0
    square = (au <= 0.8) & (av <= 0.8)
    # equilateral-ish triangle: apex up, base at v = 0.75
    triangle = (v <= 0.75) & (v >= -1.0) & (au <= (v + 1.0) * 0.5)
    cross = ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    ring = (r <= 1.0) & (r >= 0.55)
    ell = ((u >= -0.9) & (u <= -0.3) & (av <= 0.9)) | ((v >= 0.3) & (v <= 0.9) & (u >= -0.9) & (u <= 0.9))
    out = torch.stack([disk, square, triangle, cross, ring, ell], dim=1)  # (M, 6, H, W)
    return out.gather(1, k.unsqueeze(1).expand(-1, 1, *u.shape[1:]).long()).squeeze(1)


def _stripes(px, py, angle, period, phase, c0, c1):
    """Two-colour stripes (M, 3, H, W): a soft square wave along ``angle`` (M,)."""
    t = px * torch.cos(angle)[:, None, None] + py * torch.sin(angle)[:, None, None]
    w = torch.sin(2 * math.pi * t / period[:, None, None] + phase[:, None, None])
    a = (0.5 + 1.5 * w).clamp(0.0, 1.0).unsqueeze(1)  # sharp-edged stripes
    return a * c1[:, :, None, None] + (1 - a) * c0[:, :, None, None]


def make_shapes_in_texture(
    split: str = "train",
    size: int = 32,
    seed: int = 0,
    *,
    n_samples: int | None = None,
    n_distractors: int = 2,
    scale_range: tuple[float, float] = (0.45, 0.7),
    keep_backgrounds: bool = False,
    device="cpu",
) -> ClutterData:
    """Render one split of shapes-in-texture (see the module docstring).

    Args:
        split: ``"train"`` or ``"test"`` (independent random streams).
        size: canvas side in pixels (>= 16).
        seed: render seed.
        n_samples: number of images (default 3000 train, 1200 test); image ``i`` has class
            ``i % 6``, so the classes are balanced.
        n_distractors: texture bars/blobs per image (0..16).
        scale_range: the object's box side as a fraction of ``size``.
        keep_backgrounds: also return the canvases before the object was drawn.
        device: where the tensors are returned (all random draws are on the CPU).

    Returns a :class:`~sdecor.data.ClutterData`: ``digit_ids`` holds the class (there are no
    source objects), ``inverted`` is all False.
    """
    check_choice(split, "split", ("train", "test"))
    check_int(size, "size", low=16, high=1024)
    check_int(seed, "seed")
    check_int(n_distractors, "n_distractors", low=0, high=16)
    if n_samples is not None:
        check_int(n_samples, "n_samples", low=1)
    lo_s, hi_s = (float(v) for v in scale_range)
    if not (0.1 <= lo_s <= hi_s <= 0.9):
        raise ValueError(f"scale_range must satisfy 0.1 <= low <= high <= 0.9, got {scale_range}")
    n = int(n_samples) if n_samples is not None else (3000 if split == "train" else 1200)
    K = n_distractors
    S = float(size)
    gen = torch.Generator().manual_seed((int(seed) * 2 + (split == "test")) % (2**62) + 0x5A9E5)

    labels = torch.arange(n) % len(SHAPES)
    # colours: two per image, far enough apart to be seen
    c0 = torch.rand(n, 3, generator=gen) * 0.45
    c1 = 1.0 - torch.rand(n, 3, generator=gen) * 0.45
    swap = torch.rand(n, generator=gen) < 0.5
    c0, c1 = torch.where(swap[:, None], c1, c0), torch.where(swap[:, None], c0, c1)
    bg_angle = math.pi * torch.rand(n, generator=gen)
    ob_angle = bg_angle + math.pi / 4 + (math.pi / 2) * torch.rand(n, generator=gen)  # 45..135 degrees apart
    bg_period = (S / 32.0) * (3.0 + 2.0 * torch.rand(n, generator=gen))
    ob_period = (S / 32.0) * (3.0 + 2.0 * torch.rand(n, generator=gen))
    bg_phase = 2 * math.pi * torch.rand(n, generator=gen)
    ob_phase = 2 * math.pi * torch.rand(n, generator=gen)
    half = S * (lo_s + (hi_s - lo_s) * torch.rand(n, generator=gen)) / 2
    cx = half + (S - 2 * half) * torch.rand(n, generator=gen)
    cy = half + (S - 2 * half) * torch.rand(n, generator=gen)
    rot = 2 * math.pi * torch.rand(n, generator=gen)
    # distractors: bars (segments) or blobs (small disks), textured like the object
    is_bar = torch.rand(n, K, generator=gen) < 0.5
    d_ctr = S * torch.rand(n, K, 2, generator=gen)
    d_len = S * (0.2 + 0.3 * torch.rand(n, K, generator=gen))
    d_ang = math.pi * torch.rand(n, K, generator=gen)
    d_w = (S / 32.0) * (2.0 + 2.0 * torch.rand(n, K, generator=gen))
    d_rad = (S / 32.0) * (2.0 + 2.0 * torch.rand(n, K, generator=gen))
    noise_seed = int(torch.randint(2**62, (1,), generator=gen))

    device = torch.device(device)
    images = torch.empty(n, 3, size, size)
    masks = torch.empty(n, 1, size, size, dtype=torch.bool)
    backgrounds = torch.empty_like(images) if keep_backgrounds else None
    pix = torch.arange(size, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(pix, pix, indexing="ij")
    for c, s in enumerate(range(0, n, _CHUNK)):
        sl = slice(s, min(n, s + _CHUNK))
        m = sl.stop - sl.start
        cg = torch.Generator().manual_seed((noise_seed + c) % (2**62))
        fine = torch.randn(m, 1, size, size, generator=cg) * 0.03
        canvas = _stripes(px, py, bg_angle[sl], bg_period[sl], bg_phase[sl], c0[sl], c1[sl])
        texture = _stripes(px, py, ob_angle[sl], ob_period[sl], ob_phase[sl], c0[sl], c1[sl])
        canvas = (canvas + fine).clamp(0.0, 1.0)
        texture = (texture + fine).clamp(0.0, 1.0)
        if K:
            ctr = d_ctr[sl].reshape(-1, 2)
            ang = d_ang[sl].reshape(-1)
            dvec = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * (d_len[sl].reshape(-1, 1) / 2)
            bar = _segment_alpha(ctr - dvec, ctr + dvec, d_w[sl].reshape(-1), size)
            dist = torch.sqrt((px - ctr[:, 0, None, None]) ** 2 + (py - ctr[:, 1, None, None]) ** 2)
            blob = (d_rad[sl].reshape(-1, 1, 1) + 0.5 - dist).clamp(0.0, 1.0)
            alpha = torch.where(is_bar[sl].reshape(-1, 1, 1), bar, blob).reshape(m, K, 1, size, size)
            for k in range(K):
                canvas = alpha[:, k] * texture + (1.0 - alpha[:, k]) * canvas
        if backgrounds is not None:
            backgrounds[sl] = canvas
        # the object: pixel centres in its frame
        dx = px - cx[sl, None, None]
        dy = py - cy[sl, None, None]
        cr, sr = torch.cos(rot[sl])[:, None, None], torch.sin(rot[sl])[:, None, None]
        u = (cr * dx + sr * dy) / half[sl, None, None]
        v = (-sr * dx + cr * dy) / half[sl, None, None]
        inside = _inside(labels[sl], u, v).unsqueeze(1)
        masks[sl] = inside
        images[sl] = torch.where(inside, texture, canvas)
    meta = dict(split=split, size=size, seed=seed, n_samples=n, n_distractors=K, scale_range=(lo_s, hi_s))
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return ClutterData(
        move(images),
        move(labels.long()),
        move(masks),
        move(labels.long()),
        move(torch.zeros(n, dtype=torch.bool)),
        move(backgrounds),
        meta,
    )


class ShapesInTexture(GeneratedDataset):
    """``torch.utils.data.Dataset`` view of :func:`make_shapes_in_texture`.

    Item ``i`` is ``(image float32 (3, H, W) in [0, 1], label int64 scalar tensor, mask bool
    (1, H, W))``; ``.data`` is the :class:`~sdecor.data.ClutterData`, ``.classes`` the shape names.
    """

    classes = list(SHAPES)

    make = staticmethod(make_shapes_in_texture)
