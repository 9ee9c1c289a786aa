"""Measure the GPU target settings one group at a time, saving after each (scripts/gpu_validate.sh).

    python scripts/gpu_targets.py OUT_DIR [--device cuda|cpu] [--quick] [--suites decorrelation,masking,train]

Runs the settings of the targets (``target_settings`` of ``bench/targets.py``) through the
benchmark runner's measurement, and after every measured group rewrites, atomically,
``OUT_DIR/targets.json`` (the runner's results format: ``bench/targets.py`` and ``--merge`` read
it), ``OUT_DIR/targets-results.md`` (the runner's tables) and ``OUT_DIR/targets.md`` (the targets
table of what is measured so far). A run killed at its time limit keeps every group it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):  # the source checkout, and bench/targets.py (the target checker)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_targets.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for targets.json, targets-results.md and targets.md")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="the small stand-in settings (CPU dry run)")
    parser.add_argument(
        "--suites",
        default="masking,train,decorrelation",
        help="comma-separated suites, in the order measured (default: the one-group suites first)",
    )
    args = parser.parse_args(argv)

    import importlib

    import targets  # bench/targets.py
    import torch

    from sdecor.benchmarks import runner

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "scripts/gpu_targets.py" + (" --quick" if args.quick else "")
    env = runner._environment(dev, command)
    if dev.type == "cpu":
        env["allocator"] = runner.pin_glibc_malloc() or "default"
    records: list[dict] = []
    json_path = out / "targets.json"

    def save() -> None:
        _write_atomic(json_path, json.dumps({"environment": env, "quick": args.quick, "results": records}, indent=1))
        _write_atomic(out / "targets-results.md", runner.format_markdown(env, records))
        text, _ = targets.check_file(json_path, write=False)
        _write_atomic(out / "targets.md", text)

    with targets.target_settings():
        for name in [s for s in args.suites.split(",") if s]:
            suite = importlib.import_module(f"sdecor.benchmarks.{name}")
            t0 = time.perf_counter()
            groups = suite.run(dev, args.quick)
            print(f"[{name}] {len(groups)} groups built in {time.perf_counter() - t0:.1f}s", flush=True)
            for group in groups:
                t0 = time.perf_counter()
                record = runner._measure_group(group, dev, None)
                group.impls.clear()  # free the group's inputs and closures
                records.append(record)
                save()
                print(f"[{name}] {record['params']}: {time.perf_counter() - t0:.1f}s, saved", flush=True)
    print((out / "targets.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
