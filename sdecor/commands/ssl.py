"""``sdecor ssl``: med-moco's comparison of decorrelation for self-supervised learning."""

from __future__ import annotations

HELP = (
    "MoCo v2 (+ local patch loss) on the embedded digits-in-clutter set: plain vs + decorrelation penalty "
    "vs + IterNorm; prints effective rank and linear-probe accuracy, writes results.json"
)


def add_arguments(parser) -> None:
    from ..ssl.recipe import SETTINGS, SSLConfig

    d = SSLConfig()
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"MoCo epochs per setting (default {d.epochs})")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds, 0..S-1 (default 1)")
    parser.add_argument("--out", default="runs/ssl", help="folder for results.json (default runs/ssl)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {','.join(SETTINGS)}"
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"SGD learning rate, cosine schedule (default {d.lr})")
    parser.add_argument("--queue-size", type=int, default=d.queue_size, help=f"MoCo queue K (default {d.queue_size})")
    parser.add_argument(
        "--decor-weight",
        type=float,
        default=d.decor_weight,
        help=f"lambda of the penalty in 'decor' (default {d.decor_weight})",
    )
    parser.add_argument(
        "--local-weight",
        type=float,
        default=d.local_weight,
        help=f"weight of the local patch loss, 0 = off (default {d.local_weight})",
    )
    parser.add_argument(
        "--iternorm-T", type=int, default=d.iternorm_T, help=f"IterNorm Newton iterations (default {d.iternorm_T})"
    )
    parser.add_argument("--width", type=int, default=d.width, help=f"SmallCNN width (default {d.width})")
    parser.add_argument("--n-train", type=int, default=None, help="cap on training images (default: all)")
    parser.add_argument("--n-test", type=int, default=None, help="cap on test images (default: all)")
    parser.add_argument("--no-random-row", action="store_true", help="skip the untrained-encoder reference row")
    parser.add_argument("--quiet", action="store_true", help="print only the table")


def run(args) -> int:
    import json
    import os
    import sys

    import torch

    from ..ssl.recipe import SETTINGS, SSLConfig, format_table, run_comparison

    settings = tuple(s.strip() for s in args.settings.split(",") if s.strip())
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        raise ValueError(f"--settings must be a comma-separated subset of {','.join(SETTINGS)}, got {args.settings!r}")
    for name in ("epochs", "seeds", "batch_size", "queue_size", "width"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("n_train", "n_test"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 2, got {getattr(args, name)}")
    if args.decor_weight < 0 or args.local_weight < 0 or args.lr <= 0 or args.iternorm_T < 0:
        raise ValueError("--decor-weight, --local-weight and --iternorm-T must be >= 0 and --lr > 0")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    cfg = SSLConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        queue_size=args.queue_size,
        decor_weight=args.decor_weight,
        local_weight=args.local_weight,
        iternorm_T=args.iternorm_T,
        width=args.width,
        n_train=args.n_train,
        n_test=args.n_test,
    )
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run_comparison(
        cfg,
        settings=settings,
        seeds=tuple(range(args.seeds)),
        device=device,
        log=log,
        include_random=not args.no_random_row,
    )
    report["command"] = (
        "sdecor " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("sdecor") else "sdecor ssl"
    )
    report["torch"] = torch.__version__
    table = format_table(report)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as fh:
        json.dump({**report, "table": table}, fh, indent=1, default=str)
    print(f"wrote {path}")
    return 0
