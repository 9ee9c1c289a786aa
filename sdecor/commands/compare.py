"""``sdecor compare``: train Standard, DeCov, SGT, SCAAT and SaliencyDecor and compare their saliency.

Prints a table (mean and std over seeds; every column says whether higher or lower is better),
writes ``results.json`` and PNG figures under ``--out``. The defaults finish within about
5 minutes on 2 CPU cores (see docs/experiments.md).
"""

from __future__ import annotations

import argparse
import json

from ._args import positive_int

HELP = "train the five objectives, score their Gradient saliency, print a table, save results.json and figures"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _seeds(text: str) -> tuple:
    """``3`` -> seeds 0, 1, 2; ``0,5,7`` -> those seeds."""
    text = text.strip()
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
            if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
                raise ValueError
            return seeds
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected a number of seeds (e.g. 3) or a comma-separated list of distinct non-negative "
            f"seeds (e.g. 0,1,2), got {text!r}"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"the number of seeds must be at least 1, got {count}")
    return tuple(range(count))


def _methods(text: str) -> tuple:
    from ..losses import OBJECTIVES

    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown) or text!r}; choose from {','.join(OBJECTIVES)}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a method is listed twice: {text!r}")
    return names


def _option(text: str) -> tuple:
    """``METHOD.NAME=VALUE`` (VALUE read as JSON when it parses, ``None``/``True``/``False`` as
    Python's, else as a string)."""
    from ..losses import OBJECTIVES

    key, sep, raw = text.partition("=")
    method, dot, name = key.partition(".")
    method = method.strip().lower()
    if not sep or not dot or not name.strip():
        raise argparse.ArgumentTypeError(
            f"expected METHOD.OPTION=VALUE (e.g. saliencydecor.lambda_decor=0.3), got {text!r}"
        )
    if method not in OBJECTIVES:
        raise argparse.ArgumentTypeError(f"unknown method {method!r} in {text!r}; choose from {','.join(OBJECTIVES)}")
    python_constants = {"None": None, "True": True, "False": False}
    try:
        value = json.loads(raw)
    except ValueError:
        value = python_constants.get(raw.strip(), raw)
    return method, name.strip(), value


def add_arguments(parser) -> None:
    from ..experiments.compare import DEFAULTS
    from ..experiments.runner import EvalConfig
    from ..losses import OBJECTIVES

    ev = EvalConfig()
    parser.add_argument(
        "--methods",
        type=_methods,
        default=tuple(OBJECTIVES),
        metavar="LIST",
        help=f"comma-separated objectives to train (default: {','.join(OBJECTIVES)})",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULTS["epochs"],
        help=f"training epochs per run (default: {DEFAULTS['epochs']})",
    )
    parser.add_argument(
        "--seeds",
        type=_seeds,
        default=DEFAULTS["seeds"],
        metavar="N|LIST",
        help="number of seeds (seeds 0..N-1) or a comma-separated list (default: 3)",
    )
    parser.add_argument(
        "--dataset",
        default=DEFAULTS["dataset"],
        help="digits-in-clutter (embedded, with ground-truth masks), an image-folder path, or torchvision:NAME:ROOT "
        f"(default: {DEFAULTS['dataset']})",
    )
    parser.add_argument("--model", default=DEFAULTS["model"], help="small_cnn or resnet20 (default: small_cnn)")
    parser.add_argument(
        "--width",
        type=positive_int,
        default=DEFAULTS["width"],
        help=f"model width (SmallCNN: width, ResNet-20: base width; default: {DEFAULTS['width']})",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument(
        "--out",
        default="runs/compare",
        metavar="DIR",
        help="folder for results.json and the figures (default: runs/compare)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULTS["batch_size"],
        help=f"training batch size (default: {DEFAULTS['batch_size']})",
    )
    parser.add_argument(
        "--lr",
        type=_positive_float,
        default=DEFAULTS["lr"],
        help=f"peak learning rate of the one-cycle schedule (default: {DEFAULTS['lr']})",
    )
    parser.add_argument("--n-train", type=positive_int, default=None, help="use only the first N training images")
    parser.add_argument("--n-test", type=positive_int, default=None, help="use only the first N test images")
    parser.add_argument(
        "--n-eval",
        type=positive_int,
        default=ev.n_eval,
        help=f"test images scored by the saliency metrics (default: {ev.n_eval})",
    )
    parser.add_argument(
        "--set",
        dest="options",
        type=_option,
        action="append",
        default=[],
        metavar="METHOD.OPTION=VALUE",
        help="objective option, e.g. saliencydecor.lambda_decor=0.3 or sgt.mask_fraction=0.5 (repeatable)",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: the cores available)"
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    grid = parser.add_argument_group(
        "benchmark grid",
        "--grid FILE runs (or resumes) the grid of data families x models x training regimes x methods x "
        "seeds instead of one comparison, appending each finished run to FILE (JSON) and writing the table "
        "(FILE.md) and figure (FILE.png) beside it; --seeds, --threads, --n-train, --n-test and --quiet apply, "
        "the other options above do not",
    )
    grid.add_argument("--grid", default=None, metavar="FILE", help="run the benchmark grid into FILE")
    grid.add_argument("--grid-families", type=_names, default=None, metavar="LIST", help="data families (default: all)")
    grid.add_argument("--grid-models", type=_names, default=None, metavar="LIST", help="models (default: all)")
    grid.add_argument("--grid-regimes", type=_names, default=None, metavar="LIST", help="regimes (default: sgd,adam)")
    grid.add_argument(
        "--grid-define-regime",
        action="append",
        default=[],
        metavar="NAME=OPTIMIZER,LR,BATCH_SIZE[,WEIGHT_DECAY[,EPOCHS]]",
        help="a regime besides sgd and adam, e.g. adam-short=adam,2e-3,128,0,12 (repeatable; name it in "
        "--grid-regimes; resume its file with the same definitions)",
    )
    grid.add_argument("--grid-methods", type=_names, default=None, metavar="LIST", help="grid methods (default: all)")
    grid.add_argument("--grid-epochs", type=positive_int, default=None, help="epochs per run (default: the regime's)")
    grid.add_argument(
        "--grid-channels-last",
        action="store_true",
        help="train the grid's runs in channels-last memory format (faster convolutions; recorded per run)",
    )
    grid.add_argument("--grid-report", action="store_true", help="only write the grid's table and figure")
    grid.add_argument(
        "--grid-baseline",
        default="standard",
        metavar="METHOD",
        help="the grid report's changes are paired against this method (default: standard, cross-entropy)",
    )


def _names(text: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


def run_grid_command(args) -> int:
    """``sdecor compare --grid FILE``: the benchmark grid (see :mod:`sdecor.experiments.grid`)."""
    import torch

    from ..experiments import grid as G
    from ..experiments.runner import default_threads

    device = _device(args.device)
    try:
        regime_table = G.regimes_with(args.grid_define_regime)
    except ValueError as err:
        raise ValueError(f"--grid-define-regime: {err}") from None
    try:
        G.check_regime_names(args.grid_regimes or (), regime_table)
    except ValueError as err:
        raise ValueError(f"--grid-regimes: {err} (--grid-define-regime)") from None
    torch.set_num_threads(args.threads or default_threads())
    families = args.grid_families or G.FAMILIES
    models = args.grid_models or G.MODELS
    regimes = args.grid_regimes or tuple(G.REGIMES)
    methods = args.grid_methods or tuple(G.GRID_METHODS)
    if not args.grid_report:
        config = G.GridConfig(epochs=args.grid_epochs, n_train=args.n_train, n_test=args.n_test)
        G.run_grid(
            args.grid,
            families=families,
            models=models,
            regimes=regimes,
            methods=methods,
            seeds=args.seeds,
            config=config,
            method_table=G.ALL_METHODS,
            regime_table=regime_table,
            device=device,
            channels_last=args.grid_channels_last,
            progress=not args.quiet,
        )
    total = G.described_total(args.grid, families, models, regimes, methods, args.seeds)
    try:
        G.write_report(args.grid, total=total, baseline=args.grid_baseline)
    except ValueError as err:
        raise ValueError(f"--grid-baseline: {err}") from None
    return 0


def _device(text: str):
    import torch

    text = text.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device: expected cpu, cuda, cuda:N or auto, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ValueError(f"--device: expected cpu, cuda, cuda:N or auto, got {text!r}")
    return device


def _check_setup(model: str, width: int, options: dict) -> None:
    """Build the model and each objective once, so that a bad --model or --set fails before any training."""
    from ..losses import build_objective
    from ..models import build_model, resolve_feature_layer

    net = build_model(model, width=width)
    for method, opts in options.items():
        try:
            objective = build_objective(method, **opts)
            if hasattr(objective, "feature_layer"):  # the layer is looked up at call time: check it now
                resolve_feature_layer(net, objective.feature_layer)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--set {method}.*: {exc}") from None


def run(args) -> int:
    import os

    import torch

    if getattr(args, "grid", None):
        return run_grid_command(args)

    from ..experiments.compare import compare
    from ..experiments.runner import EvalConfig, default_threads

    device = _device(args.device)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} exists and is not a folder")
    options: dict = {}
    for method, name, value in args.options:
        if method not in args.methods:
            raise ValueError(f"--set {method}.{name}: {method} is not among --methods {','.join(args.methods)}")
        options.setdefault(method, {})[name] = value
    _check_setup(args.model, args.width, options)
    torch.set_num_threads(args.threads or default_threads())
    # Under torchrun every rank trains (DDP inside fit); only rank 0 prints and writes files.
    rank0 = int(os.environ.get("RANK", "0")) == 0
    compare(
        args.methods,
        seeds=args.seeds,
        epochs=args.epochs,
        dataset=args.dataset,
        model=args.model,
        width=args.width,
        batch_size=args.batch_size,
        lr=args.lr,
        n_train=args.n_train,
        n_test=args.n_test,
        device=device,
        out=args.out if rank0 else None,
        method_options=options,
        eval_config=EvalConfig(n_eval=args.n_eval),
        figures=not args.no_figures,
        progress=rank0 and not args.quiet,
        log=print if rank0 else (lambda *a, **k: None),
    )
    return 0
