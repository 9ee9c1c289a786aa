"""The med-moco comparison: MoCo v2 (+ local patch loss) plain, + decorrelation penalty, + IterNorm.

:func:`train_moco` trains one setting and returns its encoder; :func:`evaluate` measures the
effective rank of the learned representations (dimensional collapse) and linear-probe accuracy;
:func:`run_comparison` does both for every setting and seed (``sdecor ssl`` prints its table).

Settings:

* ``"plain"``: MoCo v2 + local patch contrastive loss.
* ``"decor"``: plus ``decor_weight * decorrelation_loss(h)`` on the pooled backbone features h
  of the query view (correlation mode, mean reduction): sdecor's loss-form decorrelation.
* ``"iternorm"``: the backbone's last BatchNorm replaced by :class:`sdecor.models.iternorm.IterNorm`
  (T = 5, groups of at most 64 channels), med-moco's architectural decorrelation.

Effective rank is measured on the test set's pooled backbone features (the representation the
probe reads) and on the projection-head embeddings; both centred.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..ops.decorrelation import decorrelation_loss
from .augment import AugmentConfig, augment
from .metrics import effective_rank, linear_probe, mean_squared_correlation
from .moco import Encoder, MoCo, info_nce, local_patch_contrastive_loss

__all__ = [
    "SSLConfig",
    "SETTINGS",
    "build_encoder",
    "train_moco",
    "embed",
    "evaluate",
    "run_comparison",
    "load_data",
    "format_table",
]

SETTINGS = ("plain", "decor", "iternorm")


@dataclass
class SSLConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.06
    weight_decay: float = 5e-4
    momentum: float = 0.99  # key encoder
    queue_size: int = 1024
    tau: float = 0.2
    dim: int = 64
    hidden: int = 256
    width: int = 32  # SmallCNN width (features: 2 * width)
    local_weight: float = 0.5
    local_dim: int = 32
    local_grid: int = 3
    local_tau: float = 0.2
    decor_weight: float = 1.0
    iternorm_T: int = 5
    iternorm_group: int = 64
    bn_splits: int = 2
    n_train: int | None = None
    n_test: int | None = None
    image_size: int = 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def as_dict(self) -> dict:
        return asdict(self)


def load_data(cfg: SSLConfig, seed: int = 0):
    """(train_images, train_labels, test_images, test_labels) of the embedded digits-in-clutter set."""
    from ..data import make_digits_in_clutter

    train = make_digits_in_clutter("train", size=cfg.image_size, seed=seed)
    test = make_digits_in_clutter("test", size=cfg.image_size, seed=seed)
    tr_x, tr_y, te_x, te_y = train.images, train.labels, test.images, test.labels
    if cfg.n_train:
        tr_x, tr_y = tr_x[: cfg.n_train], tr_y[: cfg.n_train]
    if cfg.n_test:
        te_x, te_y = te_x[: cfg.n_test], te_y[: cfg.n_test]
    return tr_x, tr_y, te_x, te_y


def build_encoder(setting: str, cfg: SSLConfig, in_channels: int = 3, image_size: int = 32) -> Encoder:
    """A SmallCNN-backed :class:`Encoder`; for ``"iternorm"`` its last BatchNorm becomes IterNorm."""
    from ..models import SmallCNN
    from ..models.iternorm import replace_last_batchnorm

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    backbone = SmallCNN(num_classes=10, in_channels=in_channels, width=cfg.width)
    feat_dim = backbone.num_features
    if setting == "iternorm":
        group = min(cfg.iternorm_group, feat_dim)
        while feat_dim % group:
            group -= 1
        replace_last_batchnorm(backbone, T=cfg.iternorm_T, num_channels=group)
    return Encoder(
        backbone,
        backbone.conv_feature_layer,
        feat_dim,
        dim=cfg.dim,
        hidden=cfg.hidden,
        local_dim=cfg.local_dim if cfg.local_weight > 0 else 0,
    )


def train_moco(
    setting: str, images: torch.Tensor, cfg: SSLConfig, *, seed: int = 0, device="cpu", log=None
) -> tuple[Encoder, dict]:
    """Train one setting on ``images`` (N, C, H, W) in [0, 1] (labels are never used).

    Returns (query encoder in eval mode, history dict with per-epoch mean losses and seconds).
    """
    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1) if str(device) != "cpu" else gen
    images = images.to(device)
    enc_q = build_encoder(setting, cfg, images.shape[1], images.shape[-1]).to(device)
    enc_k = build_encoder(setting, cfg, images.shape[1], images.shape[-1]).to(device)
    model = MoCo(
        enc_q, enc_k, queue_size=cfg.queue_size, momentum=cfg.momentum, tau=cfg.tau, bn_splits=cfg.bn_splits
    ).to(device)
    params = [p for p in enc_q.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    n = images.shape[0]
    steps_per_epoch = max(1, n // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    history = {"loss": [], "info_nce": [], "local": [], "decor": [], "seconds": 0.0}
    start = time.perf_counter()
    step = 0
    enc_q.train()
    enc_k.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        sums = {"loss": 0.0, "info_nce": 0.0, "local": 0.0, "decor": 0.0}
        for i in range(steps_per_epoch):
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            for group in opt.param_groups:
                group["lr"] = lr
            x = images[perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]]
            xq, th_q = augment(x, cfg.augment, aug_gen)
            xk, th_k = augment(x, cfg.augment, aug_gen)
            h, z, q_map = enc_q(xq, with_local=cfg.local_weight > 0)
            q = F.normalize(z, dim=1)
            model.momentum_update()
            k, k_map = model.keys(xk, generator=gen)
            loss_nce = info_nce(q, k, model.queue.clone(), cfg.tau)
            loss = loss_nce
            loss_local = torch.zeros((), device=device)
            if cfg.local_weight > 0:
                loss_local = local_patch_contrastive_loss(
                    q_map, k_map, th_q, th_k, grid=cfg.local_grid, tau=cfg.local_tau
                )
                loss = loss + cfg.local_weight * loss_local
            loss_decor = torch.zeros((), device=device)
            if setting == "decor" and cfg.decor_weight > 0:
                loss_decor = decorrelation_loss(h, mode="correlation")
                loss = loss + cfg.decor_weight * loss_decor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.enqueue(k)
            step += 1
            sums["loss"] += float(loss.detach())
            sums["info_nce"] += float(loss_nce.detach())
            sums["local"] += float(loss_local.detach())
            sums["decor"] += float(loss_decor.detach())
        for key in sums:
            history[key].append(sums[key] / steps_per_epoch)
        if log is not None:
            log(
                f"  [{setting} seed {seed}] epoch {epoch + 1}/{cfg.epochs}: loss {history['loss'][-1]:.3f} "
                f"(InfoNCE {history['info_nce'][-1]:.3f}, local {history['local'][-1]:.3f}, decor "
                f"{history['decor'][-1]:.4f}) "
                f"{time.perf_counter() - start:.0f}s"
            )
    history["seconds"] = time.perf_counter() - start
    enc_q.eval()
    return enc_q, history


@torch.no_grad()
def embed(
    encoder: Encoder, images: torch.Tensor, batch_size: int = 512, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled backbone features h, projection embeddings z) of ``images`` in eval mode, on the CPU."""
    was_training = encoder.training
    encoder.eval()
    hs, zs = [], []
    for i in range(0, images.shape[0], batch_size):
        h, z, _ = encoder(images[i : i + batch_size].to(device), with_local=False)
        hs.append(h.float().cpu())
        zs.append(z.float().cpu())
    encoder.train(was_training)
    return torch.cat(hs), torch.cat(zs)


def evaluate(encoder: Encoder, data, device="cpu") -> dict:
    """Effective ranks (higher is better), mean squared feature correlation (lower = more decorrelated),
    linear-probe accuracy (higher is better)."""
    tr_x, tr_y, te_x, te_y = data
    h_tr, _ = embed(encoder, tr_x, device=device)
    h_te, z_te = embed(encoder, te_x, device=device)
    probe = linear_probe(h_tr, tr_y, h_te, te_y)
    return {
        "erank_features": effective_rank(h_te),
        "erank_projection": effective_rank(z_te),
        "feature_dim": h_te.shape[1],
        "projection_dim": z_te.shape[1],
        "mean_sq_correlation": mean_squared_correlation(h_te),
        "probe_test_accuracy": probe["test_accuracy"],
        "probe_train_accuracy": probe["train_accuracy"],
    }


def run_comparison(
    cfg: SSLConfig,
    *,
    settings=SETTINGS,
    seeds=(0,),
    device="cpu",
    data=None,
    log=print,
    include_random: bool = True,
) -> dict:
    """Train and evaluate every setting for every seed. ``data`` defaults to :func:`load_data`.

    Returns ``{"config", "results": [{setting, seed, metrics..., history}],
    "summary": {setting: {metric: (mean, std)}}}``.
    ``include_random`` adds an untrained encoder ("random init") as a reference row.
    """
    data = data if data is not None else load_data(cfg)
    results = []
    for seed in seeds:
        if include_random:
            torch.manual_seed(seed)
            enc = build_encoder("plain", cfg, data[0].shape[1], data[0].shape[-1]).to(device)
            # one pass in train mode to give BatchNorm data statistics, then evaluate
            with torch.no_grad():
                for i in range(0, data[0].shape[0], cfg.batch_size):
                    enc(data[0][i : i + cfg.batch_size].to(device), with_local=False)
            results.append({"setting": "random init", "seed": seed, **evaluate(enc, data, device), "seconds": 0.0})
        for setting in settings:
            if log:
                log(f"training {setting} (seed {seed}) ...")
            enc, hist = train_moco(setting, data[0], cfg, seed=seed, device=device, log=log)
            metrics = evaluate(enc, data, device)
            results.append({"setting": setting, "seed": seed, **metrics, "seconds": hist["seconds"], "history": hist})
            if log:
                log(
                    f"  -> erank(features) {metrics['erank_features']:.2f}, erank(projection) "
                    f"{metrics['erank_projection']:.2f}, "
                    f"probe accuracy {100 * metrics['probe_test_accuracy']:.1f}%"
                )
    summary = {}
    for name in dict.fromkeys(r["setting"] for r in results):
        rows = [r for r in results if r["setting"] == name]
        summary[name] = {}
        for key in ("erank_features", "erank_projection", "mean_sq_correlation", "probe_test_accuracy", "seconds"):
            vals = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
            summary[name][key] = (float(vals.mean()), float(vals.std()) if len(vals) > 1 else 0.0)
    return {
        "config": cfg.as_dict(),
        "seeds": list(seeds),
        "device": str(device),
        "results": results,
        "summary": summary,
    }


def format_table(report: dict) -> str:
    """Plain-text table of a :func:`run_comparison` report (mean +- std over seeds)."""
    rows = report["summary"]
    first = next(iter(report["results"]))
    multi = len(report["seeds"]) > 1

    def fmt(pair, scale=1.0, digits=2):
        m, s = pair
        return f"{m * scale:.{digits}f}" + (f" +- {s * scale:.{digits}f}" if multi else "")

    columns = [
        (f"erank feat (/{first['feature_dim']}) ^", lambda st: fmt(st["erank_features"])),
        (f"erank proj (/{first['projection_dim']}) ^", lambda st: fmt(st["erank_projection"])),
        ("mean rho^2 v", lambda st: fmt(st["mean_sq_correlation"], digits=3)),
        ("probe acc % ^", lambda st: fmt(st["probe_test_accuracy"], 100, 1)),
        ("train s", lambda st: f"{st['seconds'][0]:.0f}"),
    ]
    cells = {name: [f(stats) for _, f in columns] for name, stats in rows.items()}
    widths = [max(len(title), *(len(c[i]) for c in cells.values())) for i, (title, _) in enumerate(columns)]
    name_w = max(len("setting"), *(len(n) for n in rows))
    header = f"{'setting':<{name_w}}  " + "  ".join(f"{t:>{w}}" for (t, _), w in zip(columns, widths))
    lines = [header, "-" * len(header)]
    for name, row in cells.items():
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row, widths)))
    lines.append(
        "^ higher is better, v lower is better (mean rho^2: mean squared off-diagonal correlation of the test features)"
        + ("; mean +- std over seeds, train s: mean" if multi else "")
    )
    return "\n".join(lines)
