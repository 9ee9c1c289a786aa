"""``sdecor bench``: the kernel micro-benchmark tables (ours vs the torch references)."""

from __future__ import annotations

HELP = "benchmark the fused kernels against their torch references; print tables, save JSON + Markdown"


def add_arguments(parser) -> None:
    from ..benchmarks.runner import SUITES

    parser.add_argument("--suite", action="append", choices=SUITES, help="suite to run (repeatable; default: all)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="quick", action="store_true", default=None, help="small sizes (default on CPU)")
    size.add_argument("--full", dest="quick", action="store_false", help="all sizes (default on CUDA)")
    parser.add_argument(
        "--out", default="bench/results", help="folder for <device>.json and .md (default: bench/results)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import sys

    import torch

    from ..benchmarks.runner import SUITES, main

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    return main(
        suites=args.suite or SUITES,
        device=args.device,
        quick=args.quick,
        out=args.out,
        command="sdecor " + " ".join(sys.argv[1:]),
        progress=not args.no_progress,
    )
