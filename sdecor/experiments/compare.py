"""The comparison behind ``sdecor compare``: every method x every seed, one table, files on disk.

:func:`compare` trains each method (``sdecor.losses`` objective with its default options unless
``method_options`` says otherwise) from each seed on one data set, evaluates it
(:func:`sdecor.experiments.runner.evaluate`), and writes into ``out``:

* ``results.json``: the configuration, the per-method summary (mean, std, n over seeds), the
  direction of every score, the printed table and every run's record (scores, masked-accuracy
  curve, per-epoch training history, timings);
* ``saliency_maps.png``: test images, their ground-truth masks and each method's Gradient map
  (first seed's models);
* ``masked_accuracy.png``: the masked-accuracy curves, mean +- std over seeds.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch

from ..losses import OBJECTIVES
from .figures import masked_accuracy_plot, saliency_grid
from .runner import METRICS, SCORE_DIRECTIONS, EvalConfig, eval_config_dict, format_table, load_data, run, summarize

__all__ = ["compare", "DEFAULTS"]

#: Defaults of ``sdecor compare``, sized to finish within 5 minutes on 2 CPU cores
#: (5 methods x 3 seeds; see docs/experiments.md for the measurement).
DEFAULTS = {
    "epochs": 6,
    "seeds": (0, 1, 2),
    "dataset": "digits-in-clutter",
    "model": "small_cnn",
    "width": 16,
    "batch_size": 32,
    "lr": 0.1,
    "n_train": None,
    "n_test": None,
}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value


def compare(
    methods=tuple(OBJECTIVES),
    *,
    seeds=DEFAULTS["seeds"],
    epochs: int = DEFAULTS["epochs"],
    dataset: str = DEFAULTS["dataset"],
    model: str = DEFAULTS["model"],
    width: int | None = DEFAULTS["width"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    n_train=DEFAULTS["n_train"],
    n_test=DEFAULTS["n_test"],
    device="cpu",
    out: str | None = None,
    method_options: dict | None = None,
    eval_config: EvalConfig | None = None,
    figures: bool = True,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the comparison; returns the results dict that ``results.json`` holds."""
    eval_config = eval_config or EvalConfig()
    method_options = method_options or {}
    started = time.perf_counter()
    data = load_data(dataset, batch_size=batch_size, n_train=n_train, n_test=n_test)
    model_kwargs = {} if width is None else {"width": width}
    records, maps = [], {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(methods) * len(seeds), desc="compare", unit="run", dynamic_ncols=True)
    try:
        for seed in seeds:
            for method in methods:
                if bar is not None:
                    bar.set_postfix_str(f"{method} seed {seed}")
                record = run(
                    method,
                    data,
                    options=method_options.get(method, {}),
                    model=model,
                    model_kwargs=model_kwargs,
                    epochs=epochs,
                    lr=lr,
                    seed=seed,
                    device=device,
                    eval_config=eval_config,
                    keep_maps=figures and seed == seeds[0],
                )
                if "maps" in record:
                    maps[method] = record.pop("maps")
                records.append(record)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    summary = summarize(records)
    title = (
        f"{dataset}, {model}"
        + (f" (width {width})" if width is not None else "")
        + f", {epochs} epoch(s), seeds {list(seeds)}, Gradient saliency on "
        f"{min(eval_config.n_eval, len(data.labels))} test images"
    )
    table = format_table(summary, title=title)
    results = {
        "config": {
            "methods": list(methods),
            "seeds": list(seeds),
            "epochs": epochs,
            "dataset": dataset,
            "data": data.meta,
            "model": model,
            "width": width,
            "batch_size": batch_size,
            "lr": lr,
            "schedule": "onecycle",
            "device": str(device),
            "threads": torch.get_num_threads(),
            "method_options": method_options,
            "eval": eval_config_dict(eval_config),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "directions": {m: SCORE_DIRECTIONS[m] for m in METRICS},
        "summary": summary,
        "table": table,
        "runs": records,
        "wall_time_s": None,
        "files": {},
    }
    if out is not None:
        os.makedirs(out, exist_ok=True)
        if figures and maps:
            n = next(iter(maps.values())).shape[0]
            results["files"]["saliency_maps"] = saliency_grid(
                data.images[:n],
                data.masks[:n] if data.masks is not None else None,
                maps,
                os.path.join(out, "saliency_maps.png"),
                labels=data.labels[:n],
                class_names=getattr(data.info, "class_names", None),
            )
        if figures:
            curves = {m: [r["masked_accuracy"] for r in records if r["method"] == m] for m in methods}
            results["files"]["masked_accuracy"] = masked_accuracy_plot(curves, os.path.join(out, "masked_accuracy.png"))
        results["files"]["results"] = os.path.join(out, "results.json")
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    if out is not None:
        with open(results["files"]["results"], "w") as f:
            json.dump(_jsonable(results), f, indent=1)
    if log is not None:
        log(table)
        log(f"wall time {results['wall_time_s']:.0f} s")
        if out is not None:
            log(f"wrote {', '.join(results['files'].values())}")
    return results
