"""scripts/grid_parallel.py: missing runs as parallel worker processes, merged, within a budget."""

import json
import os
import subprocess
import sys

from sdecor.experiments.grid import run_key

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "grid_parallel.py")
TINY = ["--grid-args", "--n-train", "64", "--n-test", "32"]


def _run(*args, budget="120"):
    command = [sys.executable, SCRIPT, "--device", "cpu", "--models", "small_cnn", "--regimes", "sgd"]
    command += ["--families", "digits-in-clutter", "--budget-s", budget, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_runs_the_missing_runs_in_parallel_and_merges_them(tmp_path):
    work, publish = str(tmp_path / "work"), str(tmp_path / "out")
    done = run_key("digits-in-clutter", "small_cnn", "sgd", "standard", 0)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"config": None, "runs": [{"key": done}]}))
    args = ["--grid", str(grid), "--methods", "standard", "saliencydecor", "--seeds", "0", "1", "--workers", "2"]
    args += ["--limit", "2"]
    result = _run(*args, "--work", work, "--publish", publish, *TINY, "--epochs", "1", "--channels-last")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 runs to do, 2 at a time on cpu" in result.stdout
    with open(os.path.join(publish, "grid_parallel.json")) as f:
        runs = json.load(f)["runs"]
    keys = {run_key("digits-in-clutter", "small_cnn", "sgd", m, s) for m, s in [("saliencydecor", 0), ("standard", 1)]}
    assert {r["key"] for r in runs} == keys
    assert all(r["device"] == "cpu" and len(r["history"]) == 1 for r in runs)
    assert all(r["memory_format"] == "channels_last" for r in runs)  # --grid-args reach the workers
    assert (tmp_path / "out" / "grid_parallel.log").read_text().count("=====") == 2
    # a second call finds the finished shards in the work folder and runs only the last one
    again = _run(*args, "--work", work, *TINY, "--epochs", "1", budget="0")
    assert again.returncode == 2 and "1 runs to do" in again.stdout and "1 not started" in again.stdout


def test_stops_the_workers_at_the_budget(tmp_path):
    args = ["--methods", "standard", "--seeds", "0", "1", "--workers", "1", "--work", str(tmp_path)]
    result = _run(*args, *TINY, "--epochs", "500", budget="6")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "stopped at the budget" in result.stdout
    assert "0 runs in" in result.stdout and "1 not started" in result.stdout
