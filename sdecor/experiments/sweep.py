"""The SaliencyDecor design sweep: what the paper leaves open, measured on digits-in-clutter.

    python -m sdecor.experiments.sweep --stage screen  --out runs/sweep   # every setting, 1 seed
    python -m sdecor.experiments.sweep --stage confirm --out runs/sweep   # CONFIRM settings, 3 seeds
    python -m sdecor.experiments.sweep --report        --out runs/sweep   # tables from what is done
        [--export docs/results/sweep.json]

Each run trains SmallCNN (width 16) for 8 epochs (one-cycle to lr 0.1, SGD, batch 32) on the embedded
digits-in-clutter data and scores Gradient saliency like ``sdecor compare`` does. Runs are
appended to ``OUT/runs.jsonl`` as they finish; a rerun skips the (setting, seed) pairs already
there, so the sweep can be stopped and resumed (runs on differently rendered data are refused:
each record carries the data's fingerprint). ``--report`` writes ``OUT/summary.json`` and
``OUT/summary.md``: the screen (seed 0 of every setting) and the settings run with several seeds
(mean +- std over seeds).

The settings (:data:`SETTINGS`) vary one choice at a time around the SaliencyDecor reading that
the issue's prototype used (signed saliency, 10% of the pixels masked with uniform noise, the
masked batch in train-mode BatchNorm, correlation penalty of weight 0.1 on the pooled features).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from .runner import METRICS, SCORE_DIRECTIONS, EvalConfig, default_threads, format_table, load_data, run, summarize

__all__ = ["SETTINGS", "SCREEN", "CONFIRM", "main"]

_BASE = {
    "lambda_consistency": 1.0,
    "lambda_decor": 0.1,
    "mask_fraction": 0.1,
    "saliency_abs": False,
    "decor_mode": "correlation",
    "feature_layer": None,
    "masked_bn": "train",
    "fill": "uniform",
}


def _sd(**changes) -> tuple:
    options = dict(_BASE)
    options.update(changes)
    return ("saliencydecor", options)


#: name -> (method, options). Baselines use their defaults.
SETTINGS = {
    "standard": ("standard", {}),
    "decov": ("decov", {}),
    "sgt": ("sgt", {}),
    "sgt_abs": ("sgt", {"saliency_abs": True}),
    "sgt_m50": ("sgt", {"mask_fraction": 0.5}),
    "scaat": ("scaat", {}),
    # SaliencyDecor around the prototype's reading
    "sd_base": _sd(),
    "sd_ld0.01": _sd(lambda_decor=0.01),
    "sd_ld1": _sd(lambda_decor=1.0),
    "sd_lc0": _sd(lambda_consistency=0.0),
    "sd_lc0_ld1": _sd(lambda_consistency=0.0, lambda_decor=1.0),
    "sd_abs": _sd(saliency_abs=True),
    "sd_m30": _sd(mask_fraction=0.3),
    "sd_m50": _sd(mask_fraction=0.5),
    "sd_m50_abs": _sd(mask_fraction=0.5, saliency_abs=True),
    "sd_fill_mean": _sd(fill="mean"),
    "sd_cov": _sd(decor_mode="covariance"),
    "sd_conv": _sd(feature_layer="conv"),
    "sd_conv_ld1": _sd(feature_layer="conv", lambda_decor=1.0),
    "sd_bn_joint": _sd(masked_bn="joint"),
    "sd_bn_eval": _sd(masked_bn="eval"),
    # combinations of the screen's best single changes (confirm stage only)
    "sd_abs_ld0.01": _sd(saliency_abs=True, lambda_decor=0.01),
    "sd_abs_ld1": _sd(saliency_abs=True, lambda_decor=1.0),
    "sd_abs_cov": _sd(saliency_abs=True, decor_mode="covariance"),
    "sd_abs_joint": _sd(saliency_abs=True, masked_bn="joint"),
    # after the screen: SCAAT's large perturbed fraction is what moved relevance mass; push masking
    "sd_m70_abs": _sd(mask_fraction=0.7, saliency_abs=True),
    "sd_abs_lc3": _sd(saliency_abs=True, lambda_consistency=3.0),
    "sd_m50_abs_lc3": _sd(mask_fraction=0.5, saliency_abs=True, lambda_consistency=3.0),
    # the lambda_decor ladder at |saliency|, lambda_consistency = 3 (ld0 is SGT with those settings)
    "sd_abs_lc3_ld0": _sd(saliency_abs=True, lambda_consistency=3.0, lambda_decor=0.0),
    "sd_abs_lc3_ld0.01": _sd(saliency_abs=True, lambda_consistency=3.0, lambda_decor=0.01),
    "sd_abs_lc3_ld1": _sd(saliency_abs=True, lambda_consistency=3.0, lambda_decor=1.0),
    # ... and at the best masking setting (50% of pixels by |saliency|, lambda_consistency = 3)
    "sd_m50_abs_lc3_ld0": _sd(mask_fraction=0.5, saliency_abs=True, lambda_consistency=3.0, lambda_decor=0.0),
    "sd_m50_abs_lc3_ld0.01": _sd(mask_fraction=0.5, saliency_abs=True, lambda_consistency=3.0, lambda_decor=0.01),
    "sd_m50_abs_lc3_ld1": _sd(mask_fraction=0.5, saliency_abs=True, lambda_consistency=3.0, lambda_decor=1.0),
    "sd_m50_abs_lc3_joint": _sd(mask_fraction=0.5, saliency_abs=True, lambda_consistency=3.0, masked_bn="joint"),
}

#: The coarse screen: every setting, one seed (the most informative first).
SCREEN = (
    "standard",
    "sgt",
    "sd_base",
    "sd_lc0",
    "sd_ld1",
    "sd_abs",
    "sd_m50",
    "sd_m50_abs",
    "sd_conv",
    "sd_conv_ld1",
    "sd_cov",
    "sd_bn_joint",
    "sd_bn_eval",
    "sd_ld0.01",
    "sd_m30",
    "sd_fill_mean",
    "sd_lc0_ld1",
    "decov",
    "sgt_abs",
    "sgt_m50",
    "scaat",
)
assert set(SCREEN) <= set(SETTINGS)
#: Confirmed with 3 seeds: the baselines, the prototype's reading, the screen's most promising
#: single changes, their combinations, and the lambda_decor ladder at the chosen setting
#: (sgt_abs is lambda_decor = 0 there).
CONFIRM = (
    "standard",
    "decov",
    "sgt",
    "scaat",
    "sgt_abs",
    "sd_base",
    "sd_abs",
    "sd_m50_abs",
    "sd_bn_joint",
    "sd_abs_joint",
    "sd_abs_lc3",
    "sd_m50_abs_lc3",
    "sd_abs_lc3_ld0",
    "sd_abs_lc3_ld0.01",
    "sd_abs_lc3_ld1",
    "sd_m50_abs_lc3_ld0",
    "sd_m50_abs_lc3_ld0.01",
    "sd_m50_abs_lc3_ld1",
    "sd_m50_abs_lc3_joint",
)

SWEEP = {"epochs": 8, "model": "small_cnn", "width": 16, "batch_size": 32, "lr": 0.1, "dataset": "digits-in-clutter"}


def _done(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    return records


def run_settings(names, seeds, out: str, *, epochs: int, width: int, device="cpu", progress: bool = True) -> list[dict]:
    """Train every (setting, seed) not yet in ``out/runs.jsonl``; append each record as it finishes."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "runs.jsonl")
    data = load_data(SWEEP["dataset"], batch_size=SWEEP["batch_size"])
    fingerprint = data.meta["fingerprint"]
    previous = _done(path)
    stale = {r.get("data") for r in previous} - {fingerprint}
    if stale:
        raise SystemExit(
            f"{path} holds runs on other data ({', '.join(map(str, stale))}; now {fingerprint}): move it away first"
        )
    done = {(r["setting"], r["seed"], r["epochs"]) for r in previous}
    todo = [(n, s) for s in seeds for n in names if (n, s, epochs) not in done]
    if not todo:
        return []
    from tqdm.auto import tqdm

    new = []
    with tqdm(todo, desc="sweep", unit="run", dynamic_ncols=True, disable=not progress) as bar:
        for name, seed in bar:
            bar.set_postfix_str(f"{name} seed {seed}")
            method, options = SETTINGS[name]
            record = run(
                method,
                data,
                options=options,
                model=SWEEP["model"],
                model_kwargs={"width": width},
                epochs=epochs,
                lr=SWEEP["lr"],
                seed=seed,
                device=device,
                eval_config=EvalConfig(),
            )
            record["setting"] = name
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
            new.append(record)
            m = record["metrics"]
            bar.write(
                f"{name:14s} seed {seed}: acc {m['accuracy']:.3f} rma {m['relevance_mass_accuracy']:.3f} "
                f"point {m['pointing_game']:.3f} del {m['deletion_auc']:.3f} ({record['train_time_s']:.0f} s)"
            )
    return new


def _markdown(summary: dict) -> str:
    lines = [
        "| setting | seeds | " + " | ".join(f"{m} ({SCORE_DIRECTIONS[m]})" for m in METRICS) + " | train s |",
        "|" + "---|" * (len(METRICS) + 3),
    ]
    for name, row in summary.items():
        n = max((v["n"] for v in row.values() if isinstance(v, dict)), default=0)
        cells = [
            "n/a"
            if row[m] is None
            else (f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" if n > 1 else f"{row[m]['mean']:.3f}")
            for m in METRICS
        ]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + f" | {row['train_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _ordered(summary: dict) -> dict:
    order = [n for n in SETTINGS if n in summary] + [n for n in summary if n not in SETTINGS]
    return {n: summary[n] for n in order}


def report(out: str, epochs: int | None = None, export: str | None = None) -> str:
    """Tables of what is done: the screen (seed 0 of every setting) and the settings with >= 2 seeds.

    Writes ``out/summary.md`` and ``out/summary.json``; ``export`` also writes a small JSON with
    every run's scores (no training histories) for committing.
    """
    records = [r for r in _done(os.path.join(out, "runs.jsonl")) if epochs is None or r["epochs"] == epochs]
    if not records:
        return "no runs yet"
    screen = _ordered(summarize([r for r in records if r["seed"] == 0], key="setting"))
    seeds: dict = {}
    for r in records:
        seeds.setdefault(r["setting"], set()).add(r["seed"])
    confirmed = _ordered(summarize([r for r in records if len(seeds[r["setting"]]) >= 2], key="setting"))
    text = format_table(screen, title="screen: seed 0 of every setting")
    if confirmed:
        text += "\n\n" + format_table(confirmed, title="confirm: settings with several seeds (mean and std over seeds)")
    settings = {n: {"method": SETTINGS[n][0], "options": SETTINGS[n][1]} for n in seeds if n in SETTINGS}
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("## Screen (seed 0)\n\n" + _markdown(screen))
        if confirmed:
            f.write("\n## Confirm (mean ± std over seeds)\n\n" + _markdown(confirmed))
    payload = {
        "sweep": SWEEP,
        "data": sorted({r.get("data") for r in records}, key=str),
        "settings": settings,
        "screen": screen,
        "confirm": confirmed,
        "directions": SCORE_DIRECTIONS,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(payload, f, indent=1)
    if export:
        os.makedirs(os.path.dirname(os.path.abspath(export)), exist_ok=True)
        payload["runs"] = [
            {k: r[k] for k in ("setting", "method", "options", "seed", "epochs", "metrics", "train_time_s")}
            for r in records
        ]
        with open(export, "w") as f:
            json.dump(payload, f, indent=1)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdecor.experiments.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="runs/sweep", help="folder for runs.jsonl and the summaries (default: runs/sweep)"
    )
    parser.add_argument(
        "--stage",
        choices=("screen", "confirm"),
        default=None,
        help="screen: every setting, seed 0; confirm: CONFIRM settings, --seeds",
    )
    parser.add_argument("--settings", default=None, help="comma-separated setting names (overrides the stage's list)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds for the confirm stage (default: 0,1,2)")
    parser.add_argument("--epochs", type=int, default=SWEEP["epochs"])
    parser.add_argument("--width", type=int, default=SWEEP["width"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the cores available)")
    parser.add_argument("--report", action="store_true", help="print and write the summary tables")
    parser.add_argument(
        "--export",
        default=None,
        metavar="JSON",
        help="with --report: also write every run's scores here (e.g. docs/results/sweep.json)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or default_threads())
    if args.stage is None and not args.report:
        parser.error("give --stage screen|confirm and/or --report")
    if args.stage is not None:
        names = SCREEN if args.stage == "screen" else CONFIRM
        if args.settings:
            names = tuple(n.strip() for n in args.settings.split(",") if n.strip())
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            parser.error(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
        seeds = (0,) if args.stage == "screen" else tuple(int(s) for s in args.seeds.split(","))
        start = time.perf_counter()
        run_settings(
            names, seeds, args.out, epochs=args.epochs, width=args.width, device=args.device, progress=not args.quiet
        )
        print(f"stage {args.stage} done in {time.perf_counter() - start:.0f} s")
    print(report(args.out, args.epochs, export=args.export))
    return 0


if __name__ == "__main__":
    sys.exit(main())
