"""MoCo v2 style augmentations in plain torch (no torchvision), batched and seeded.

Every geometric transform is an affine map built with ``affine_grid``: the view's normalised
coordinates u (in [-1, 1]^2, x then y, ``align_corners=False``) sample the image at
``theta @ [u, 1]``. :func:`augment` returns ``theta`` so that the local patch loss can find the
image location of every feature-map position in both views.

Pipeline (per sample, each with its own random draws; MoCo v2 order, adapted to 32 x 32 digit
images: crops keep at least 40% of the area (MoCo v2: 20%) so that a crop rarely loses the digit,
and flips are off by default because digits are not mirror-symmetric; both are settings):

1. random resized crop: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), a random
   position inside the image; resampled bilinearly to the input size;
2. horizontal flip with probability ``flip_p`` (folded into theta);
3. colour jitter with probability ``jitter_p``: brightness, contrast and saturation factors
   ~ U(1 - s, 1 + s) (hue is not jittered);
4. random grayscale with probability ``gray_p``;
5. additive gaussian noise with a per-sample sigma ~ U(0, ``noise``); clamp to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "random_crop_theta", "augment", "apply_theta"]


@dataclass
class AugmentConfig:
    scale: tuple = (0.4, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_p: float = 0.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    gray_p: float = 0.2
    noise: float = 0.05


def _uniform(n, low, high, generator, device):
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_crop_theta(n: int, cfg: AugmentConfig, generator=None, device="cpu") -> torch.Tensor:
    """(n, 2, 3) affine matrices of random resized crops (+ flips) in normalised coordinates."""
    area = _uniform(n, cfg.scale[0], cfg.scale[1], generator, device)
    log_r = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator, device)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # half-width as a fraction of the image's half-width
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - h)
    flip = torch.rand(n, generator=generator, device=device) < cfg.flip_p
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def apply_theta(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample images (B, C, H, W) through the affine maps ``theta`` (B, 2, 3)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x):
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def augment(x: torch.Tensor, cfg: AugmentConfig | None = None, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view of every image in ``x`` (B, C, H, W) in [0, 1]; returns (view, theta)."""
    cfg = cfg or AugmentConfig()
    B, dev = x.shape[0], x.device

    def per_sample(low, high):
        return _uniform(B, low, high, generator, dev).view(B, 1, 1, 1).to(x.dtype)

    def coin(p):
        return (torch.rand(B, generator=generator, device=dev) < p).view(B, 1, 1, 1)

    theta = random_crop_theta(B, cfg, generator, dev)
    v = apply_theta(x, theta)
    jitter = coin(cfg.jitter_p)
    j = v * per_sample(1 - cfg.brightness, 1 + cfg.brightness)
    mean = _gray(j).mean((2, 3), keepdim=True)
    j = (j - mean) * per_sample(1 - cfg.contrast, 1 + cfg.contrast) + mean
    g = _gray(j)
    j = (g + (j - g) * per_sample(1 - cfg.saturation, 1 + cfg.saturation)).clamp(0, 1)
    v = torch.where(jitter, j, v)
    v = torch.where(coin(cfg.gray_p), _gray(v).expand_as(v), v)
    if cfg.noise > 0:
        v = v + per_sample(0.0, cfg.noise) * torch.randn(v.shape, generator=generator, device=dev, dtype=v.dtype)
    return v.clamp(0, 1), theta
