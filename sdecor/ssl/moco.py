"""MoCo v2 (He et al. 2020; Chen et al. 2020) with med-moco's local patch contrastive loss.

Pieces:

* :class:`Encoder`: a backbone (any ``nn.Module``; by default ``sdecor.models.SmallCNN``) whose
  last convolutional feature map is captured by a forward hook held during the call only,
  global-average pooled to the representation ``h`` (N, C); a 2-layer MLP projection head
  (Linear-ReLU-Linear, MoCo v2) maps ``h`` to the embedding ``z``; a 1x1-conv local head maps
  the feature map to patch embeddings.
* :class:`MoCo`: query encoder, momentum (key) encoder updated as ``k = m k + (1 - m) q``, a queue
  of K normalised keys, InfoNCE with temperature tau, shuffled-BN emulated on one device by
  running the key encoder on ``bn_splits`` random sub-batches, plus the local loss.
* :func:`info_nce` and :func:`local_patch_contrastive_loss`.

The local patch contrastive loss, as we read med-moco ("local contrastive loss on feature-map
patches"; the details below are our reading, each one a parameter): both views are affine crops
(+ flips) of the same image with known ``theta``. A P x P grid of points at the centres of the
cells of the query view is mapped to image coordinates and from there into the key view's
coordinates; the query's patch embedding (its local-head feature map sampled bilinearly at the
grid point) and the key's patch embedding (the momentum local head's map sampled at the mapped
point) of the same image location are a positive pair. Every other key patch of the batch (other
locations of the same image and all patches of the other images) is a negative. Points that fall
outside the key view are dropped. InfoNCE with temperature ``local_tau`` over the kept patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.introspection import get_layer, record_features

__all__ = ["Encoder", "MoCo", "info_nce", "local_patch_contrastive_loss", "corresponding_points", "patch_grid"]


class Encoder(nn.Module):
    """Backbone + projection head + local head. ``forward(x) -> (h, z, local_map)``.

    ``h`` (N, C): pooled backbone features (the representation the linear probe reads);
    ``z`` (N, dim): projection (not normalised); ``local_map`` (N, local_dim, h, w) or None.
    """

    def __init__(
        self, backbone: nn.Module, conv_layer: str, feat_dim: int, dim: int = 64, hidden: int = 256, local_dim: int = 32
    ):
        super().__init__()
        self.backbone = backbone
        self.conv_layer = conv_layer
        get_layer(backbone, conv_layer)  # an unknown name fails here, not at the first forward
        self.head = nn.Sequential(nn.Linear(feat_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.local_head = (
            nn.Sequential(nn.Conv2d(feat_dim, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, local_dim, 1))
            if local_dim
            else None
        )

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features h, feature map) of the backbone; ``conv_layer`` is hooked during the call only."""
        with record_features(self.backbone, get_layer(self.backbone, self.conv_layer)) as record:
            self.backbone(x)
        fmap = record.features
        if fmap is None or fmap.ndim != 4:
            raise ValueError(f"layer {self.conv_layer!r} did not produce an (N, C, h, w) feature map")
        return fmap.mean((2, 3)), fmap

    def forward(self, x: torch.Tensor, with_local: bool = True):
        h, fmap = self.features(x)
        z = self.head(h)
        local = self.local_head(fmap) if (with_local and self.local_head is not None) else None
        return h, z, local


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo's InfoNCE: positives ``q_i . k_i``, negatives ``q_i . queue``; inputs L2-normalised."""
    l_pos = (q * k).sum(1, keepdim=True)
    l_neg = q @ queue.T
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def patch_grid(P: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(P*P, 2) centres of a P x P grid of cells in normalised (x, y) coordinates."""
    c = (torch.arange(P, device=device, dtype=dtype) * 2 + 1) / P - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1)


def _sample(fmap: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``fmap`` (B, D, h, w) at normalised points ``pts`` (B, L, 2) -> (B, L, D)."""
    out = F.grid_sample(
        fmap, pts.unsqueeze(1).to(fmap.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.squeeze(2).transpose(1, 2)


def corresponding_points(theta_q: torch.Tensor, theta_k: torch.Tensor, grid: int = 3):
    """Grid points of the query view and the same image locations in the key view.

    Returns ``(u, v, valid)``: ``u`` (B, L, 2) the P x P cell centres in query-view coordinates,
    ``v`` (B, L, 2) the same image points in key-view coordinates, ``valid`` (B, L) where ``v``
    lies inside the key view. Views are ``apply_theta(image, theta)``: a view point w samples the
    image at ``A w + t`` with ``theta = [A | t]``.
    """
    B = theta_q.shape[0]
    u = patch_grid(grid, device=theta_q.device, dtype=theta_q.dtype).expand(B, -1, -1)
    A_q, t_q = theta_q[:, :, :2], theta_q[:, :, 2]
    A_k, t_k = theta_k[:, :, :2], theta_k[:, :, 2]
    img = u @ A_q.transpose(1, 2) + t_q.unsqueeze(1)
    v = torch.linalg.solve(A_k.unsqueeze(1), (img - t_k.unsqueeze(1)).unsqueeze(-1)).squeeze(-1)
    valid = (v.abs() <= 1).all(-1)
    return u, v, valid


def local_patch_contrastive_loss(
    q_map: torch.Tensor,
    k_map: torch.Tensor,
    theta_q: torch.Tensor,
    theta_k: torch.Tensor,
    *,
    grid: int = 3,
    tau: float = 0.2,
) -> torch.Tensor:
    """InfoNCE between patch embeddings of two views at the same image locations (see module doc).

    ``q_map``, ``k_map``: (B, D, h, w) local embeddings of the two views (``k_map`` is usually
    detached, from the momentum encoder); ``theta_q``, ``theta_k``: (B, 2, 3) affine maps from
    view to image coordinates (as returned by :func:`sdecor.ssl.augment.augment`).
    Returns 0 (with a graph) when no grid point of any sample falls inside its key view.
    """
    u, v, valid = corresponding_points(theta_q, theta_k, grid)
    qp = F.normalize(_sample(q_map, u), dim=-1)[valid]  # (M, D)
    kp = F.normalize(_sample(k_map, v), dim=-1)[valid]
    if qp.shape[0] == 0:
        return q_map.sum() * 0.0
    logits = qp @ kp.T / tau
    return F.cross_entropy(logits, torch.arange(qp.shape[0], device=qp.device))


class MoCo(nn.Module):
    """MoCo v2 with an optional local patch loss. ``encoder_q`` is trained; ``encoder_k`` follows by momentum.

    Args:
        encoder_q, encoder_k: two :class:`Encoder` of the same architecture (``encoder_k`` is
            overwritten with ``encoder_q``'s weights and frozen).
        queue_size: K keys in the queue. momentum: m. tau: InfoNCE temperature.
        bn_splits: the key batch is run in this many random sub-batches (shuffled BN on one device).
    """

    def __init__(
        self,
        encoder_q: Encoder,
        encoder_k: Encoder,
        *,
        queue_size: int = 1024,
        momentum: float = 0.99,
        tau: float = 0.2,
        bn_splits: int = 2,
    ):
        super().__init__()
        self.encoder_q, self.encoder_k = encoder_q, encoder_k
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.momentum, self.tau, self.bn_splits = float(momentum), float(tau), int(bn_splits)
        dim = encoder_q.head[-1].out_features
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, generator=None):
        """Key embeddings (normalised) and local maps, with shuffled sub-batch BN."""
        B = x.shape[0]
        perm = torch.randperm(B, generator=generator, device="cpu").to(x.device)
        inv = torch.argsort(perm)
        splits = max(1, min(self.bn_splits, B // 2))
        zs, locs = [], []
        for chunk in torch.chunk(x[perm], splits):
            _, z, loc = self.encoder_k(chunk)
            zs.append(z)
            locs.append(loc)
        z = F.normalize(torch.cat(zs)[inv], dim=1)
        loc = torch.cat(locs)[inv] if locs[0] is not None else None
        return z, loc

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        K = self.queue.shape[0]
        ptr = int(self.queue_ptr)
        n = min(k.shape[0], K)
        idx = (torch.arange(n, device=k.device) + ptr) % K
        self.queue[idx] = k[:n].to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % K)
