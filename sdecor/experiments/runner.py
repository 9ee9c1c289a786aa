"""Train-and-evaluate runs, shared by ``sdecor compare`` and the design sweep.

One *run* = one objective (a name from :data:`sdecor.losses.OBJECTIVES` plus keyword options)
trained on one data set with one seed, then evaluated on the test split:

* ``accuracy``: top-1 accuracy on the whole test split;
* on the first ``EvalConfig.n_eval`` test images, the Gradient saliency map of the true class,
  ``|d logit_y / d x|`` averaged over the colour channels (one value per pixel), scored by
  ``sparseness`` (Gini), ``pointing_game`` and ``relevance_mass_accuracy`` against the
  ground-truth masks (when the data set has them), ``deletion_auc`` (RISE protocol, zero
  substrate, the true class's probability, on the first ``n_deletion`` of them) and the Saliency
  Guided Training ``masked_accuracy`` curve (accuracy as the most salient d% of pixels are
  replaced by uniform noise) and its normalised AUC.

Every record is a JSON-ready dict; :func:`summarize` reduces records to mean and sample standard
deviation over seeds, and :func:`format_table` prints them with each column's direction.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from .. import metrics as M
from ..data import make_loaders
from ..losses import OBJECTIVES, build_objective
from ..models import build_model
from ..saliency import Gradient
from ..train import fit, set_seed

__all__ = [
    "METRICS",
    "SCORE_DIRECTIONS",
    "EvalConfig",
    "Data",
    "load_data",
    "pixel_saliency",
    "evaluate",
    "run",
    "summarize",
    "format_table",
    "default_threads",
]

#: The scores of a run, in table order.
METRICS = ("accuracy", "sparseness", "pointing_game", "relevance_mass_accuracy", "deletion_auc", "masked_accuracy_auc")
#: "higher" or "lower" is better, per score of a run (the saliency metrics' own directions from
#: :data:`sdecor.metrics.DIRECTIONS`, plus accuracy and the masked-accuracy AUC).
SCORE_DIRECTIONS = {
    "accuracy": "higher",
    "sparseness": M.DIRECTIONS["sparseness"],
    "pointing_game": M.DIRECTIONS["pointing_game"],
    "relevance_mass_accuracy": M.DIRECTIONS["relevance_mass_accuracy"],
    "deletion_auc": M.DIRECTIONS["deletion_auc"],
    "masked_accuracy_auc": M.DIRECTIONS["masked_accuracy_curve"],
}
#: Short column names for the printed table.
SHORT = {
    "accuracy": "acc",
    "sparseness": "sparse",
    "pointing_game": "point",
    "relevance_mass_accuracy": "rma",
    "deletion_auc": "del_auc",
    "masked_accuracy_auc": "mask_auc",
}


def default_threads() -> int:
    """CPU threads for torch: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class EvalConfig:
    """How much of the test split the saliency metrics use (they cost forward passes)."""

    n_eval: int = 512
    n_deletion: int = 256
    deletion_steps: int = 16
    fractions: tuple = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    batch_size: int = 256
    n_figure: int = 6


@dataclass
class Data:
    """A loaded data set: the train loader and the test split as tensors."""

    train_loader: object
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    info: object
    meta: dict = field(default_factory=dict)


def load_data(
    dataset: str = "digits-in-clutter", *, batch_size: int = 128, n_train=None, n_test=None, data_seed: int = 0
) -> Data:
    """Build the loaders with :func:`sdecor.data.make_loaders` and stack the test split."""
    train_loader, test_loader, info = make_loaders(
        dataset, batch_size=batch_size, seed=data_seed, n_train=n_train, n_test=n_test, num_workers=0
    )
    images, labels, masks = [], [], []
    for batch in test_loader:
        images.append(batch[0])
        labels.append(batch[1])
        if info.has_masks:
            masks.append(batch[2])
    if not images:
        raise ValueError(f"the test split of {dataset!r} is empty")
    data = Data(
        train_loader, torch.cat(images), torch.cat(labels).long(), torch.cat(masks).bool() if masks else None, info
    )
    first = next(iter(torch.utils.data.DataLoader(train_loader.dataset, batch_size=64, shuffle=False)))
    digest = hashlib.sha1()
    for t in (first[0], first[1], data.images, data.labels):
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    data.meta = {
        "dataset": dataset,
        "n_train": len(train_loader.dataset),
        "n_test": int(data.labels.shape[0]),
        "fingerprint": digest.hexdigest()[:12],  # changes when the rendered data change
    }
    return data


def pixel_saliency(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(B, 1, H, W) Gradient saliency of the true class: ``|grad|`` averaged over channels."""
    explainer = Gradient(model, abs=True)
    maps = []
    for start in range(0, images.shape[0], batch_size):
        grad = explainer.attribute(images[start : start + batch_size], labels[start : start + batch_size])
        maps.append(grad.mean(dim=1, keepdim=True) if grad.ndim == 4 else grad)
    return torch.cat(maps)


def _mean(x: torch.Tensor) -> float:
    x = x.double()
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


@torch.no_grad()
def _accuracy(model, images, labels, batch_size) -> float:
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(1, images.shape[0])


def evaluate(
    model, data: Data, *, device, config: EvalConfig | None = None, seed: int = 0, keep_maps: bool = False
) -> dict:
    """Scores of a trained model (see the module doc); ``keep_maps`` adds the first maps for figures."""
    config = config or EvalConfig()
    device = torch.device(device)
    model = model.to(device).eval()
    images, labels = data.images.to(device), data.labels.to(device)
    out: dict = {"accuracy": _accuracy(model, images, labels, config.batch_size)}

    n = min(config.n_eval, images.shape[0])
    x, y = images[:n], labels[:n]
    maps = pixel_saliency(model, x, y, config.batch_size)
    out["sparseness"] = _mean(M.sparseness(maps))
    if data.masks is not None:
        masks = data.masks[:n].to(device)
        out["pointing_game"] = _mean(M.pointing_game(maps, masks))
        out["relevance_mass_accuracy"] = _mean(M.relevance_mass_accuracy(maps, masks))
    else:
        out["pointing_game"] = out["relevance_mass_accuracy"] = None
    nd = min(config.n_deletion, n)
    positions = maps[0].numel()
    step = max(1, math.ceil(positions / config.deletion_steps))
    out["deletion_auc"] = _mean(
        M.deletion_auc(
            model, x[:nd], maps[:nd], targets=y[:nd], step=step, substrate="zero", batch_size=config.batch_size
        )
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    curve = M.masked_accuracy_curve(
        model, x, maps, y, fractions=config.fractions, generator=generator, batch_size=config.batch_size
    )
    out["masked_accuracy_auc"] = float(curve.auc)
    result = {
        "metrics": out,
        "masked_accuracy": {
            "fractions": [round(float(f), 6) for f in curve.fractions],
            "accuracy": [float(a) for a in curve.accuracy],
        },
    }
    if keep_maps:
        k = min(config.n_figure, n)
        result["maps"] = maps[:k].detach().cpu()
    return result


def run(
    method: str,
    data: Data,
    *,
    options: dict | None = None,
    model: str = "small_cnn",
    model_kwargs: dict | None = None,
    epochs: int = 3,
    lr: float = 0.05,
    seed: int = 0,
    device="cpu",
    eval_config: EvalConfig | None = None,
    keep_maps: bool = False,
    progress: bool = False,
) -> dict:
    """Train ``method`` with ``options`` for ``epochs`` on ``data`` from ``seed``, then evaluate.

    Returns a JSON-ready record: ``options`` as given, ``resolved_options`` every option the
    objective ran with, defaults included (:meth:`sdecor.losses.Objective.options`), the scores,
    the training history and times (``maps``, when kept, is a tensor: pop it before saving).
    """
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(OBJECTIVES)}")
    options = dict(options or {})
    set_seed(seed)
    info = data.info
    net = build_model(model, num_classes=info.num_classes, in_channels=info.image_shape[0], **(model_kwargs or {}))
    generator = getattr(data.train_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)  # a different batch order per seed
    objective = build_objective(method, **options)
    start = time.perf_counter()
    history = fit(
        net,
        objective,
        data.train_loader,
        epochs=epochs,
        lr=lr,
        schedule="onecycle",
        device=device,
        seed=seed,
        progress=progress,
    )
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    evaluation = evaluate(net, data, device=device, config=eval_config, seed=seed, keep_maps=keep_maps)
    record = {
        "method": method,
        "data": data.meta.get("fingerprint"),
        "options": options,
        "resolved_options": objective.options(),
        "seed": seed,
        "model": getattr(net, "config", {"name": model}),
        "epochs": epochs,
        "lr": lr,
        **evaluation,
        "history": history.to_dict()["epochs"],
        "train_time_s": round(train_time, 2),
        "eval_time_s": round(time.perf_counter() - start, 2),
    }
    return record


# --------------------------------------------------------------------------- summaries


def summarize(records: list[dict], key: str = "method") -> dict:
    """``{group: {metric: {"mean", "std", "n"}}}`` over the records of each group (seeds).

    ``std`` is the sample standard deviation (ddof 1; 0 for a single seed). Missing (None/NaN)
    scores are left out; a metric with no value gives ``None``. Groups keep first-seen order.
    """
    groups: dict = {}
    for record in records:
        groups.setdefault(record[key], []).append(record)
    summary = {}
    for name, group in groups.items():
        row = {}
        for metric in METRICS:
            values = [r["metrics"].get(metric) for r in group]
            values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            if not values:
                row[metric] = None
                continue
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            row[metric] = {"mean": mean, "std": std, "n": len(values)}
        row["train_time_s"] = sum(r.get("train_time_s", 0.0) for r in group) / len(group)
        summary[name] = row
    return summary


def _arrows_ok() -> bool:
    import sys

    encoding = getattr(sys.stdout, "encoding", None) or ""
    try:
        "\u2191\u2193\u00b1".encode(encoding or "ascii")
        return True
    except (LookupError, UnicodeEncodeError):
        return False


def format_table(summary: dict, metrics=METRICS, directions=SCORE_DIRECTIONS, title: str | None = None) -> str:
    """A fixed-width table: one row per group, ``mean ± std`` per metric, direction in the header."""
    fancy = _arrows_ok()
    up, down, pm = ("\u2191", "\u2193", "\u00b1") if fancy else ("^", "v", "+-")
    headers = ["method"] + [f"{SHORT.get(m, m)} {up if directions.get(m) == 'higher' else down}" for m in metrics]
    rows = []
    for name, row in summary.items():
        cells = [str(name)]
        for m in metrics:
            v = row.get(m)
            cells.append("n/a" if v is None else f"{v['mean']:.3f}{pm}{v['std']:.3f}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    legend = ", ".join(f"{SHORT.get(m, m)} = {m}" for m in metrics)
    lines.append(f"{up} higher is better, {down} lower is better; mean {pm} std over seeds. {legend}")
    return "\n".join(lines)


def eval_config_dict(config: EvalConfig) -> dict:
    return asdict(config)
