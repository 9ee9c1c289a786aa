"""Run benchmark suites, print ratio tables, save ``<out>/<device>.json`` and ``.md``.

Every implementation of a :class:`~sdecor.benchmarks.common.Group` is measured in the same run,
in alternating rounds (:func:`~sdecor.benchmarks.common.measure_interleaved`), and every ratio
is the median over rounds of the two times of the same round
(:func:`~sdecor.benchmarks.common.paired_ratio`), so the ratios compare like with like even on a
machine whose speed drifts. ``speedup`` is baseline time / impl time
(> 1 means faster than the baseline); ``peak MB`` is the peak memory above what was allocated
before the call (CUDA only; CPU allocations are not tracked and print as ``-``).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import re
import sys
from pathlib import Path

import torch

from .common import Group, measure_interleaved, paired_ratio, pin_glibc_malloc

SUITES = ("decorrelation", "masking", "metrics", "train", "barlow_twins")

__all__ = ["SUITES", "run_suites", "device_slug", "format_markdown", "main"]


def device_slug(device: torch.device) -> str:
    """File-name-safe device name: ``nvidia-h100-80gb-hbm3`` or ``cpu``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return device.type


def _environment(device: torch.device, command: str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # triton is optional off Linux
        triton_version = None
    return {
        "device": device_slug(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine()),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _measure_group(group: Group, device: torch.device, progress) -> dict:
    measured = measure_interleaved({impl.name: impl.fn for impl in group.impls}, device)
    results: dict[str, dict] = {}
    for name, m in measured.items():
        if isinstance(m, torch.cuda.OutOfMemoryError):
            results[name] = {"error": "out of memory"}
        elif isinstance(m, Exception):  # a failing implementation is reported, not fatal
            results[name] = {"error": f"{type(m).__name__}: {str(m).splitlines()[0][:120]}"}
        else:
            results[name] = {"median_ms": m.median_ms, "iqr_ms": m.iqr_ms, "peak_mb": m.peak_mb, "iters": m.iters}
    if progress is not None:
        progress.update(len(group.impls))
    ok = {name: m for name, m in measured.items() if not isinstance(m, Exception)}
    base = ok.get(group.baseline)
    floor = ok.get(group.floor) if group.floor else None
    for name, m in ok.items():  # ratios of calls made in the same round (see paired_ratio)
        if base is not None:
            results[name]["speedup"] = paired_ratio(base, m)
        if floor is not None:
            results[name]["vs_floor"] = paired_ratio(m, floor)
    record = {
        "suite": group.suite,
        "params": group.params,
        "baseline": group.baseline,
        "impls": results,
        "skipped": dict(group.skipped),
    }
    if group.floor:
        record["floor"] = group.floor
    return record


def run_suites(names, device: torch.device, quick: bool, progress: bool = True) -> list[dict]:
    """Build every suite's groups and measure them; returns one record per group."""
    records = []
    for name in names:
        if name not in SUITES:
            raise ValueError(f"unknown benchmark suite {name!r}; expected one of {SUITES}")
        suite = importlib.import_module(f"sdecor.benchmarks.{name}")
        groups = suite.run(device, quick)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(g.impls) for g in groups), desc=f"bench {name}", leave=False)
        for group in groups:
            records.append(_measure_group(group, device, bar))
            # free cached inputs/closures between groups
            group.impls.clear()
        if bar is not None:
            bar.close()
    return records


def _fmt_row(r: dict | None, is_cuda: bool, with_floor: bool) -> list[str]:
    """Cells (time, speed-up, [time / floor,] peak memory) of one implementation's measurement."""
    width = 4 if with_floor else 3
    if r is None:
        return ["-"] * width
    if "error" in r:
        return [f"error ({r['error']})"] + ["-"] * (width - 1)
    peak = f"{r['peak_mb']:.1f}" if is_cuda and r.get("peak_mb") is not None else "-"
    speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
    cells = [f"{r['median_ms']:.3f}", speedup]
    if with_floor:
        cells.append(f"{r['vs_floor']:.2f}x" if "vs_floor" in r else "-")
    return cells + [peak]


def format_markdown(env: dict, records: list[dict]) -> str:
    """Markdown: one table per suite, one row per (setting, implementation)."""
    is_cuda = env["device"] != "cpu"
    lines = [
        f"# Benchmarks on {env['device_name']} ({env['device']})",
        "",
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, Python {env['python']}, "
        f"{env['cpu_threads']} CPU threads, {env['date']}."
        + (f" Allocator: {env['allocator']}." if env.get("allocator") else ""),
        f"Command: `{env['command']}`",
        "",
        "Median time per call; speed-up = baseline time / this time (> 1 is faster); time / floor = this "
        "time / the time of the setting's floor (the unavoidable work alone), where a suite has one. "
        "All rows of one setting are measured in the same run, in alternating rounds, and each ratio is "
        "the median over rounds of the times of the same round; "
        + (
            "peak MB = peak memory above what was allocated before the call."
            if is_cuda
            else "peak memory is measured on CUDA only."
        ),
    ]
    for suite in dict.fromkeys(r["suite"] for r in records):
        rows = [r for r in records if r["suite"] == suite]
        params = list(dict.fromkeys(k for r in rows for k in r["params"]))
        with_floor = any(r.get("floor") for r in rows)
        headers = ["impl", "ms", "speed-up vs baseline"] + (["time / floor"] if with_floor else []) + ["peak MB"]
        lines += ["", f"## {suite}", ""]
        lines.append("| " + " | ".join(params + headers) + " |")
        lines.append("|" + "---|" * (len(params) + len(headers)))
        for r in rows:
            setting = [str(r["params"].get(p, "")) for p in params]
            for name, result in r["impls"].items():
                label = f"**{name}** (baseline)" if name == r["baseline"] else name
                if name == r.get("floor"):
                    label += " (floor)"
                lines.append("| " + " | ".join(setting + [label] + _fmt_row(result, is_cuda, with_floor)) + " |")
            for name in r["skipped"]:
                lines.append("| " + " | ".join(setting + [name, "skipped"] + ["-"] * (len(headers) - 2)) + " |")
        reasons = {k: v for r in rows for k, v in r["skipped"].items()}
        for k, v in reasons.items():
            lines.append(f"\n`{k}` skipped: {v}")
    return "\n".join(lines) + "\n"


def main(
    suites=SUITES,
    device: str | None = None,
    quick: bool | None = None,
    out: str | os.PathLike | None = "bench/results",
    command: str | None = None,
    progress: bool = True,
) -> int:
    """Measure ``suites`` on ``device`` (default: cuda if available, else cpu), print, save."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available")
    if quick is None:
        quick = dev.type != "cuda"
    command = command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    env = _environment(dev, command)
    if dev.type == "cpu":
        env["allocator"] = pin_glibc_malloc() or "default"
    records = run_suites(suites, dev, quick, progress=progress)
    text = format_markdown(env, records)
    print(text)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = env["device"] + ("-quick" if quick else "")
        (out / f"{stem}.json").write_text(
            json.dumps({"environment": env, "quick": quick, "results": records}, indent=1)
        )
        (out / f"{stem}.md").write_text(text)
        print(f"saved {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0
