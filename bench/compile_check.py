"""Compile every kernel variant of the fused decorrelation op for a GPU target, without a GPU.

    python bench/compile_check.py --arch 90 --out DIR                  # the target settings
    python bench/compile_check.py --arch 90 --out DIR --settings 256x512:bf16,256x64x8x8:fp32

The op's own host code (``decorrelation_forward_backward``, loss and gradient, correlation mode,
mean reduction) runs on meta tensors with every kernel launch replaced by a compile for
``sm_<arch>`` (a stand-in driver answers the JIT's device queries; nothing is launched), so the
variants compiled are exactly those the settings launch, with the JIT's own specialisation.
For each distinct compiled kernel it writes ``<kernel>-<hash>.ttgir`` and ``.ptx`` to DIR and
prints one table row: registers per thread, spill bytes (stack + local), shared memory, whether
the PTX has wgmma, async copies (``cp.async``) and TMA (``cp.async.bulk.tensor``), whether a
``wgmma.wait_group`` leaves a wgmma in flight (``overlap``: the dot loop issues the next
iteration's work before the previous wgmma completes) and the blocks per SM that registers,
shared memory and threads allow.
Writes ``DIR/compile_check.json`` too. Exit status 1 when a kernel fails to compile or spills,
3 when the compiler is unavailable (no triton, no NVIDIA backend).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, (N, C, *spatial), dtype): N=256 x D in {512, 2048, 8192}, 8192 x 4096, a feature map
TARGETS = [
    (f"{shape}:{dt}", dt)
    for shape in ("256x512", "256x2048", "256x8192", "8192x4096", "256x64x8x8")
    for dt in ("fp32", "bf16")
]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# sm_90 limits per SM (CUDA occupancy rules)
REGS_PER_SM = 65536
SHARED_PER_SM = 233472  # 228 KiB
SHARED_RESERVED = 1024  # per block
MAX_THREADS = 2048
MAX_BLOCKS = 32


def parse_setting(text: str):
    """'256x64x8x8:bf16' -> ((256, 64, 8, 8), 'bf16')."""
    shape, _, dt = text.partition(":")
    dt = dt or "fp32"
    if dt not in DTYPES:
        raise ValueError(f"--settings: dtype {dt!r} is not one of {sorted(DTYPES)}")
    dims = tuple(int(v) for v in shape.lower().split("x"))
    if len(dims) < 2:
        raise ValueError(f"--settings: shape {shape!r} needs at least N x D")
    return dims, dt


def blocks_per_sm(regs: int, num_warps: int, shared: int) -> int:
    """Resident blocks per SM allowed by registers (per-warp allocation in units of 256),
    shared memory and threads."""
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = REGS_PER_SM // (per_warp * num_warps)
    by_threads = MAX_THREADS // (32 * num_warps)
    by_shared = SHARED_PER_SM // (shared + SHARED_RESERVED)
    return max(0, min(by_regs, by_threads, by_shared, MAX_BLOCKS))


def ptx_features(ptx: str) -> dict:
    """wgmma, async copies, TMA, and whether some ``wgmma.wait_group`` leaves a group in flight
    (the dot loop overlaps one wgmma with the next iteration's work) in a PTX text."""
    waits = [int(v) for v in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    return {
        "wgmma": "wgmma.mma_async" in ptx,
        "cp_async": bool(re.search(r"cp\.async\.(ca|cg)\.", ptx)),
        "tma": "cp.async.bulk.tensor" in ptx,
        "wgmma_overlap": (max(waits) > 0) if waits else None,
    }


def resource_usage(cubin: bytes | None) -> dict:
    """REG / STACK / LOCAL of a cubin (``cuobjdump --dump-resource-usage``), {} without the tool."""
    import triton

    try:
        tool = triton.knobs.nvidia.cuobjdump.path
    except Exception:
        tool = None
    if not cubin or not tool or not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=120, check=False
        ).stdout
    return {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text)}


class Unavailable(RuntimeError):
    """The compiler (triton, its NVIDIA backend, or a process without the interpreter) is missing."""


class _StandInDriver:
    """Enough of a triton driver for the JIT to compile (never launch) for one target."""

    def __init__(self, target, torch):
        self.target, self._torch = target, torch

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_device_capability(self, device=None):
        return divmod(self.target.arch, 10)

    def get_active_torch_device(self):
        return self._torch.device("meta")


def _kernel_names(K):
    return [n for n in vars(K) if n.startswith("_") and n.endswith("_kernel")]


@contextlib.contextmanager
def _compiling(K, sm_count: int, on_launch):
    """While the block runs, every kernel launch of ``K`` calls ``on_launch(name, fn, grid, args, kwargs)``."""
    saved = {n: getattr(K, n) for n in _kernel_names(K)}
    saved_sm = K._sm_count

    class Launcher:
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: on_launch(self.name, self.fn, grid, args, kwargs)

    try:
        for n, fn in saved.items():
            setattr(K, n, Launcher(n, fn))
        K._sm_count = lambda device: sm_count
        if hasattr(K, "clear_plan_cache"):
            K.clear_plan_cache()
        yield
    finally:
        for n, fn in saved.items():
            setattr(K, n, fn)
        K._sm_count = saved_sm
        if hasattr(K, "clear_plan_cache"):
            K.clear_plan_cache()


def _run_setting(K, torch, dims, dt, on_launch, sm_count, config=None):
    """The op's host code for one setting on meta tensors (correlation, mean, correction 1)."""
    dtype = getattr(torch, DTYPES[dt])
    x = torch.empty(dims, dtype=dtype, device="meta")
    n_, c_ = dims[0], dims[1]
    s_ = 1
    for v in dims[2:]:
        s_ *= v
    ncs = (n_, c_, s_)
    strides = (x.stride(0), x.stride(1), 1 if len(dims) > 2 else 0)
    grad = torch.empty_like(x)
    with _compiling(K, sm_count, on_launch):
        K.decorrelation_forward_backward(
            x,
            ncs,
            strides,
            grad,
            strides,
            correlation=True,
            mean_reduction=True,
            correction=1,
            groups=1,
            eps=1e-5,
            config=config,
        )


def check(
    settings, arch: int, out: Path | None, sm_count: int = 132, log=print, config: dict | None = None
) -> list[dict]:
    """Compile the kernels of ``settings`` (list of (dims, dtype)) for ``sm_<arch>``, with
    ``config`` passed to the launcher (tile overrides); one dict per distinct compiled kernel
    (keys as in the table, plus ``settings`` that launch it)."""
    os.environ.pop("TRITON_INTERPRET", None)
    try:
        import torch
        from triton.backends.compiler import GPUTarget
        from triton.runtime.driver import driver
    except Exception as exc:  # no triton, or no NVIDIA backend in it
        raise Unavailable(f"triton's compiler is not usable here: {type(exc).__name__}: {exc}") from exc

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from sdecor.kernels import decorrelation as K
    except ImportError:
        from kernels import decorrelation as K
    if K.INTERPRET:
        raise Unavailable("compile checks need a process where triton was imported without TRITON_INTERPRET=1")
    driver.set_active(_StandInDriver(GPUTarget("cuda", arch, 32), torch))
    rows: dict[str, dict] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for dims, dt in settings:
        label = "x".join(map(str, dims)) + ":" + dt

        def on_launch(name, fn, grid, args, kwargs, label=label):
            try:
                compiled = fn.run(*args, grid=grid, warmup=True, **kwargs)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                rows.setdefault(
                    f"{name}-error-{len(rows)}", {"kernel": name, "error": f"{type(exc).__name__}: {first}"}
                )["settings"] = [label]
                return
            key = f"{name.strip('_')}-{compiled.hash[:10]}"
            if key in rows:
                rows[key]["settings"].append(label)
                return
            ttgir, ptx = compiled.asm.get("ttgir", ""), compiled.asm.get("ptx", "")
            if out is not None:
                (out / f"{key}.ttgir").write_text(ttgir)
                (out / f"{key}.ptx").write_text(ptx)
            use = resource_usage(compiled.asm.get("cubin"))
            nw = kwargs.get("num_warps", 4)
            shared = int(getattr(compiled.metadata, "shared", 0) or 0)
            consts = {k: str(v) for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
            row = {
                "kernel": name.strip("_"),
                "file": key,
                "num_warps": nw,
                "num_stages": kwargs.get("num_stages"),
                "constexprs": consts,
                "regs": use.get("reg"),
                "spill_bytes": (use.get("stack", 0) + use.get("local", 0)) if use else None,
                "shared": shared,
                **ptx_features(ptx),
                "settings": [label],
            }
            row["blocks_per_sm"] = blocks_per_sm(row["regs"] or 0, nw, shared) if use else None
            rows[key] = row

        log(f"compiling {label} ...")
        _run_setting(K, torch, dims, dt, on_launch, sm_count, config)
    result = list(rows.values())
    if out is not None:
        (out / "compile_check.json").write_text(json.dumps(result, indent=1))
    return result


def _yn(v):
    return "-" if v is None else ("yes" if v is True else ("no" if v is False else str(v)))


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`check`'s rows."""
    head = (
        "| kernel | variant | warps | stages | regs | spill B | smem B | wgmma | cp.async | TMA | overlap "
        "| blocks/SM | settings |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kernel']} | ERROR: {r['error']} |" + " |" * 10 + f" {', '.join(r['settings'])} |")
            continue
        c = r["constexprs"]
        keys = [k for k in c if k.startswith("BLOCK") or k in ("ROUTE_N", "ATOMIC", "RAW_B", "ROW_LOOP", "PASS")]
        variant = " ".join(f"{k}={c[k]}" for k in keys)
        lines.append(
            f"| {r['kernel']} | {variant} | {r['num_warps']} | {_yn(r['num_stages'])} | {_yn(r['regs'])} | "
            f"{_yn(r['spill_bytes'])} | {r['shared']} | {_yn(r['wgmma'])} | {_yn(r['cp_async'])} | {_yn(r['tma'])} | "
            f"{_yn(r['wgmma_overlap'])} | {_yn(r['blocks_per_sm'])} | {', '.join(sorted(set(r['settings'])))} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/compile_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default 90)")
    p.add_argument("--out", default=None, help="folder for the .ttgir/.ptx files and compile_check.json")
    p.add_argument(
        "--settings",
        default=None,
        help="comma list of NxD[xHxW][:fp32|fp16|bf16] (default: the target settings, fp32 and bf16)",
    )
    p.add_argument("--sm-count", type=int, default=132, help="SM count the launch plan assumes (default 132)")
    p.add_argument("--config", default=None, help="JSON object passed as config= (select_config overrides)")
    args = p.parse_args(argv)
    config = json.loads(args.config) if args.config else None
    settings = [parse_setting(s) for s in (args.settings.split(",") if args.settings else [t for t, _ in TARGETS])]
    try:
        rows = check(settings, args.arch, Path(args.out) if args.out else None, args.sm_count, lambda m: None, config)
    except Unavailable as exc:
        print(f"compile check unavailable: {exc}")
        return 3
    print(table(rows))
    bad = [r for r in rows if "error" in r or r.get("spill_bytes")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
