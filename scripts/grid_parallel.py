"""Run the missing runs of the benchmark grid as parallel worker processes, within a time budget.

    python scripts/grid_parallel.py --grid docs/results/grid.json --models resnet20 \\
        --device cuda --workers 8 --budget-s 450 --publish "$OUT"

Each missing run (a key not in ``--grid``) is one job: ``python -m sdecor.experiments.grid
--no-report`` for that one (family, model, regime, method, seed), writing its own shard file under
``--work``. ``--workers`` jobs run at a time (one small-model training leaves most of a GPU idle;
how many share one well is not measured yet). Every 15 s, and at the end, the finished shards are merged
into ``<work>/grid_parallel.json`` and copied to ``--publish`` (with the workers' logs as one
file). At ``--budget-s`` the running jobs are stopped (their runs are lost; finished ones are
kept) and no new ones start. Merge the result into the grid file afterwards:

    python -m sdecor.experiments.grid --out docs/results/grid.json --merge grid_parallel.json --report

Runs carry the device they ran on (``"device"`` in each record). Exit status 0 when every job
finished, 1 when some failed, 2 when the budget ran out first.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time

from sdecor.experiments.grid import FAMILIES, GRID_METHODS, MODELS, REGIMES, load_records, merge_records, pending_runs


def _publish(work: str, publish: str | None) -> int:
    shards = sorted(glob.glob(os.path.join(work, "shard-*.json")))
    merged = os.path.join(work, "grid_parallel.json")
    n = len(merge_records(shards, merged)["runs"]) if shards else 0
    if publish:
        os.makedirs(publish, exist_ok=True)
        if shards:
            shutil.copy(merged, os.path.join(publish, "grid_parallel.json"))
        with open(os.path.join(publish, "grid_parallel.log"), "w") as out:
            for log in sorted(glob.glob(os.path.join(work, "shard-*.log"))):
                out.write(f"===== {os.path.basename(log)}\n")
                with open(log) as f:
                    out.write(f.read())
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default=None, help="grid file whose runs are done already (default: none)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--regimes", nargs="+", default=list(REGIMES))
    p.add_argument("--methods", nargs="+", default=list(GRID_METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock seconds for the whole command")
    p.add_argument("--work", default="/tmp/sdecor-grid-parallel", help="shards and logs (kept between calls)")
    p.add_argument("--publish", default=None, help="folder to copy the merged shards and the logs to")
    p.add_argument("--limit", type=int, default=None, help="run at most this many jobs")
    p.add_argument("--grid-args", nargs=argparse.REMAINDER, default=[], help="passed on (e.g. --epochs 1 --n-train 64)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers: expected a positive count, got {args.workers}")
    deadline = time.monotonic() + args.budget_s
    done = [r["key"] for r in load_records(args.grid)["runs"]] if args.grid else []
    os.makedirs(args.work, exist_ok=True)
    done += [
        r["key"] for shard in glob.glob(os.path.join(args.work, "shard-*.json")) for r in load_records(shard)["runs"]
    ]
    jobs = pending_runs(done, args.families, args.models, args.regimes, args.methods, args.seeds)[: args.limit]
    print(f"{len(jobs)} runs to do, {args.workers} at a time on {args.device}", flush=True)
    running: list[tuple[subprocess.Popen, str]] = []
    failed = 0
    last_publish = time.monotonic()
    while (jobs or running) and time.monotonic() < deadline:
        while jobs and len(running) < args.workers:
            family, model, regime, method, seed = jobs.pop(0)
            name = f"shard-{family}-{model}-{regime}-{method}-{seed}"
            shard = os.path.join(args.work, name)
            command = [sys.executable, "-m", "sdecor.experiments.grid", "--out", shard + ".json", "--no-report"]
            command += ["--families", family, "--models", model, "--regimes", regime, "--methods", method]
            command += ["--seeds", str(seed), "--device", args.device, "--threads", "1", *args.grid_args]
            log = open(shard + ".log", "w")
            running.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), name))
            log.close()
        time.sleep(1.0)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                failed += proc.returncode != 0
                print(f"{name}: {'ok' if proc.returncode == 0 else f'FAILED ({proc.returncode})'}", flush=True)
        if time.monotonic() - last_publish > 15:
            _publish(args.work, args.publish)
            last_publish = time.monotonic()
    for proc, name in running:
        proc.terminate()
        print(f"{name}: stopped at the budget", flush=True)
    for proc, _ in running:
        proc.wait()
    n = _publish(args.work, args.publish)
    print(
        f"{n} runs in {os.path.join(args.work, 'grid_parallel.json')}; {len(jobs)} not started, {failed} failed",
        flush=True,
    )
    return 1 if failed else (2 if jobs or running else 0)


if __name__ == "__main__":
    raise SystemExit(main())
