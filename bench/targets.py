"""Issue 7's five GPU targets, read off a results JSON of the benchmark runner (``sdecor bench``).

Command line: ``python bench/targets.py RESULTS.json`` prints the table and writes
``<stem>-targets.md`` beside the JSON; ``--merge OUT.json A.json B.json`` merges runs first;
``--run`` measures only the target settings first; ``--suite S --part I/K`` runs one slice of a
suite. This is developer tooling beside the package: it imports :mod:`sdecor.benchmarks`, and
nothing in ``sdecor`` imports it.

:func:`evaluate` takes the runner's JSON (``{"environment", "quick", "results": [{"suite",
"params", "baseline", "impls": {name: {"median_ms", "peak_mb", ...} or {"error"}}, "skipped"}]}``)
and returns one :class:`Row` per checked figure; :func:`format_targets` makes the Markdown table
(target, setting, measured figure, required figure, floor / context, PASS, FAIL or NOT RUN) and,
for every FAIL, what the implementation would have to reach to pass. The targets (every ratio is
between implementations measured in the same run):

1. ``decorrelation`` fwd+bwd at N = 256, D in {512, 2048}, fp32 and bf16: ``triton`` >= 5x faster
   than the eager ``reference`` and >= 1.5x faster than ``compiled``.
2. N = 8192, D = 4096 (D x D route) and N = 256, D = 8192 (Gram route), fp32 and bf16: ``triton``
   time <= 1.3x ``matmul_floor`` (the cuBLAS matmuls of the route).
3. ``triton``'s peak extra memory <= N*D + min(N, D)^2 elements of the dtype (``bound MB``), at
   the sizes of targets 1 and 2 and, as one summary row, at every measured size; the eager
   reference's peak beside it.
4. ``masking`` at B = 256, 3 x 224 x 224, per-pixel saliency, k = 50%: ``ours`` >= 5x faster than
   our pure-torch ``reference``, and ``ours``'s achieved bandwidth on the bytes that must move
   (``MB moved``) >= 50% of ``copy_floor``'s (the same bytes copied, nothing else).
5. ``train`` at B = 256 with bf16 AMP: a ``saliencydecor`` step <= 2.5x a ``standard`` step, and
   ``part:mask_features`` + ``part:decorrelation`` < 10% of the ``saliencydecor`` step.

A figure measured on a CPU, or at another setting than the target's (e.g. the CPU quick batch of
the train suite), is shown with status NOT RUN: the targets are for a CUDA GPU. A missing record,
a skipped or failed implementation or a missing peak gives NOT RUN with the reason.

Also here: :func:`merge` (results JSONs of several runs into one, the later record of a setting
replacing the earlier one), :func:`run_targets` (measure only the target settings, through the
runner, with the suites' size lists cut to :data:`DECORRELATION_SIZES` and
:data:`MASKING_SETTINGS`) and :func:`run_suite` (one suite, or one contiguous slice of its
settings, so that a time limit that kills a long suite loses only that slice; the GPU validation
script ``scripts/gpu_validate.sh`` runs the suites this way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Row",
    "TARGETS",
    "STATUSES",
    "evaluate",
    "format_targets",
    "check_file",
    "merge",
    "merge_files",
    "DECORRELATION_SIZES",
    "MASKING_SETTINGS",
    "target_settings",
    "suite_part",
    "run_suite",
    "run_targets",
    "main",
]

STATUSES = ("PASS", "FAIL", "NOT RUN")
#: target number -> short title
TARGETS = {
    1: "decorrelation fwd+bwd speed, N=256",
    2: "decorrelation vs the cuBLAS matmul floor",
    3: "decorrelation peak extra memory",
    4: "mask_features speed and bandwidth",
    5: "SaliencyDecor training step",
}
DTYPES = ("fp32", "bf16")
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
SPEEDUP_VS_REFERENCE = 5.0
SPEEDUP_VS_COMPILED = 1.5
FLOOR_RATIO = 1.3
MASK_SPEEDUP = 5.0
BANDWIDTH_FRACTION = 0.5
TRAIN_RATIO = 2.5
PARTS_FRACTION = 0.10
T1_SIZES = ((256, 512), (256, 2048))
T2_SIZES = ((8192, 4096), (256, 8192))
T4_SETTING = {"B": 256, "image": "3x224x224", "saliency": "pixel", "k": "50%"}
T5_SETTING = {"B": 256, "amp": "bf16"}
#: the decorrelation suite's (N, D) sizes the targets are stated at (targets 1 to 3)
DECORRELATION_SIZES = [*T1_SIZES, *T2_SIZES]
#: the masking suite's (B, H, W, saliency layout, k fraction) setting of target 4
MASKING_SETTINGS = [(256, 224, 224, "pixel", 0.5)]


@dataclass
class Row:
    """One checked figure. ``status`` is one of :data:`STATUSES`; ``note`` says, for FAIL, what
    would pass, and for NOT RUN, why there is no verdict."""

    target: int
    check: str
    setting: str
    measured: str
    required: str
    context: str
    status: str
    note: str = ""


# ------------------------------------------------------------------------------ lookups


def _find(results: list, suite: str, **params) -> dict | None:
    """The last record of ``suite`` whose params contain ``params``."""
    for record in reversed(results):
        if record.get("suite") == suite and all(record.get("params", {}).get(k) == v for k, v in params.items()):
            return record
    return None


def _ms(record: dict | None, name: str) -> tuple[float | None, str]:
    """(median ms of implementation ``name``, "") or (None, why it has none)."""
    if record is None:
        return None, "setting not in the results"
    if name in record.get("skipped", {}):
        return None, f"{name} skipped: {record['skipped'][name]}"
    result = record.get("impls", {}).get(name)
    if result is None:
        return None, f"{name} not measured"
    if "error" in result:
        return None, f"{name} failed: {result['error']}"
    ms = result.get("median_ms")
    if not isinstance(ms, (int, float)) or ms <= 0:
        return None, f"{name} has no time"
    return float(ms), ""


def _peak(record: dict | None, name: str) -> float | None:
    result = (record or {}).get("impls", {}).get(name) or {}
    peak = result.get("peak_mb")
    return float(peak) if isinstance(peak, (int, float)) else None


def _why(*pairs) -> str:
    return "; ".join(dict.fromkeys(why for value, why in pairs if value is None and why)) or "not measured"


class _Verdict:
    """Turns a comparison into a status, given whether the results can judge the target at all."""

    def __init__(self, judge_note: str = "") -> None:
        self.judge_note = judge_note  # non-empty: measured where the target does not apply

    def __call__(self, ok: bool, fail_note: str) -> tuple[str, str]:
        if self.judge_note:
            return "NOT RUN", self.judge_note
        return ("PASS", "") if ok else ("FAIL", fail_note)


def _fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.3f} ms"


# ------------------------------------------------------------------------------ the targets


def _target1(results, verdict) -> list[Row]:
    rows = []
    for n, d in T1_SIZES:
        for dtype in DTYPES:
            rec = _find(results, "decorrelation", N=n, D=d, dtype=dtype)
            setting = f"N={n} D={d} {dtype}"
            (t, t_why), (ref, ref_why), (comp, comp_why) = (
                _ms(rec, "triton"),
                _ms(rec, "reference"),
                _ms(rec, "compiled"),
            )
            for check, other, other_why, need, label in (
                ("triton vs eager reference", ref, ref_why, SPEEDUP_VS_REFERENCE, "reference"),
                ("triton vs torch.compile(reference)", comp, comp_why, SPEEDUP_VS_COMPILED, "compiled"),
            ):
                required = f">= {need:g}x faster"
                context = f"reference {_fmt_ms(ref)}, compiled {_fmt_ms(comp)}"
                if t is None or other is None:
                    rows.append(
                        Row(1, check, setting, "-", required, context, "NOT RUN", _why((t, t_why), (other, other_why)))
                    )
                    continue
                ratio = other / t
                goal = other / need
                status, note = verdict(
                    ratio >= need,
                    f"triton must reach {goal:.3f} ms ({t / goal:.2f}x faster than its {t:.3f} ms) "
                    f"to be {need:g}x {label}",
                )
                rows.append(Row(1, check, setting, f"{ratio:.2f}x ({t:.3f} ms)", required, context, status, note))
    return rows


def _target2(results, verdict) -> list[Row]:
    rows = []
    for n, d in T2_SIZES:
        for dtype in DTYPES:
            rec = _find(results, "decorrelation", N=n, D=d, dtype=dtype)
            route = "D x D route" if n >= d else "Gram (N x N) route"
            setting = f"N={n} D={d} {dtype}"
            (t, t_why), (floor, f_why), (ref, _) = _ms(rec, "triton"), _ms(rec, "matmul_floor"), _ms(rec, "reference")
            required = f"<= {FLOOR_RATIO:g}x matmul_floor"
            context = f"matmul_floor {_fmt_ms(floor)}, reference {_fmt_ms(ref)}"
            check = f"triton vs cuBLAS matmuls ({route})"
            if t is None or floor is None:
                rows.append(Row(2, check, setting, "-", required, context, "NOT RUN", _why((t, t_why), (floor, f_why))))
                continue
            ratio = t / floor
            goal = FLOOR_RATIO * floor
            status, note = verdict(
                ratio <= FLOOR_RATIO, f"triton must reach {goal:.3f} ms ({t / goal:.2f}x faster than its {t:.3f} ms)"
            )
            rows.append(Row(2, check, setting, f"{ratio:.2f}x floor ({t:.3f} ms)", required, context, status, note))
    return rows


def _bound_mb(n: int, d: int, dtype: str) -> float:
    return (n * d + min(n, d) ** 2) * ELEMENT_BYTES.get(dtype, 4) / 2**20


def _target3(results, verdict) -> list[Row]:
    rows = []
    for n, d in T1_SIZES + T2_SIZES:
        for dtype in DTYPES:
            rec = _find(results, "decorrelation", N=n, D=d, dtype=dtype)
            setting = f"N={n} D={d} {dtype}"
            bound = _bound_mb(n, d, dtype)
            required = f"<= {bound:.1f} MB"
            ref_peak, floor_peak = _peak(rec, "reference"), _peak(rec, "matmul_floor")
            context = "reference " + ("-" if ref_peak is None else f"{ref_peak:.1f} MB")
            if floor_peak is not None:
                context += f", matmul_floor {floor_peak:.1f} MB"
            t, why = _ms(rec, "triton")
            peak = _peak(rec, "triton")
            check = "triton peak vs N*D + min(N,D)^2 elements"
            if t is None:
                rows.append(Row(3, check, setting, "-", required, context, "NOT RUN", why))
                continue
            if peak is None:
                rows.append(
                    Row(3, check, setting, "-", required, context, "NOT RUN", "peak memory is measured on CUDA only")
                )
                continue
            status, note = verdict(peak <= bound, f"{peak - bound:.1f} MB over the bound ({peak / bound:.2f}x it)")
            rows.append(Row(3, check, setting, f"{peak:.1f} MB", required, context, status, note))
    # every measured size: how many stay within the bound
    within, measured, worst = 0, 0, None
    for rec in results:
        if rec.get("suite") != "decorrelation":
            continue
        p = rec.get("params", {})
        peak = _peak(rec, "triton")
        if peak is None or not all(k in p for k in ("N", "D", "dtype")):
            continue
        bound = _bound_mb(p["N"], p["D"], p["dtype"])
        measured += 1
        within += peak <= bound
        if worst is None or peak / bound > worst[0]:
            worst = (peak / bound, f"N={p['N']} D={p['D']} {p['dtype']}")
    check = "triton peak within the bound, every measured size"
    if measured == 0:
        rows.append(
            Row(
                3,
                check,
                "all sizes",
                "-",
                "all within",
                "",
                "NOT RUN",
                "no triton peak memory in the results (CUDA only)",
            )
        )
    else:
        status, note = verdict(within == measured, f"worst: {worst[1]} at {worst[0]:.2f}x the bound")
        rows.append(
            Row(
                3,
                check,
                "all sizes",
                f"{within} of {measured} within",
                "all within",
                f"worst {worst[0]:.2f}x bound ({worst[1]})",
                status,
                note,
            )
        )
    return rows


def _mb_moved(rec: dict) -> float | None:
    p = rec.get("params", {})
    if isinstance(p.get("MB moved"), (int, float)):
        return float(p["MB moved"])
    try:  # float32 x (B, 3, H, W) and per-pixel float32 saliency, as the suite builds them
        c, h, w = (int(v) for v in p["image"].split("x"))
        sal = p["B"] * h * w * (1 if p["saliency"] == "pixel" else c)
        return (2 * p["B"] * c * h * w * 4 + sal * 5) / 1e6
    except (KeyError, ValueError, TypeError):
        return None


def _target4(results, verdict, on_gpu: bool) -> list[Row]:
    rec = _find(results, "masking", **T4_SETTING)
    setting = "B=256 3x224x224 pixel k=50%"
    (ours, o_why), (ref, r_why), (topk, _), (floor, f_why) = (
        _ms(rec, n) for n in ("ours", "reference", "topk_scatter", "copy_floor")
    )
    backend = (rec or {}).get("params", {}).get("backend")
    if rec is not None and on_gpu and backend != "cuda":
        verdict = _Verdict(
            verdict.judge_note
            or f"ours ran the {backend!r} backend, not the CUDA kernels (extension built without its CUDA "
            "part: SDECOR_BUILD_CUDA=0, no nvcc, or a failed CUDA build?)"
        )
    rows = []
    required = f">= {MASK_SPEEDUP:g}x faster"
    context = f"reference {_fmt_ms(ref)}, topk_scatter {_fmt_ms(topk)}" + (
        f" ({topk / ours:.2f}x)" if topk and ours else ""
    )
    check = "ours vs pure-torch reference"
    if ours is None or ref is None:
        rows.append(Row(4, check, setting, "-", required, context, "NOT RUN", _why((ours, o_why), (ref, r_why))))
    else:
        goal = ref / MASK_SPEEDUP
        status, note = verdict(
            ref / ours >= MASK_SPEEDUP,
            f"ours must reach {goal:.3f} ms ({ours / goal:.2f}x faster than its {ours:.3f} ms)",
        )
        rows.append(Row(4, check, setting, f"{ref / ours:.2f}x ({ours:.3f} ms)", required, context, status, note))
    check = "ours GB/s vs copy_floor GB/s (bytes that must move)"
    required = f">= {BANDWIDTH_FRACTION:.0%} of copy_floor"
    mb = _mb_moved(rec) if rec is not None else None
    if ours is None or floor is None or mb is None:
        why = _why((ours, o_why), (floor, f_why)) if (ours is None or floor is None) else "no MB moved in the params"
        rows.append(Row(4, check, setting, "-", required, f"copy_floor {_fmt_ms(floor)}", "NOT RUN", why))
    else:
        gbs, floor_gbs = mb / ours, mb / floor
        context = f"copy_floor {floor_gbs:.0f} GB/s ({floor:.3f} ms for {mb:.1f} MB)"
        goal = floor / BANDWIDTH_FRACTION
        status, note = verdict(
            gbs >= BANDWIDTH_FRACTION * floor_gbs,
            f"ours must reach {goal:.3f} ms ({ours / goal:.2f}x faster than its {ours:.3f} ms)",
        )
        rows.append(
            Row(4, check, setting, f"{gbs:.0f} GB/s = {gbs / floor_gbs:.0%} of floor", required, context, status, note)
        )
    return rows


def _target5(results, verdict) -> list[Row]:
    rec = _find(results, "train", **T5_SETTING)
    if rec is None:  # show what there is (e.g. the CPU quick batch), without a verdict
        rec = _find(results, "train")
        if rec is not None:
            p = rec.get("params", {})
            verdict = _Verdict(
                verdict.judge_note
                or f"measured at B={p.get('B')} amp={p.get('amp')}; the target is B=256 with bf16 AMP"
            )
    p = (rec or {}).get("params", {})
    setting = f"resnet20 B={p.get('B', 256)} {p.get('image', '3x32x32')} amp={p.get('amp', 'bf16')}"
    (std, s_why), (sd, d_why), (sal, _), (mask, m_why), (decor, c_why) = (
        _ms(rec, n) for n in ("standard", "saliencydecor", "part:saliency", "part:mask_features", "part:decorrelation")
    )
    rows = []
    check = "saliencydecor step vs cross-entropy step"
    required = f"<= {TRAIN_RATIO:g}x standard"
    context = f"standard {_fmt_ms(std)}, part:saliency {_fmt_ms(sal)}"
    if std is None or sd is None:
        rows.append(Row(5, check, setting, "-", required, context, "NOT RUN", _why((std, s_why), (sd, d_why))))
    else:
        goal = TRAIN_RATIO * std
        status, note = verdict(
            sd / std <= TRAIN_RATIO,
            f"the saliencydecor step must reach {goal:.3f} ms ({sd / goal:.2f}x faster than its {sd:.3f} ms)",
        )
        rows.append(Row(5, check, setting, f"{sd / std:.2f}x ({sd:.3f} ms)", required, context, status, note))
    check = "mask_features + decorrelation share of the step"
    required = f"< {PARTS_FRACTION:.0%} of the step"
    if sd is None or mask is None or decor is None:
        rows.append(
            Row(5, check, setting, "-", required, "", "NOT RUN", _why((sd, d_why), (mask, m_why), (decor, c_why)))
        )
    else:
        share = (mask + decor) / sd
        context = f"mask_features {mask:.3f} ms + decorrelation {decor:.3f} ms of {sd:.3f} ms"
        status, note = verdict(
            share < PARTS_FRACTION,
            f"the two parts must drop from {mask + decor:.3f} ms to under {PARTS_FRACTION * sd:.3f} ms",
        )
        rows.append(Row(5, check, setting, f"{share:.1%}", required, context, status, note))
    return rows


def evaluate(data: dict) -> list[Row]:
    """Every target's rows for one results JSON (already parsed)."""
    if not isinstance(data, dict):
        raise TypeError(f"data must be a dict (a parsed benchmark results JSON), got {type(data).__name__}")
    if not isinstance(data.get("results"), list):
        raise ValueError(
            "data must be a benchmark results JSON: a dict with a 'results' list (see sdecor.benchmarks.runner)"
        )
    env = data.get("environment", {})
    on_gpu = env.get("device", "cpu") != "cpu"
    verdict = _Verdict("" if on_gpu else f"measured on {env.get('device', 'cpu')}; the targets are for a CUDA GPU")
    results = data["results"]
    return (
        _target1(results, verdict)
        + _target2(results, verdict)
        + _target3(results, verdict)
        + _target4(results, verdict, on_gpu)
        + _target5(results, verdict)
    )


def summary(rows: list[Row]) -> dict[int, str]:
    """Per target: FAIL if any row failed, else NOT RUN if any row has no verdict, else PASS."""
    out = {}
    for target in TARGETS:
        statuses = [r.status for r in rows if r.target == target]
        out[target] = "FAIL" if "FAIL" in statuses else ("NOT RUN" if "NOT RUN" in statuses or not statuses else "PASS")
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_targets(data: dict, rows: list[Row] | None = None, source: str | None = None) -> str:
    """Markdown: a per-target summary, the table of checked figures, then the notes."""
    rows = evaluate(data) if rows is None else rows
    env = data.get("environment", {})
    lines = [
        f"# Issue 7 targets on {env.get('device_name', '?')} ({env.get('device', '?')})",
        "",
        f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, {env.get('date', '')}."
        + (" Quick (small) settings." if data.get("quick") else ""),
    ]
    if source:
        lines.append(f"Results: `{source}` (command: `{env.get('command', '?')}`).")
    lines += ["", "Each ratio compares implementations measured in the same run (median times).", ""]
    lines += ["| target | status |", "|---|---|"]
    for target, status in summary(rows).items():
        lines.append(f"| {target}. {TARGETS[target]} | {status} |")
    lines += [
        "",
        "| # | check | setting | measured | required | floor / context | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = f"**{r.status}**" if r.status == "FAIL" else r.status
        lines.append(
            "| "
            + " | ".join(_cell(c) for c in (r.target, r.check, r.setting, r.measured, r.required, r.context, status))
            + " |"
        )
    fails = [r for r in rows if r.status == "FAIL"]
    not_run = [r for r in rows if r.status == "NOT RUN"]
    if fails:
        lines += ["", "## Missed: what would pass", ""]
        lines += [f"- target {r.target}, {r.check}, {r.setting}: {r.note}" for r in fails]
    if not_run:
        lines += ["", "## Not run", ""]
        reasons: dict[str, list[str]] = {}
        for r in not_run:
            reasons.setdefault(r.note or "not measured", []).append(f"{r.target} ({r.setting})")
        lines += [f"- {why}: {', '.join(dict.fromkeys(where))}" for why, where in reasons.items()]
    return "\n".join(lines) + "\n"


def check_file(path, write: bool = True) -> tuple[str, list[Row]]:
    """Evaluate ``path`` (a results JSON); write ``<stem>-targets.md`` beside it when ``write``."""
    path = Path(path)
    data = json.loads(path.read_text())
    rows = evaluate(data)
    text = format_targets(data, rows, source=path.name)
    if write:
        path.with_name(f"{path.stem}-targets.md").write_text(text)
    return text, rows


# ------------------------------------------------------------------------------ merging, running


def merge(datas: list[dict]) -> dict:
    """Results of several runs as one: a record of the same suite and params in a later run
    replaces the earlier one (in its place); the first run's environment heads the result and
    every run's is kept under ``"environments"``."""
    if not datas:
        raise ValueError("merge needs at least one results JSON")
    records: dict[str, dict] = {}
    envs = []
    for data in datas:
        if not isinstance(data, dict):
            raise TypeError(f"datas must hold dicts (parsed benchmark results JSONs), got {type(data).__name__}")
        if not isinstance(data.get("results"), list):
            raise ValueError("every input must be a benchmark results JSON with a 'results' list")
        env = data.get("environment", {})
        envs.append(env)
        for record in data["results"]:
            records[json.dumps([record.get("suite"), record.get("params")], sort_keys=True)] = record
    devices = {e.get("device") for e in envs}
    if len(devices) > 1:
        raise ValueError(f"refusing to merge results of different devices: {sorted(map(str, devices))}")
    env = dict(envs[0])
    commands = list(dict.fromkeys(e.get("command", "?") for e in envs))
    if len(commands) > 1:
        env["command"] = "merged: " + "; ".join(commands)
    return {
        "environment": env,
        "environments": envs,
        "quick": any(d.get("quick") for d in datas),
        "results": list(records.values()),
    }


def merge_files(paths, out) -> Path:
    """Merge the results JSONs ``paths`` (missing ones are skipped with a note on stderr) into
    ``out`` (a .json path), with the runner's Markdown tables beside it as ``.md``."""
    from sdecor.benchmarks.runner import format_markdown

    datas = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            print(f"targets: {p} not found, left out of the merge", file=sys.stderr)
            continue
        datas.append(json.loads(p.read_text()))
    merged = merge(datas)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1))
    out.with_suffix(".md").write_text(format_markdown(merged["environment"], merged["results"]))
    return out


@contextlib.contextmanager
def target_settings():
    """Cut the decorrelation and masking suites' size lists to the target settings (full mode) and
    to one small stand-in of each (quick mode), restoring them afterwards."""
    from sdecor.benchmarks import decorrelation, masking

    saved = (decorrelation.SIZES, decorrelation.QUICK_SIZES, masking.FULL_SETTINGS, masking.QUICK_SETTINGS)
    decorrelation.SIZES = list(DECORRELATION_SIZES)
    decorrelation.QUICK_SIZES = [(256, 512)]
    masking.FULL_SETTINGS = list(MASKING_SETTINGS)
    masking.QUICK_SETTINGS = [(32, 224, 224, "pixel", 0.5)]
    try:
        yield
    finally:
        decorrelation.SIZES, decorrelation.QUICK_SIZES, masking.FULL_SETTINGS, masking.QUICK_SETTINGS = saved


#: suites whose settings can be split into parts, and the module lists that hold them
SPLITTABLE = {"decorrelation": ("SIZES", "QUICK_SIZES"), "masking": ("FULL_SETTINGS", "QUICK_SETTINGS")}


def _part(items: list, part: int, parts: int) -> list:
    """The ``part``-th (1-based) of ``parts`` contiguous slices of ``items``."""
    n = len(items)
    return items[(part - 1) * n // parts : part * n // parts]


@contextlib.contextmanager
def suite_part(suite: str, part: int = 1, parts: int = 1):
    """Cut ``suite``'s settings lists (full and quick) to their ``part``-th of ``parts`` contiguous
    slices while the block runs (``parts=1``: everything), restoring them afterwards."""
    import importlib

    if not isinstance(parts, int) or not isinstance(part, int) or parts < 1 or not 1 <= part <= parts:
        raise ValueError(f"part must be I/K with 1 <= I <= K, got {part}/{parts}")
    if parts == 1:
        yield
        return
    if suite not in SPLITTABLE:
        raise ValueError(f"suite {suite!r} cannot be split into parts; only {', '.join(SPLITTABLE)} can")
    module = importlib.import_module(f"sdecor.benchmarks.{suite}")
    saved = {name: getattr(module, name) for name in SPLITTABLE[suite]}
    for name, items in saved.items():
        setattr(module, name, _part(list(items), part, parts))
    try:
        yield
    finally:
        for name, items in saved.items():
            setattr(module, name, items)


def run_suite(
    suite: str,
    device: str | None = None,
    quick: bool | None = None,
    out="bench/results",
    part: int = 1,
    parts: int = 1,
    progress: bool = False,
) -> Path:
    """Run one suite (or the ``part``-th of ``parts`` slices of its settings) through the runner;
    writes ``<out>/<device>[-quick].json`` and ``.md`` and returns the JSON's path."""
    import torch

    from sdecor.benchmarks import runner

    if suite not in runner.SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}; expected one of {runner.SUITES}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if quick is None:
        quick = dev.type != "cuda"
    command = (
        f"bench/targets.py --suite {suite}"
        + (f" --part {part}/{parts}" if parts > 1 else "")
        + (" --quick" if quick else "")
    )
    with suite_part(suite, part, parts):
        runner.main(suites=(suite,), device=str(dev), quick=quick, out=out, command=command, progress=progress)
    return Path(out) / f"{runner.device_slug(dev)}{'-quick' if quick else ''}.json"


def run_targets(
    device: str | None = None, quick: bool | None = None, out="bench/results/targets", progress: bool = False
) -> Path:
    """Measure only the target settings (decorrelation, masking, train) through the runner and
    write ``<out>/<device>[-quick].json`` and ``.md``; returns the JSON's path."""
    import torch

    from sdecor.benchmarks import runner

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if quick is None:
        quick = dev.type != "cuda"
    with target_settings():
        runner.main(
            suites=("decorrelation", "masking", "train"),
            device=str(dev),
            quick=quick,
            out=out,
            command="bench/targets.py --run" + (" --quick" if quick else ""),
            progress=progress,
        )
    return Path(out) / f"{runner.device_slug(dev)}{'-quick' if quick else ''}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/targets.py",
        description="Check issue 7's GPU targets against benchmark results: print a Markdown table and "
        "write <stem>-targets.md beside the JSON.",
    )
    parser.add_argument("results", nargs="*", help="results JSON(s) written by bench/run.py (several: give --merge)")
    parser.add_argument(
        "--merge",
        metavar="OUT.json",
        help="merge the results JSONs (later ones win per setting) into OUT.json (+ .md), then check it",
    )
    parser.add_argument(
        "--run",
        action="store_true",
        help="first measure only the target settings (decorrelation, masking, train), then check",
    )
    parser.add_argument(
        "--out",
        default="bench/results/targets",
        help="folder for the results of --run and --suite (default: bench/results/targets)",
    )
    parser.add_argument("--device", default=None, help="--run: cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="--run: small stand-in settings (for a CPU dry run)")
    parser.add_argument(
        "--suite",
        help="only run this suite through the runner into --out (with --part: a slice of its settings), no check",
    )
    parser.add_argument(
        "--part",
        default="1/1",
        help="--suite: I/K runs the I-th of K contiguous slices of the suite's settings (decorrelation, masking)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target FAILs (default: 0 whatever the verdicts)"
    )
    args = parser.parse_args(argv)
    quick = True if args.quick else None
    if args.suite:
        try:
            part, parts = (int(v) for v in args.part.split("/"))
            path = run_suite(args.suite, args.device, quick, args.out, part, parts)
        except ValueError as exc:
            parser.error(str(exc))
        print(f"saved {path}")
        return 0
    paths = [Path(p) for p in args.results]
    if args.run:
        paths.append(run_targets(args.device, quick, args.out))
    if not paths:
        parser.error("give a results JSON, or --run")
    if args.merge:
        path = merge_files(paths, args.merge)
    elif len(paths) > 1:
        parser.error("several results JSONs need --merge OUT.json")
    else:
        path = paths[0]
    if not path.is_file():
        parser.error(f"{path} not found")
    try:
        text, rows = check_file(path)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        parser.error(f"{path}: {exc}")
    print(text)
    print(f"saved {path.with_name(path.stem + '-targets.md')}")
    return 1 if args.strict and any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
