"""The benchmark grid: data families x architectures x training regimes x methods x seeds.

A *cell* is one (data family, architecture, regime); in every cell each method of
:data:`GRID_METHODS` is trained from every seed and evaluated like ``sdecor compare`` does
(:func:`sdecor.experiments.runner.evaluate`: accuracy and Gradient-saliency scores on the test
split), plus the accuracy on the first ``n_train_eval`` training images in eval mode, so that
under-training shows.

* :data:`FAMILIES`: the generated data sets with exact object masks (``sdecor.data``);
* :data:`MODELS`: SmallCNN and ResNet-20;
* :data:`REGIMES`: SGD + Nesterov one-cycle to 0.1 at batch 32 for 12 epochs, and Adam one-cycle
  to 1e-2 at batch 128 for 30 epochs (the kind of regime under which the sweep-chosen SaliencyDecor
  defaults lost accuracy; at 2e-3, or in 12 epochs, Adam does not fit the training set);
* :data:`GRID_METHODS`: cross-entropy, our SCAAT reading, SaliencyDecor with the design sweep's
  defaults (:data:`SWEEP_DEFAULTS`, the library defaults the grid was begun with), the same
  without decorrelation (``lambda_decor=0``) and with a stronger one (1.0), two settings under
  test: ``masked_bn="frozen"`` (the masked batch does not touch BatchNorm's running
  statistics) and a gentle adversarial fill (one signed-gradient step of 0.05 of the image's
  range), weight 1 on the last conv layer's channels (``sd_ld1_conv``), and the library defaults
  the grid chose (``sd_conv_bn_frozen``: that with ``masked_bn="frozen"``); :data:`CANDIDATES`
  are the other settings screened.

:func:`run_grid` appends every finished run to a JSON file at once (written to a temporary file
and renamed, so an interrupted grid leaves a valid file); a rerun skips the runs already there,
so the grid can be stopped and resumed. Records carry the data's fingerprint, the device and the
memory format; a file written with other settings (epochs, eval sizes, ...) is refused. Every run
trains in float32 on every device (no autocast, no TF32), so runs on a GPU differ from CPU runs
only by the order of float operations, as a channels-last run does. :func:`grid_summary` reduces the records
per cell and method (mean and sample std over seeds, and the per-seed paired change against
cross-entropy), :func:`grid_table` prints it as Markdown and :func:`grid_figure` draws, per cell,
each method's change in accuracy and relevance mass accuracy against cross-entropy with error
bars (std of the paired differences over seeds).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from ..losses import build_objective
from ..models import build_model
from ..train import evaluate_accuracy, fit, set_seed
from .runner import METRICS, SCORE_DIRECTIONS, EvalConfig, evaluate, load_data
from .sweep import SETTINGS as SWEEP_SETTINGS

__all__ = [
    "FAMILIES",
    "MODELS",
    "REGIMES",
    "GRID_METHODS",
    "ALL_METHODS",
    "Regime",
    "OPTIMIZERS",
    "parse_regime",
    "regimes_with",
    "check_regime_names",
    "SWEEP_DEFAULTS",
    "GridConfig",
    "run_key",
    "grid_runs",
    "pending_runs",
    "train_and_evaluate",
    "run_grid",
    "load_records",
    "merge_records",
    "grid_summary",
    "grid_table",
    "grid_figure",
    "method_ranking",
    "ranking_table",
    "scores_table",
    "described_total",
    "LIBRARY_DEFAULTS_METHOD",
    "delta_table",
    "device_counts",
    "float32_math",
    "ACCURACY_GUARD",
]

#: Generated data families with exact masks of the class-relevant object: digits on clutter,
#: the framed digit among several (only one object decides the class) and a colour cue that
#: predicts the class in training only. ``shapes-in-texture`` runs on request (``families=``):
#: SmallCNN fits only 0.65 (SGD, 12 epochs) / 0.85 (Adam, 30 epochs) of its training set.
FAMILIES = ("digits-in-clutter", "framed-digits", "digits-shortcut")
#: Architectures (``sdecor.models.build_model`` names).
MODELS = ("small_cnn", "resnet20")


@dataclass(frozen=True)
class Regime:
    """An optimizer, its peak learning rate (one-cycle schedule), the batch size and the epochs."""

    optimizer: str  # "sgd" (Nesterov, momentum 0.9), "adam" or "adamw"
    lr: float
    batch_size: int
    weight_decay: float = 0.0
    epochs: int = 12

    def __post_init__(self):
        """Raises ``ValueError`` for an unknown optimizer, a learning rate that is not > 0, a batch
        size or epoch count below 1, or a negative weight decay."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


#: The optimizers a :class:`Regime` can name.
OPTIMIZERS = ("sgd", "adam", "adamw")


def parse_regime(spec: str) -> tuple[str, Regime]:
    """``"NAME=OPTIMIZER,LR,BATCH_SIZE[,WEIGHT_DECAY[,EPOCHS]]"`` -> ``(NAME, Regime)``.

    For example ``"adam-short=adam,2e-3,128,0,12"``: Adam one-cycle to 2e-3 at batch 128, no weight
    decay, 12 epochs (weight decay defaults to 0, epochs to 12). ``NAME`` may not contain ``|``
    or ``,`` (run keys join their parts with ``|``). Raises ``ValueError`` naming the part that
    is malformed.
    """
    name, eq, rest = spec.partition("=")
    name = name.strip()
    if not eq or not name or "|" in name or "," in name:
        raise ValueError(f"regime: expected NAME=OPTIMIZER,LR,BATCH_SIZE[,WEIGHT_DECAY[,EPOCHS]], got {spec!r}")
    parts = [part.strip() for part in rest.split(",")]
    if not 3 <= len(parts) <= 5:
        raise ValueError(
            f"regime {name!r}: expected OPTIMIZER,LR,BATCH_SIZE[,WEIGHT_DECAY[,EPOCHS]] (3 to 5 values), got {rest!r}"
        )
    fields = ("lr", float), ("batch_size", int), ("weight_decay", float), ("epochs", int)
    values = {}
    for (field_name, kind), text in zip(fields, parts[1:]):
        try:
            values[field_name] = kind(text)
        except ValueError:
            raise ValueError(f"regime {name!r}: {field_name} must be {kind.__name__}, got {text!r}") from None
    try:
        return name, Regime(parts[0], **values)
    except ValueError as err:
        raise ValueError(f"regime {name!r}: {err}") from None


#: The two training regimes of the grid; each trains cross-entropy to (nearly) 100% training
#: accuracy on digits-in-clutter with SmallCNN (Adam at 2e-3 for 30 epochs: 0.83).
REGIMES = {
    "sgd": Regime("sgd", 0.1, 32, 5e-4, epochs=12),
    "adam": Regime("adam", 1e-2, 128, 0.0, epochs=30),
}


def regimes_with(specs=()) -> dict:
    """:data:`REGIMES` plus the regimes ``specs`` define (each as :func:`parse_regime` reads it).

    Raises ``ValueError`` for a malformed spec, or one that names a built-in regime or a regime
    defined twice.
    """
    table = dict(REGIMES)
    for spec in specs:
        name, regime = parse_regime(spec)
        if name in table:
            what = "a built-in regime" if name in REGIMES else "defined twice"
            raise ValueError(f"regime {name!r} is {what}; give the new regime another name")
        table[name] = regime
    return table


def check_regime_names(names, table) -> None:
    """Raise ``ValueError`` listing the ``names`` that are not keys of the regime ``table``."""
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"unknown regime(s) {unknown}; choose from {', '.join(table)} or define one")


#: The SaliencyDecor options every SaliencyDecor setting of the grid starts from: the design
#: sweep's choice (:data:`sdecor.experiments.sweep.SETTINGS` ``"sd_m50_abs_lc3"``), the library
#: defaults the grid was begun with, stated in full so that a setting keeps its meaning (and its
#: recorded runs stay comparable) when the library defaults change.
SWEEP_DEFAULTS = dict(SWEEP_SETTINGS["sd_m50_abs_lc3"][1])


def _saliency_decor(**changes) -> tuple:
    """``("saliencydecor", options)``: :data:`SWEEP_DEFAULTS` with ``changes``."""
    return ("saliencydecor", {**SWEEP_DEFAULTS, **changes})


#: name -> (objective name, options). ``ramp`` in the options is a fraction of the training steps,
#: resolved to the objective's ``consistency_ramp_steps`` for the run's length.
GRID_METHODS = {
    "standard": ("standard", {}),
    "scaat": ("scaat", {}),
    "saliencydecor": _saliency_decor(),
    "sd_ld0": _saliency_decor(lambda_decor=0.0),
    "sd_ld1": _saliency_decor(lambda_decor=1.0),
    # the robust candidate the Adam screen chose: the masked batch leaves BatchNorm's running statistics alone
    "sd_bn_frozen": _saliency_decor(masked_bn="frozen"),
    # the candidate the adversarial-fill screens chose: one signed-gradient step of 0.05 of the range
    "sd_adv1_05": _saliency_decor(adversarial_steps=1, adversarial_step_size=0.05),
    # the stronger weight on the last conv layer's channels (the library defaults from the grid's
    # first decision until the short-budget screen)
    "sd_ld1_conv": _saliency_decor(lambda_decor=1.0, feature_layer="conv"),
    # that with the masked batch leaving BatchNorm's running statistics alone: the library defaults
    # the grid chose (no accuracy loss under a short Adam budget, the best worst cell)
    "sd_conv_bn_frozen": _saliency_decor(lambda_decor=1.0, feature_layer="conv", masked_bn="frozen"),
}
#: The grid method whose options are ``SaliencyDecor()``'s defaults (a test holds them equal).
LIBRARY_DEFAULTS_METHOD = "sd_conv_bn_frozen"


@dataclass
class GridConfig:
    """Everything but the cell, method and seed that a run's result depends on."""

    epochs: int | None = None  # None: each regime's own
    small_cnn_width: int = 16
    n_train: int | None = None
    n_test: int | None = None
    n_train_eval: int = 1024
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_eval=256, n_deletion=128))

    def as_dict(self) -> dict:
        d = asdict(self)
        d["eval"]["fractions"] = [float(f) for f in d["eval"]["fractions"]]
        return d


def run_key(family: str, model: str, regime: str, method: str, seed: int) -> str:
    """The identity of one run in the grid file."""
    return f"{family}|{model}|{regime}|{method}|{int(seed)}"


def grid_runs(families=FAMILIES, models=MODELS, regimes=tuple(REGIMES), methods=tuple(GRID_METHODS), seeds=(0, 1, 2)):
    """Every (family, model, regime, method, seed), cells first, seeds next, methods innermost
    (so a partly finished grid has whole seeds of whole cells)."""
    for family in families:
        for regime in regimes:
            for model in models:
                for seed in seeds:
                    for method in methods:
                        yield family, model, regime, method, int(seed)


def pending_runs(
    done, families=FAMILIES, models=MODELS, regimes=tuple(REGIMES), methods=tuple(GRID_METHODS), seeds=(0, 1, 2)
):
    """The runs of the grid (in :func:`grid_runs`' order) whose key (:func:`run_key`) is not in
    ``done`` (a collection of keys, e.g. those of a grid file's records)."""
    done = set(done)
    return [spec for spec in grid_runs(families, models, regimes, methods, seeds) if run_key(*spec) not in done]


def _optimizer(regime: Regime, params):
    if regime.optimizer == "sgd":
        return torch.optim.SGD(params, lr=regime.lr, momentum=0.9, nesterov=True, weight_decay=regime.weight_decay)
    if regime.optimizer == "adam":
        return torch.optim.Adam(params, lr=regime.lr, weight_decay=regime.weight_decay)
    if regime.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=regime.lr, weight_decay=regime.weight_decay)
    raise ValueError(f"regime.optimizer must be 'sgd', 'adam' or 'adamw', got {regime.optimizer!r}")


def _resolve_options(options: dict, total_steps: int) -> dict:
    options = dict(options)
    ramp = options.pop("ramp", None)
    if ramp is not None:
        options["consistency_ramp_steps"] = max(1, int(round(float(ramp) * total_steps)))
    return options


@contextlib.contextmanager
def float32_math():
    """Full float32 convolutions and matmuls for the duration of the block: TF32 off on CUDA
    (cuDNN and cuBLAS), the previous settings restored afterwards (also when the block raises)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def train_and_evaluate(
    data,
    *,
    method: str,
    options: dict | None = None,
    model: str = "small_cnn",
    regime: Regime = REGIMES["sgd"],
    seed: int = 0,
    config: GridConfig | None = None,
    device="cpu",
    channels_last: bool = False,
) -> dict:
    """Train one model with one objective under ``regime`` and score it (a JSON-ready dict).

    ``data`` is a :class:`~sdecor.experiments.runner.Data` whose train loader has
    ``regime.batch_size``. Training runs in float32 on every device (no autocast; TF32 off, see
    :func:`float32_math`), with ``channels_last`` memory format if asked (faster convolutions,
    see :func:`sdecor.train.fit`). The record holds ``metrics`` (``runner.evaluate``'s scores
    plus ``train_accuracy``), the masked-accuracy curve, the training history, timings and
    ``resolved_options``, every option the objective ran with (:meth:`sdecor.losses.Objective.options`;
    records written before it held only the options the method names, with the ramp in steps).
    """
    config = config or GridConfig()
    set_seed(seed)
    info = data.info
    kwargs = {"width": config.small_cnn_width} if model == "small_cnn" and config.small_cnn_width else {}
    net = build_model(model, num_classes=info.num_classes, in_channels=info.image_shape[0], **kwargs)
    generator = getattr(data.train_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)
    epochs = config.epochs or regime.epochs
    total_steps = epochs * len(data.train_loader)
    objective = build_objective(method, **_resolve_options(options or {}, total_steps))
    with float32_math():
        start = time.perf_counter()
        history = fit(
            net,
            objective,
            data.train_loader,
            epochs=epochs,
            optimizer=_optimizer(regime, net.parameters()),
            lr=regime.lr,
            schedule="onecycle",
            device=device,
            amp=False,
            seed=seed,
            progress=False,
            channels_last=channels_last,
        )
        train_time = time.perf_counter() - start
        start = time.perf_counter()
        subset = torch.utils.data.Subset(
            data.train_loader.dataset, range(min(config.n_train_eval, len(data.train_loader.dataset)))
        )
        train_acc = evaluate_accuracy(net, torch.utils.data.DataLoader(subset, batch_size=256), device=device)
        evaluation = evaluate(net, data, device=device, config=config.eval, seed=seed)
    evaluation["metrics"]["train_accuracy"] = train_acc
    return {
        **evaluation,
        "resolved_options": objective.options(),
        "history": history.to_dict()["epochs"],
        "train_time_s": round(train_time, 2),
        "eval_time_s": round(time.perf_counter() - start, 2),
    }


# --------------------------------------------------------------------------- the grid file


def load_records(path: str) -> dict:
    """The grid file's contents (``{"config": ..., "runs": [...]}``); empty when it does not exist."""
    if not os.path.exists(path):
        return {"config": None, "runs": []}
    with open(path) as f:
        return json.load(f)


def merge_records(paths, out: str) -> dict:
    """Merge grid files (each written with the same :class:`GridConfig`) into ``out`` (which may be
    one of them): runs keep their first-seen order, a key seen twice is kept once. Raises
    ``ValueError`` when the files' configs differ. Returns the merged contents."""
    merged: dict = {"config": None, "runs": []}
    seen = set()
    for path in [out, *paths]:
        state = load_records(path)
        if not state["runs"]:
            continue
        if merged["config"] is not None and state["config"] != merged["config"]:
            raise ValueError(f"{path} was written with another grid config than the files before it")
        merged["config"] = state["config"]
        for record in state["runs"]:
            if record["key"] not in seen:
                seen.add(record["key"])
                merged["runs"].append(record)
    _write_atomic(out, merged)
    return merged


def _write_atomic(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value


def run_grid(
    path: str,
    *,
    families=FAMILIES,
    models=MODELS,
    regimes=tuple(REGIMES),
    methods=tuple(GRID_METHODS),
    seeds=(0, 1, 2),
    config: GridConfig | None = None,
    method_table: dict | None = None,
    regime_table: dict | None = None,
    device="cpu",
    channels_last: bool = False,
    progress: bool = True,
    log=print,
) -> dict:
    """Run every missing run of the grid, appending each to the JSON file ``path`` as it finishes.

    ``method_table`` (default :data:`GRID_METHODS`) maps method names to ``(objective, options)``;
    ``regime_table`` (default :data:`REGIMES`) maps regime names to :class:`Regime` s. The file's
    config records the whole regime table, so a file is resumed with the table it was begun with.
    ``device`` and ``channels_last`` are passed to :func:`train_and_evaluate` and recorded
    (``"device"``, ``"memory_format"``) in every run.
    Raises ``ValueError`` for an unknown family, model, regime or method, and when ``path`` holds
    runs made with another :class:`GridConfig`. Returns the file's final contents.
    """
    from ..data import DATASET_NAMES
    from ..models import MODEL_NAMES

    config = config or GridConfig()
    table = dict(GRID_METHODS if method_table is None else method_table)
    regime_table = dict(REGIMES if regime_table is None else regime_table)
    for name, known, what in (
        (families, DATASET_NAMES, "family"),
        (models, MODEL_NAMES, "model"),
        (regimes, tuple(regime_table), "regime"),
        (methods, tuple(table), "method"),
    ):
        unknown = [v for v in name if v not in known]
        if unknown:
            raise ValueError(f"unknown {what}(s) {unknown}; choose from {', '.join(known)}")
    state = load_records(path)
    cfg = _clean({**config.as_dict(), "regimes": {name: asdict(regime_table[name]) for name in sorted(regime_table)}})
    if state["runs"] and state["config"] != cfg:
        raise ValueError(f"{path} holds runs made with another grid config ({state['config']}); use a new file")
    state["config"] = cfg
    todo = pending_runs((r["key"] for r in state["runs"]), families, models, regimes, methods, seeds)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="grid", unit="run", dynamic_ncols=True)
    cache: dict = {}
    try:
        for family, model, regime_name, method, seed in todo:
            regime = regime_table[regime_name]
            if bar is not None:
                bar.set_postfix_str(f"{family} {model} {regime_name} {method} s{seed}")
            data_key = (family, regime.batch_size)
            if data_key not in cache:
                cache.clear()  # one data set in memory at a time
                cache[data_key] = load_data(
                    family, batch_size=regime.batch_size, n_train=config.n_train, n_test=config.n_test
                )
            data = cache[data_key]
            objective, options = table[method]
            result = train_and_evaluate(
                data,
                method=objective,
                options=options,
                model=model,
                regime=regime,
                seed=seed,
                config=config,
                device=device,
                channels_last=channels_last,
            )
            record = {
                "key": run_key(family, model, regime_name, method, seed),
                "family": family,
                "model": model,
                "regime": regime_name,
                "regime_settings": asdict(regime),
                "method": method,
                "objective": objective,
                "options": options,
                "seed": seed,
                "data": data.meta.get("fingerprint"),
                "device": torch.device(device).type,
                "memory_format": "channels_last" if channels_last else "contiguous",
                **result,
            }
            state["runs"].append(_clean(record))
            _write_atomic(path, state)
            if bar is not None:
                bar.update(1)
            elif log is not None:
                m = record["metrics"]
                log(f"{record['key']}: acc {m['accuracy']:.3f} rma {m['relevance_mass_accuracy']:.3f}")
    finally:
        if bar is not None:
            bar.close()
    return state


# --------------------------------------------------------------------------- summaries

SUMMARY_METRICS = ("accuracy", "train_accuracy") + tuple(m for m in METRICS if m != "accuracy")


def _stats(values: list) -> dict | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def grid_summary(records: list[dict], baseline: str = "standard") -> dict:
    """``{cell: {method: {metric: stats, "delta_<metric>": stats}}}`` with ``cell`` the string
    ``"family|model|regime"``; stats are ``{"mean", "std", "n"}`` over seeds (sample std), and
    ``delta_<metric>`` the per-seed paired difference to ``baseline`` (seeds both have)."""
    cells: dict = {}
    for r in records:
        cell = f"{r['family']}|{r['model']}|{r['regime']}"
        cells.setdefault(cell, {}).setdefault(r["method"], {})[r["seed"]] = r["metrics"]
    out: dict = {}
    for cell, methods in cells.items():
        base = methods.get(baseline, {})
        out[cell] = {}
        for method, by_seed in methods.items():
            row = {m: _stats([s.get(m) for s in by_seed.values()]) for m in SUMMARY_METRICS}
            for m in SUMMARY_METRICS:
                pairs = [
                    by_seed[s][m] - base[s][m]
                    for s in by_seed
                    if s in base and by_seed[s].get(m) is not None and base[s].get(m) is not None
                ]
                row[f"delta_{m}"] = _stats(pairs)
            out[cell][method] = row
    return out


def _fmt(stats: dict | None, signed: bool = False) -> str:
    if stats is None:
        return "n/a"
    if stats["n"] == 1:  # one seed: no spread to show
        return f"{stats['mean']:+.3f}" if signed else f"{stats['mean']:.3f}"
    return f"{stats['mean']:+.3f} ± {stats['std']:.3f}" if signed else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


#: The decorrelation question: SaliencyDecor's sweep defaults with lambda_decor 0, 0.1 (theirs) and 1 on
#: the pooled features, and 1 (the library defaults) and 3 on the last conv layer.
DECORRELATION_METHODS = ("sd_ld0", "saliencydecor", "sd_ld1", "sd_ld1_conv", "sd_ld3_conv")


def grid_table(
    summary: dict, metrics=SUMMARY_METRICS, deltas=("accuracy", "relevance_mass_accuracy"), methods=None
) -> str:
    """A Markdown table: one row per (cell, method) (only ``methods``, in that order, when given);
    mean ± std over seeds, then the paired changes against cross-entropy, and n (seeds)."""
    head = ["cell", "method", "n"] + list(metrics) + [f"Δ {m}" for m in deltas]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell, rows in summary.items():
        names = [m for m in methods if m in rows] if methods is not None else list(rows)
        for method in names:
            row = rows[method]
            n = max((row[m]["n"] for m in metrics if row.get(m)), default=0)
            cells = [cell.replace("|", " / "), method, str(n)]
            cells += [_fmt(row.get(m)) for m in metrics]
            cells += [_fmt(row.get(f"delta_{m}"), signed=True) for m in deltas]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_table(summary: dict, metric: str, methods=None, baseline: str = "standard") -> str:
    """A Markdown table with a row per cell: the baseline's ``metric`` (mean ± std over seeds), then
    each method's paired change against it (mean ± std, ``n/a`` where the cell lacks the method);
    ``methods`` (default: every method seen, in order of appearance) chooses and orders the columns."""
    if methods is None:
        methods = [m for m in dict.fromkeys(m for rows in summary.values() for m in rows) if m != baseline]
    head = ["cell", f"{baseline} {metric}"] + [f"{m} Δ" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell, rows in summary.items():
        base = rows.get(baseline, {}).get(metric)
        cells = [cell.replace("|", " / "), _fmt(base)]
        cells += [_fmt(rows.get(m, {}).get(f"delta_{metric}"), signed=True) for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: A default may cost at most this much accuracy against cross-entropy in any cell (mean over seeds).
ACCURACY_GUARD = 0.005


def method_ranking(summary: dict, baseline: str = "standard", guard: float = ACCURACY_GUARD) -> dict:
    """How each method fares across the cells that ran it with ``baseline`` (paired changes).

    ``{method: {"cells", "worst_delta_accuracy", "worst_cell", "within_guard",
    "rma_up", "rma_up_clearly", "mean_delta_rma"}}``: the number of cells, the lowest mean
    change in accuracy and its cell, the cells whose mean change is at least ``-guard``, the
    cells where relevance mass accuracy rises on average and where it rises by more than the
    std of its paired changes, and the mean of the per-cell changes in relevance mass accuracy.
    Methods are sorted by their worst accuracy change, best first.
    """
    rows: dict = {}
    for cell, methods in summary.items():
        if baseline not in methods:
            continue
        for method, row in methods.items():
            if method == baseline:
                continue
            acc, rma = row.get("delta_accuracy"), row.get("delta_relevance_mass_accuracy")
            if acc is None:
                continue
            r = rows.setdefault(method, {"cells": 0, "deltas_acc": [], "deltas_rma": [], "cell_names": []})
            r["cells"] += 1
            r["deltas_acc"].append(acc["mean"])
            r["cell_names"].append(cell)
            if rma is not None:
                r["deltas_rma"].append((rma["mean"], rma["std"]))
    out = {}
    for method, r in rows.items():
        worst = min(range(r["cells"]), key=lambda i: r["deltas_acc"][i])
        out[method] = {
            "cells": r["cells"],
            "worst_delta_accuracy": r["deltas_acc"][worst],
            "worst_cell": r["cell_names"][worst],
            "within_guard": sum(d >= -guard for d in r["deltas_acc"]),
            "rma_up": sum(m > 0 for m, _ in r["deltas_rma"]),
            "rma_up_clearly": sum(m > sd for m, sd in r["deltas_rma"]),
            "mean_delta_rma": sum(m for m, _ in r["deltas_rma"]) / len(r["deltas_rma"]) if r["deltas_rma"] else None,
        }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["worst_delta_accuracy"]))


def ranking_table(ranking: dict, guard: float = ACCURACY_GUARD) -> str:
    """:func:`method_ranking` as a Markdown table."""
    lines = [
        f"| method | cells | worst Δ accuracy (cell) | cells within -{guard:g} | cells with RMA up (by > 1 std) "
        "| mean Δ RMA |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in ranking.items():
        mean_rma = "n/a" if r["mean_delta_rma"] is None else f"{r['mean_delta_rma']:+.3f}"
        lines.append(
            f"| {method} | {r['cells']} | {r['worst_delta_accuracy']:+.3f} ({r['worst_cell'].replace('|', ' / ')}) "
            f"| {r['within_guard']} | {r['rma_up']} ({r['rma_up_clearly']}) | {mean_rma} |"
        )
    return "\n".join(lines)


def scores_table(summary: dict, method: str, baseline: str = "standard", metrics=SUMMARY_METRICS) -> str:
    """A Markdown table of one method against ``baseline`` in every score, a row per cell.

    ``summary`` is :func:`grid_summary`'s, paired against ``baseline`` (which names it here). Each
    row: the cell, n (the seeds both ran), then ``method``'s per-seed paired change against
    ``baseline`` in each of ``metrics`` (mean ± std). The header marks each score's better
    direction (↑ higher, ↓ lower; none for ``train_accuracy``, a diagnostic of under-training); a
    last row counts, per score with a direction, the cells whose mean change is for the better
    and, in brackets, those where it is so by more than the std of the paired changes.

    Raises:
        ValueError: no cell of ``summary`` has paired runs of ``method`` and ``baseline``.
    """
    arrows = {"higher": " ↑", "lower": " ↓"}
    rows = [
        (cell, runs[method])
        for cell, runs in summary.items()
        if method in runs and (runs[method].get("delta_accuracy") or {}).get("n")
    ]
    if not rows:
        raise ValueError(f"no cell has paired runs of method {method!r} and baseline {baseline!r}")
    head = ["cell", "n"] + [f"Δ {m}{arrows.get(SCORE_DIRECTIONS.get(m), '')}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell, row in rows:
        cells = [cell.replace("|", " / "), str(row["delta_accuracy"]["n"])]
        lines.append("| " + " | ".join(cells + [_fmt(row.get(f"delta_{m}"), signed=True) for m in metrics]) + " |")
    counts = []
    for m in metrics:
        direction = SCORE_DIRECTIONS.get(m)
        deltas = [row[f"delta_{m}"] for _, row in rows if row.get(f"delta_{m}")]
        if direction is None or not deltas:
            counts.append("")
            continue
        sign = 1.0 if direction == "higher" else -1.0
        better = sum(sign * d["mean"] > 0 for d in deltas)
        clearly = sum(sign * d["mean"] > d["std"] for d in deltas)
        counts.append(f"{better} of {len(deltas)} ({clearly})")
    lines.append("| better in | | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def grid_figure(summary: dict, path: str, baseline: str = "standard", title: str | None = None) -> str:
    """Each method's change against ``baseline``: accuracy in points (top row) and relevance mass
    accuracy (bottom row), one column of panels per model, a group of bars per cell of that model
    (family and regime): mean over seeds, error bars the std of the paired differences; the dashed
    line is the accuracy guard. A method keeps its colour in every panel. Returns ``path``."""
    from .figures import _pyplot

    plt = _pyplot()
    cells = list(summary)
    methods = [m for m in dict.fromkeys(m for c in cells for m in summary[c]) if m != baseline]
    models = list(dict.fromkeys(c.split("|")[1] for c in cells)) or [""]
    by_model = {model: [c for c in cells if c.split("|")[1] == model] for model in models}
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    colours = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    width = 0.8 / max(1, len(methods))
    widths = [max(1, len(by_model[model])) for model in models]
    fig, axes = plt.subplots(
        2,
        len(models),
        # at least 1.2 inches per cell, so that the cell labels do not overlap when few methods ran
        figsize=(max(6.0, sum(max(1.2, 0.16 * (len(methods) + 1)) * w for w in widths) + 1.5), 7.5),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    against = ("cross-entropy", "CE") if baseline == "standard" else (baseline, baseline)
    rows = (
        ("accuracy", 100.0, f"Δ accuracy vs {against[0]} (points)"),
        ("relevance_mass_accuracy", 1.0, f"Δ relevance mass accuracy vs {against[1]}"),
    )
    for row, (metric, scale, label) in enumerate(rows):
        for col, model in enumerate(models):
            ax, model_cells = axes[row][col], by_model[model]
            for j, method in enumerate(methods):
                xs, ys, es = [], [], []
                for i, cell in enumerate(model_cells):
                    stats = summary[cell].get(method, {}).get(f"delta_{metric}")
                    if stats is None:
                        continue
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(scale * stats["mean"])
                    es.append(scale * stats["std"])
                ax.bar(xs, ys, width=width, yerr=es, capsize=2, color=colours[method], label=method)
            ax.axhline(0.0, color="black", linewidth=0.8)
            if metric == "accuracy":
                ax.axhline(-scale * ACCURACY_GUARD, color="red", linewidth=0.8, linestyle="--")
            ax.grid(axis="y", linewidth=0.3, alpha=0.5)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(model, fontsize=9)
            ax.set_xticks(range(len(model_cells)))
            ax.set_xticklabels([c.split("|")[0] + "\n" + c.split("|")[2] for c in model_cells], fontsize=7)
    if methods:
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in methods]
        fig.legend(handles, methods, loc="upper center", fontsize=8, ncol=min(len(methods), 8), frameon=False)
    if title:
        fig.text(0.01, 0.99, title, fontsize=8, va="top")
    fig.tight_layout(rect=(0, 0, 1, 0.93 if methods else 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Candidate robust SaliencyDecor settings, screened on the worst cell before joining the grid.
CANDIDATES = {
    "sd_bn_eval": _saliency_decor(masked_bn="eval"),
    "sd_bn_joint": _saliency_decor(masked_bn="joint"),
    "sd_ramp": _saliency_decor(ramp=0.3),
    "sd_detach": _saliency_decor(detach_target=True),
    "sd_m25": _saliency_decor(mask_fraction=0.25),
    "sd_lc1": _saliency_decor(lambda_consistency=1.0),
    "sd_fill_mean": _saliency_decor(fill="mean"),
    # the fill moved adversarially within the image's range (two steps of 0.25 of the range)
    "sd_adv": _saliency_decor(adversarial_steps=2),
    "sd_adv_ld0": _saliency_decor(adversarial_steps=2, lambda_decor=0.0),
    # gentler adversarial fills: one step of 0.1 of the range, or two steps on a quarter of the pixels
    "sd_adv1_10": _saliency_decor(adversarial_steps=1, adversarial_step_size=0.1),
    "sd_adv_m25": _saliency_decor(adversarial_steps=2, mask_fraction=0.25),
    # the decorrelation term alone at the stronger weight (no consistency term), and a stronger one still
    "sd_lc0_ld1": _saliency_decor(lambda_consistency=0.0, lambda_decor=1.0),
    "sd_ld3": _saliency_decor(lambda_decor=3.0),
    # the library default's layer (the last conv feature map) at the stronger weight
    "sd_ld3_conv": _saliency_decor(lambda_decor=3.0, feature_layer="conv"),
    # a weight between the default and 1: the shortcut effect of 1 without its slower start?
    "sd_ld03": _saliency_decor(lambda_decor=0.3),
}

#: Every method a grid run can name: the grid's own and the screened candidates (disjoint names).
ALL_METHODS = {**GRID_METHODS, **CANDIDATES}


def main(argv=None) -> int:
    """``python -m sdecor.experiments.grid --out FILE [...]``: run (or resume) a grid, or report on one."""
    import argparse

    table = ALL_METHODS
    p = argparse.ArgumentParser(prog="python -m sdecor.experiments.grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the grid's JSON file (appended to; a rerun resumes)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--regimes", nargs="+", default=None, help=f"default: {' '.join(REGIMES)}")
    p.add_argument(
        "--define-regime",
        action="append",
        default=[],
        metavar="NAME=OPTIMIZER,LR,BATCH_SIZE[,WEIGHT_DECAY[,EPOCHS]]",
        help="a regime besides the built-in ones, e.g. adam-short=adam,2e-3,128,0,12 (repeatable; "
        "name it in --regimes; resume its file with the same definitions)",
    )
    p.add_argument("--methods", nargs="+", default=list(GRID_METHODS), help=f"from {', '.join(table)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: each regime's own)")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--device", default="cpu", help="torch device the runs train and evaluate on (default: cpu)")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="train in channels-last memory format (faster convolutions; recorded in each run)",
    )
    p.add_argument("--report", action="store_true", help="only write the table and figure from the file")
    p.add_argument(
        "--no-report",
        action="store_true",
        help="run only: no table or figure, one log line per run instead of the progress bar",
    )
    p.add_argument("--merge", nargs="+", default=None, metavar="FILE", help="first merge these grid files into OUT")
    p.add_argument("--figure", default=None, help="figure path (default: OUT with .png)")
    p.add_argument("--table", default=None, help="Markdown table path (default: OUT with .md)")
    p.add_argument(
        "--baseline",
        default="standard",
        metavar="METHOD",
        help="the report's changes are paired against this method (default: standard, cross-entropy)",
    )
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device: expected a torch device such as cpu, cuda or cuda:1, got {args.device!r}")
    try:
        regime_table = regimes_with(args.define_regime)
    except ValueError as err:
        p.error(f"--define-regime: {err}")
    regimes = args.regimes or list(REGIMES)
    try:
        check_regime_names(regimes, regime_table)
    except ValueError as err:
        p.error(f"--regimes: {err} (--define-regime)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        merge_records(args.merge, args.out)
    if not args.report:
        config = GridConfig(epochs=args.epochs, n_train=args.n_train, n_test=args.n_test)
        run_grid(
            args.out,
            families=args.families,
            models=args.models,
            regimes=regimes,
            methods=args.methods,
            seeds=args.seeds,
            config=config,
            method_table=table,
            regime_table=regime_table,
            device=device,
            channels_last=args.channels_last,
            progress=not args.no_report,
        )
    if args.no_report:
        return 0
    # with --report too, pass the grid's arguments for "n runs of N"
    total = described_total(args.out, args.families, args.models, regimes, args.methods, args.seeds)
    try:
        write_report(args.out, figure=args.figure, table=args.table, total=total, baseline=args.baseline)
    except ValueError as err:
        p.error(f"--baseline: {err}")
    return 0


def described_total(path: str, families, models, regimes, methods, seeds) -> int | None:
    """How many runs the grid these arguments describe has, for a report's "n runs of N"; None
    when the file at ``path`` holds a run outside that grid (its report then says "n runs")."""
    described = {run_key(*spec) for spec in grid_runs(families, models, regimes, methods, seeds)}
    in_grid = all(r["key"] in described for r in load_records(path)["runs"])
    return len(described) if in_grid else None


def device_counts(records: list[dict]) -> dict:
    """``{cell: {device: number of runs}}`` (cell ``"family|model|regime"``; records written
    before runs carried their device ran on the CPU)."""
    counts: dict = {}
    for r in records:
        per_cell = counts.setdefault(f"{r['family']}|{r['model']}|{r['regime']}", {})
        device = r.get("device", "cpu")
        per_cell[device] = per_cell.get(device, 0) + 1
    return counts


def write_report(
    path: str,
    figure: str | None = None,
    table: str | None = None,
    total: int | None = None,
    baseline: str = "standard",
) -> dict:
    """Summary table (Markdown) and figure from the grid file ``path``; returns the summary.

    Changes are paired per seed against ``baseline`` (a method name; cross-entropy, ``"standard"``,
    by default). Raises ``ValueError`` when the file has runs but none of ``baseline``.
    """
    state = load_records(path)
    runs = state["runs"]
    if runs and not any(r["method"] == baseline for r in runs):
        methods = sorted({r["method"] for r in runs})
        raise ValueError(f"baseline {baseline!r} has no runs in {path}; its methods are {methods}")
    summary = grid_summary(runs, baseline=baseline)
    against = "cross-entropy" if baseline == "standard" else f"`{baseline}`"
    stem = os.path.splitext(path)[0]
    note = f"{len(runs)} runs" + (f" of {total}" if total else "")
    text = f"Grid results from `{os.path.basename(path)}` ({note}; config {json.dumps(state['config'])}).\n\n"
    off_cpu = {cell: c for cell, c in device_counts(runs).items() if set(c) != {"cpu"}}
    if off_cpu:
        where = "; ".join(
            f"{cell.replace('|', ' / ')}: " + ", ".join(f"{n} on {d}" for d, n in sorted(c.items()))
            for cell, c in off_cpu.items()
        )
        text += f"Cells with runs not on the CPU: {where}.\n\n"
    text += f"Δ: paired change against {against}.\n\n" if baseline != "standard" else ""
    text += grid_table(summary) + "\n"
    for metric in ("accuracy", "relevance_mass_accuracy"):
        text += f"\nPer cell, {against}'s {metric} and each method's paired change against it:\n\n"
        text += delta_table(summary, metric, baseline=baseline) + "\n"
    ranking = method_ranking(summary, baseline=baseline)
    if ranking:
        text += f"\nPer method across the cells (paired changes against {against}; RMA: relevance mass acc.):\n\n"
        text += ranking_table(ranking) + "\n"
    paired_defaults = any(
        (rows.get(LIBRARY_DEFAULTS_METHOD, {}).get("delta_accuracy") or {}).get("n") for rows in summary.values()
    )
    if LIBRARY_DEFAULTS_METHOD != baseline and paired_defaults:
        text += (
            f"\nThe library defaults (`{LIBRARY_DEFAULTS_METHOD}`) in every score, paired changes against {against} "
            "(↑ / ↓: higher / lower is better; last row: cells where the change is for the better, in brackets by "
            "more than one std):\n\n"
        )
        text += scores_table(summary, LIBRARY_DEFAULTS_METHOD, baseline=baseline) + "\n"
    dec = {c: rows for c, rows in summary.items() if sum(m in rows for m in DECORRELATION_METHODS) >= 2}
    if dec:
        text += (
            "\nDecorrelation weight (lambda_decor 0 / 0.1 = sweep default / 1 on the pooled features, and 1 = "
            "library default / 3 on the last conv layer), cells with at least two of them:\n\n"
        )
        text += grid_table(dec, methods=DECORRELATION_METHODS) + "\n"
    with open(table or stem + ".md", "w") as f:
        f.write(text)
    if runs:
        grid_figure(summary, figure or stem + ".png", baseline=baseline, title=note)
    print(text)
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
