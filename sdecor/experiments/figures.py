"""PNG figures of a comparison: saliency maps side by side, and the masked-accuracy curves.

matplotlib runs with the non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import torch

__all__ = ["saliency_grid", "masked_accuracy_plot"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _image(x: torch.Tensor):
    """(C, H, W) tensor -> an array imshow can draw (grey for one channel), scaled to [0, 1]."""
    x = x.detach().float().cpu()
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else x * 0
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def saliency_grid(images: torch.Tensor, masks, maps: dict, path: str, labels=None, class_names=None) -> str:
    """One row per sample: the image, its ground-truth mask (if any), then each method's map.

    ``maps``: method name -> (N, 1, H, W) (or (N, H, W)) non-negative maps; each map is scaled to
    its own maximum. Returns ``path``.
    """
    plt = _pyplot()
    n = images.shape[0]
    columns = (
        [("image", None)]
        + ([("ground truth", None)] if masks is not None else [])
        + [(name, m) for name, m in maps.items()]
    )
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.6 * n + 0.4), squeeze=False)
    for row in range(n):
        for col, (name, m) in enumerate(columns):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "image":
                ax.imshow(_image(images[row]), cmap="gray" if images.shape[1] == 1 else None)
                if labels is not None:
                    label = int(labels[row])
                    text = class_names[label] if class_names and label < len(class_names) else str(label)
                    ax.set_ylabel(f"class {text}", fontsize=8)
            elif name == "ground truth":
                ax.imshow(
                    masks[row].float().reshape(masks.shape[-2], masks.shape[-1]).cpu().numpy(),
                    cmap="gray",
                    vmin=0,
                    vmax=1,
                )
            else:
                a = m[row].detach().float().cpu().reshape(m.shape[-2], m.shape[-1])
                top = float(a.abs().max())
                ax.imshow((a.abs() / top).numpy() if top > 0 else a.numpy(), cmap="hot", vmin=0, vmax=1)
            if row == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle("Gradient saliency |d logit_y / d x| (channel mean), per-map max scaling", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def masked_accuracy_plot(curves: dict, path: str, title: str | None = None) -> str:
    """Accuracy vs. fraction of the most salient pixels masked, mean +- std over seeds per method.

    ``curves``: method -> list of ``{"fractions": [...], "accuracy": [...]}`` (one per seed).
    Lower curves mean more faithful saliency (masking what it points at hurts more).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for name, runs in curves.items():
        if not runs:
            continue
        fractions = runs[0]["fractions"]
        acc = torch.tensor([r["accuracy"] for r in runs], dtype=torch.float64)
        mean = acc.mean(0)
        std = acc.std(0, unbiased=True) if acc.shape[0] > 1 else torch.zeros_like(mean)
        x = [100 * f for f in fractions]
        ax.plot(x, mean.tolist(), marker="o", markersize=3, label=name)
        if acc.shape[0] > 1:
            ax.fill_between(x, (mean - std).tolist(), (mean + std).tolist(), alpha=0.15)
    ax.set_xlabel("most salient pixels masked (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "Masked accuracy (lower = more faithful saliency)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
