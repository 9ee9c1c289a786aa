"""Tuning sweep of the fused decorrelation kernels (``sdecor.benchmarks.tuning``).

    python bench/tune_decorrelation.py --budget-s 300 --out bench/results/tune      # on a GPU
    python bench/tune_decorrelation.py --quick                                      # CPU: interpreter, tiny shapes
    python bench/tune_decorrelation.py --prune-only --workers 2                     # no GPU needed

``--prune-only`` compiles every candidate for sm_90 (no GPU) and rewrites the pruned candidate
list ``sdecor/benchmarks/tuning_candidates.json``. Without CUDA the sweep runs under the Triton
interpreter on tiny shapes with a few candidates: it checks the code path, it is not a
performance run. Writes ``<out>/tune-<device>[-quick].json`` and ``.md``.
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _args(argv):
    p = argparse.ArgumentParser(prog="bench/tune_decorrelation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=300.0, help="total seconds for the sweep (default 300)")
    p.add_argument(
        "--out", default="bench/results/tune", help="folder for the JSON and Markdown (default bench/results/tune)"
    )
    p.add_argument(
        "--settings",
        default=None,
        help="comma list of NxD[:dtype] or N<n>-D<d>-<dtype> (default: the 8 target settings; --quick: 24x40:fp32,40x24:bf16)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and 3 candidates (CPU: Triton interpreter; not a performance run)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--context",
        choices=("none", "cheap", "full"),
        default="cheap",
        help="times beside the sweep: cheap = eager reference + matmul floor; full = + torch.compile at N=256, D in {512, 2048}",
    )
    p.add_argument(
        "--per-candidate-s",
        type=float,
        default=0.15,
        help="timing seconds per candidate after its checks (default 0.15)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="compile processes (prune: default 2; sweep on CUDA: cores - 2, max 12; 0: none)",
    )
    p.add_argument(
        "--candidates", default=None, help="pruned candidate JSON (default: sdecor/benchmarks/tuning_candidates.json)"
    )
    p.add_argument(
        "--prune-only", action="store_true", help="compile every candidate for sm_90 (no GPU) and write the pruned list"
    )
    p.add_argument(
        "--sm-count",
        type=int,
        default=132,
        help="--prune-only: SM count of the GPU the list is for (default 132: H100 SXM, H200)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _args(argv)
    if str(ROOT) not in sys.path:  # a source checkout that is not pip-installed
        sys.path.insert(0, str(ROOT))
    if args.prune_only:
        os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter
    elif args.quick or args.device == "cpu":
        import torch

        if args.device == "cpu" or not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    from sdecor.benchmarks import tuning

    try:
        settings = tuning.parse_settings(args.settings) if args.settings else None
    except ValueError as exc:
        raise SystemExit(f"bench/tune_decorrelation.py: error: {exc}")
    if args.prune_only:
        out = Path(args.candidates) if args.candidates else tuning.DATA_PATH
        data = tuning.prune(settings, workers=args.workers or 2, sm_count=args.sm_count, out=out)
        total = sum(e["generated"] for e in data["settings"].values())
        kept = sum(e["survived"] for e in data["settings"].values())
        for name, e in data["settings"].items():
            print(
                f"{name}: {e['survived']} of {e['generated']} candidates compile without spills (default: {e['default_check']})"
            )
        print(f"pruned: {kept} of {total} candidates kept, {data['seconds']}s; saved {out}")
        return 0
    candidates = None
    if args.candidates:
        candidates = tuning.load_candidates(args.candidates)
    command = "bench/tune_decorrelation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = tuning.sweep(
        settings,
        budget_s=args.budget_s,
        device=args.device,
        quick=True if args.quick else None,
        candidates=candidates,
        per_candidate_s=args.per_candidate_s,
        context=args.context,
        workers=args.workers,
        command=command.strip(),
        on_setting=lambda partial: tuning.write_results(partial, args.out),
    )  # kept if the process is killed
    json_path, md_path = tuning.write_results(results, args.out)
    print(tuning.format_markdown(results).split("\n## ")[0])
    print(f"saved {json_path} and {md_path}")
    bad = [r for r in results["settings"] if r.get("status") != "ok"]
    return 1 if bad and len(bad) == len(results["settings"]) else 0


if __name__ == "__main__":
    sys.exit(main())
