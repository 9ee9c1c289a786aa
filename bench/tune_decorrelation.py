"""Time candidate tile configurations of the fused decorrelation kernels (developer tool).

    python bench/tune_decorrelation.py                                   # CUDA: the target shapes
    python bench/tune_decorrelation.py --settings 256x512:bf16,8192x4096 --out bench/results/tune
    python bench/tune_decorrelation.py --quick --device cpu              # CPU smoke run (interpreter)

A candidate is a dict of overrides passed through the ``config=`` argument of
``kernels/decorrelation.py::decorrelation_forward_backward`` on top of ``select_config``'s choice
(``{}`` is that choice). Each candidate's loss and gradient (correlation mode, mean reduction,
correction 1, one group) are first checked against the float64 reference
(``sdecor.ops.decorrelation_reference``, the float64 reference); a candidate that fails to compile or is wrong is
reported, not timed. Prints one Markdown table per setting and writes
``<out>/tune-<device>[-quick].json`` and ``.md``. Without CUDA only ``--quick`` runs (the
Triton interpreter on tiny shapes: it checks the code path, it is not a performance run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TOL = {"fp32": (1e-5, 1e-4), "fp16": (5e-3, 1e-2), "bf16": (3e-2, 3e-2)}  # (loss, gradient) relative
SETTINGS = [f"{n}x{d}" for n, d in ((256, 512), (256, 2048), (8192, 4096), (256, 8192))]  # bench/targets.py
QUICK_SETTINGS = ["24x40:fp32", "40x24:fp32"]
CANDIDATES = [
    {},
    {"gram_block": 64, "gram_warps": 4},
    {"gram_block": 128, "gram_warps": 8},
    {"gram_block_r": 16},
    {"gram_block_r": 64},
    {"grad_block_m": 64, "grad_block_n": 64},
    {"grad_block_m": 128, "grad_block_n": 128, "grad_warps": 8},
    {"grad_block_j": 32},
    {"grad_block_j": 64},
    {"num_stages": 2},
    {"num_stages": 4},
    {"kz_row_loop": False},
]
QUICK_CANDIDATES = [{}, {"gram_block": 16, "gram_block_r": 16}, {"grad_block_m": 16, "grad_block_n": 16}]


def parse_settings(text: str) -> list[tuple[int, int, str]]:
    """``"256x512:bf16,8192x4096"`` -> [(256, 512, "bf16"), (8192, 4096, "fp32"), (8192, 4096, "bf16")]."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        shape, _, dtype = item.partition(":")
        try:
            n, d = (int(v) for v in shape.split("x"))
        except ValueError:
            raise ValueError(f"--settings: expected NxD[:dtype], got {item!r}") from None
        if n < 2 or d < 2 or (dtype and dtype not in DTYPES):
            raise ValueError(f"--settings: expected N, D >= 2 and dtype in {list(DTYPES)}, got {item!r}")
        out += [(n, d, t) for t in ([dtype] if dtype else ["fp32", "bf16"])]
    if not out:
        raise ValueError("--settings: no setting given")
    return out


def _check_and_time(kernels, x, cfg: dict, ref: tuple, tol: tuple, time_s: float) -> dict:
    """Run one candidate: errors against the float64 reference, then the median time if right."""
    import torch

    from sdecor.benchmarks.common import measure

    n, d = x.shape
    grad = torch.empty_like(x)

    def call():
        return kernels.decorrelation_forward_backward(
            x, (n, d, 1), (x.stride(0), x.stride(1), 0), grad, (grad.stride(0), grad.stride(1), 0),
            correlation=True, mean_reduction=True, correction=1, groups=1, eps=1e-5, config=cfg,
        )  # fmt: skip

    try:
        loss = call().item()
    except Exception as exc:  # a tile that does not compile or does not fit is a finding
        return {"status": f"error: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:100]}"}
    ref_loss, ref_grad = ref
    loss_err = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
    grad_err = ((grad.double() - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30)).item()
    out = {"loss_err": loss_err, "grad_err": grad_err}
    if not (loss_err <= tol[0] and grad_err <= tol[1]):
        return {**out, "status": "wrong"}
    return {**out, "status": "ok", "median_ms": measure(call, x.device, min_time_s=time_s).median_ms}


def tune(settings, candidates, device, time_s: float, budget_s: float) -> list[dict]:
    """One record per setting: ``select_config``'s choice and every candidate's result."""
    import torch

    try:  # installed as sdecor.kernels; a plain checkout has kernels/
        from sdecor.kernels import decorrelation as kernels
    except ImportError:
        from kernels import decorrelation as kernels
    from sdecor.ops import decorrelation_reference

    if device.type == "cpu" and not kernels.INTERPRET:
        raise SystemExit("tune_decorrelation: TRITON_INTERPRET=1 must be set before triton is imported")
    start, records = time.monotonic(), []
    gen = torch.Generator().manual_seed(0)
    for n, d, dtype in settings:
        x = (torch.randn(n, d, generator=gen) + 0.5).to(device=device, dtype=getattr(torch, DTYPES[dtype]))
        x64 = x.double().requires_grad_(True)
        ref_loss = decorrelation_reference(x64)
        (ref_grad,) = torch.autograd.grad(ref_loss, x64)
        default = kernels.select_config(n, d, 1, x.dtype, device)
        rows = []
        for cfg in candidates:
            if time.monotonic() - start > budget_s:
                rows.append({"config": cfg, "status": "not run (budget spent)"})
                continue
            rows.append(
                {"config": cfg, **_check_and_time(kernels, x, cfg, (ref_loss.item(), ref_grad), TOL[dtype], time_s)}
            )
        base = rows[0].get("median_ms") if candidates and not candidates[0] else None
        for row in rows:
            if base and "median_ms" in row:
                row["vs_default"] = base / row["median_ms"]
        records.append(
            {"N": n, "D": d, "dtype": dtype, "route": "D" if n >= d else "N", "default": default, "candidates": rows}
        )
    return records


def format_markdown(records: list[dict], env: dict) -> str:
    lines = [f"# Decorrelation tile candidates on {env['device']}", "", f"Command: `{env['command']}`"]
    lines += [f"torch {env['torch']}, triton {env['triton']}. speed-up = select_config's time / this time."]
    for r in records:
        lines += ["", f"## N={r['N']} D={r['D']} {r['dtype']} (route {r['route']})", ""]
        lines += ["| config | status | loss err | grad err | ms | speed-up |", "|---|---|---|---|---|---|"]
        for c in r["candidates"]:
            cfg = json.dumps(c["config"]) if c["config"] else "select_config"
            err = [f"{c[k]:.1e}" if k in c else "-" for k in ("loss_err", "grad_err")]
            ms = f"{c['median_ms']:.3f}" if "median_ms" in c else "-"
            speedup = f"{c['vs_default']:.2f}x" if "vs_default" in c else "-"
            lines.append(f"| {cfg} | {c['status'].replace('|', '/')} | {err[0]} | {err[1]} | {ms} | {speedup} |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/tune_decorrelation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=None, help="comma list of NxD[:fp32|bf16|fp16] (no dtype: fp32 and bf16)")
    p.add_argument("--candidates", default=None, help="JSON list of config dicts (inline or a file); {} = default")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 3 candidates (CPU: the Triton interpreter)")
    p.add_argument("--device", default=None, choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--time-s", type=float, default=0.2, help="timing seconds per candidate (default 0.2)")
    p.add_argument("--budget-s", type=float, default=600.0, help="candidates left when this is spent are not run")
    p.add_argument("--out", default="bench/results/tune", help="folder for the JSON and Markdown")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings or ",".join(QUICK_SETTINGS if args.quick else SETTINGS))
        text = args.candidates
        candidates = json.loads(Path(text).read_text() if text and Path(text).is_file() else text or "null")
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    candidates = candidates if candidates is not None else (QUICK_CANDIDATES if args.quick else CANDIDATES)
    if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
        parser.error("--candidates must be a JSON list of objects")
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if device.type == "cpu":
        if not args.quick:
            parser.error(
                "no CUDA GPU: tuning times the kernels on one; on CPU only --quick runs "
                "(the Triton interpreter on tiny shapes: a smoke test, not a performance run)"
            )
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    if str(ROOT) not in sys.path:  # a source checkout that is not pip-installed
        sys.path.insert(0, str(ROOT))
    import triton

    from sdecor.benchmarks.runner import device_slug

    command = " ".join(["bench/tune_decorrelation.py", *(sys.argv[1:] if argv is None else argv)])
    env = {"device": device_slug(device), "torch": torch.__version__, "triton": triton.__version__, "command": command}
    records = tune(settings, candidates, device, args.time_s, args.budget_s)
    text = format_markdown(records, env)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"tune-{env['device']}{'-quick' if args.quick else ''}"
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "settings": records}, indent=1))
    (out / f"{stem}.md").write_text(text)
    print(f"saved {out / (stem + '.json')} and {out / (stem + '.md')}")
    ok = any(c["status"] == "ok" for r in records for c in r["candidates"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
