"""Tuning sweep of the fused decorrelation kernels' tile sizes at issue 7's target settings.

The Triton kernels (``kernels/decorrelation.py``) take fixed heuristic tiles from
``select_config`` and merge ``CONFIG_OVERRIDE`` over them on every call. This module searches
overrides of that choice, one device call's worth, for forward + backward of
``decorrelation_loss(x, backend="triton")`` (correlation, mean, correction 1, one group) on an
(N, D) input that requires grad, at the target sizes ``decorrelation.TARGET_SIZES`` in fp32 and
bf16 (:data:`TARGET_SETTINGS`).

Candidates. An override changes one *part* of the configuration (the kernels it touches):

* ``gram``: ``gram_block``, ``gram_block_r``, ``gram_warps``, ``gram_split`` (the Gram kernel and,
  when split, its finish kernel);
* ``grad``: ``grad_block_m/_n/_j``, ``grad_warps`` (+ ``kz_row_loop`` in route N: ``_kz_kernel`` and
  ``_finish_n_kernel``; route D: ``_grad_d_kernel``);
* ``stats``: ``stats_block_k/_c``, ``stats_split`` (the column statistics);
* ``stages``: ``num_stages`` (shared by the Gram and gradient kernels).

:func:`generate_candidates` enumerates each part's grid (:data:`SPACE`), drops overrides whose
launches equal the default's or another candidate's (the launch plan is recorded by running the
host code on ``meta`` tensors: no device, no compilation), and orders them: every single-key
change first, then the rest by :func:`predicted_us`, a crude roofline (waves x per-program dot
work at an assumed per-SM rate, + launch latency) that is only an ordering heuristic.

Pruning without a GPU. :func:`check_candidates` compiles every candidate's kernels for sm_90
(``triton.compile`` through the JIT's own specialisation, with a stand-in driver that reports a
``GPUTarget``, in spawned worker processes without ``TRITON_INTERPRET``) and reads each cubin's
resource usage with ``cuobjdump --dump-resource-usage``: a kernel with a stack frame / local
memory (register spills), more than 227 KiB of shared memory, or a compile error rejects the
candidate. :func:`prune` writes the survivors, in search order, to ``tuning_candidates.json``
next to this file (:data:`DATA_PATH`; made with triton 3.6.0, the GPU machine's, for 132 SMs);
``bench/tune_decorrelation.py --prune-only`` regenerates it. The sweep uses a fresh list (minus
the rejected candidates) when ``select_config``'s default or the SM count differs from the file's.

The sweep (:func:`sweep`), per setting, within a time budget split fairly between the settings
(time a setting leaves unused passes to the next ones): the heuristic default first, then
candidates alternating between the parts (gram, grad, stages, gram, grad, stats, ...); once a part's
single-key changes are measured, its remaining candidates are re-ordered by the sum of their
keys' measured single-key gains; the best fragments of the parts are then combined. Each
candidate is first checked against the float64 reference (loss and gradient, the tolerances of
``tests/test_decorrelation_triton.py``; wrong ones are rejected), then timed with CUDA events
(median of repeated calls after warm-up, ``per_candidate_s`` each). A candidate that fails to
compile or launch is recorded as an error, never fatal (a lost CUDA context ends the sweep,
with what was measured written out). Last, the default and the (up to) 3 fastest candidates
are timed again in alternating rounds (``common.measure_interleaved``), with the context (eager
reference, cuBLAS ``matmul_floor``, optionally ``torch.compile``): the winner and every ratio
come from these paired rounds. On CUDA a pool of worker processes compiles the next candidates
ahead of the timing loop into triton's cache (same cache keys as the JIT), and its resource
report rejects spilling candidates before they are timed (the search timings run beside that
compiling, hence the paired rounds at the end, when the pool is idle).

Without CUDA (``quick``) the sweep runs under the Triton interpreter on tiny shapes with a few
hand-picked candidates: it exercises the code path, it is **not** a performance run.

Adopting a winner: ``CONFIG_OVERRIDE`` applies one override to every shape, so it only suits a
run at one setting; :func:`tuned_select_config` installs each setting's winner for its own shape
at run time; for good, ``select_config`` is edited (see docs/gpu_validation.md).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import inspect
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "DATA_PATH",
    "QUICK_CANDIDATES",
    "QUICK_SETTINGS",
    "SPACE",
    "TARGET_SETTINGS",
    "TOLERANCE",
    "Candidate",
    "Setting",
    "check_candidates",
    "default_config",
    "format_markdown",
    "generate_candidates",
    "kernels_module",
    "launch_plan",
    "load_candidates",
    "parse_settings",
    "predicted_us",
    "prune",
    "sweep",
    "tuned_select_config",
    "validate_candidate_data",
    "dumps_candidate_data",
    "write_results",
]

DATA_PATH = Path(__file__).with_name("tuning_candidates.json")
AUTO = "auto"  # a value of SPACE meaning "leave the key to select_config"
PARTS = ("gram", "grad", "stats", "stages")
#: (loss rtol, gradient rtol) per dtype: tests/test_decorrelation_triton.py's GPU_TOL (the
#: elementwise check is 10x the gradient's, relative to the largest entry, as there)
TOLERANCE = {"fp32": (1e-5, 1e-4), "fp16": (5e-3, 1e-2), "bf16": (3e-2, 3e-2)}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2}
#: sm_90's largest shared memory per block (227 KiB)
MAX_SHARED_SM90 = 232448
DEFAULT_SM_COUNT = 132  # H100 SXM and H200
DEFAULT_TARGET = ("cuda", 90, 32)
PARTS_WINDOW = 6  # candidates per part submitted to the compile pool ahead of the timing loop
PAIRED_FINALISTS = 3  # the fastest candidates re-timed against the default in alternating rounds
MIN_SETTING_S = 5.0  # a GPU setting is not started with less time left (reference + default + paired)

#: the grid of each part (``stages``: num_stages, shared by the Gram and gradient dot kernels)
SPACE = {
    "gram": {
        "gram_block": (32, 64, 128),
        "gram_block_r": (16, 32, 64, 128),
        "gram_warps": (4, 8),
        "gram_split": (AUTO, 1, 2, 4, 8, 16, 32),
    },
    "grad:D": {
        "grad_block_m": (64, 128, 256),
        "grad_block_n": (64, 128, 256),
        "grad_block_j": (16, 32, 64),
        "grad_warps": (4, 8),
    },
    "grad:N": {
        "grad_block_m": (32, 64, 128),
        "grad_block_n": (32, 64, 128, 256),
        "grad_block_j": (16, 32, 64),
        "grad_warps": (4, 8),
        "kz_row_loop": (True, False),
    },
    "stats": {"stats_block_k": (32, 64, 128), "stats_block_c": (32, 64, 128), "stats_split": (AUTO, 1, 2, 8)},
    "stages": {"num_stages": (2, 3, 4)},
}
#: candidates kept per part and setting (single-key changes always come first)
MAX_PER_PART = {"gram": 64, "grad": 64, "stats": 10, "stages": 2}


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Setting:
    """One (N, D) input in one dtype (``"fp32"``, ``"bf16"`` or ``"fp16"``)."""

    n: int
    d: int
    dtype: str

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.n < 2 or self.d < 2:
            raise ValueError(f"N and D must be >= 2, got N={self.n} D={self.d}")

    @property
    def name(self) -> str:
        return f"N{self.n}-D{self.d}-{self.dtype}"

    @property
    def route(self) -> str:
        """``"D"`` (D x D Gram, n >= g) or ``"N"`` (n x n Gram)."""
        return "D" if self.n >= self.d else "N"

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def _target_settings() -> list[Setting]:
    from .decorrelation import TARGET_SIZES

    return [Setting(n, d, dt) for n, d in TARGET_SIZES for dt in ("fp32", "bf16")]


TARGET_SETTINGS = _target_settings()
#: interpreter stand-ins: route N in fp32, route D in bf16
QUICK_SETTINGS = [Setting(24, 40, "fp32"), Setting(40, 24, "bf16")]


def parse_settings(text: str) -> list[Setting]:
    """Settings from ``"256x512:fp32,8192x4096"`` (no dtype: fp32 and bf16) or names like
    ``"N256-D512-bf16"``; raises ValueError naming ``settings`` on anything else."""
    out: list[Setting] = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)x(\d+)(?::(\w+))?", item) or re.fullmatch(r"N(\d+)-D(\d+)-(\w+)", item)
        if m is None:
            raise ValueError(f"settings: cannot read {item!r} (expected NxD, NxD:dtype or N<n>-D<d>-<dtype>)")
        dtypes = (m.group(3),) if m.group(3) else ("fp32", "bf16")
        for dt in dtypes:
            if dt not in _DTYPES:
                raise ValueError(f"settings: unknown dtype {dt!r} in {item!r}; expected one of {sorted(_DTYPES)}")
            s = Setting(int(m.group(1)), int(m.group(2)), dt)
            if s not in out:
                out.append(s)
    if not out:
        raise ValueError("settings: no setting given")
    return out


# ------------------------------------------------------------------------------------ candidates


@dataclass
class Candidate:
    """An override of ``select_config`` touching one ``part`` (or ``"combo"`` / ``"default"``).
    ``level``: number of keys changed; ``prior_us``: :func:`predicted_us` of its launches."""

    part: str
    override: dict
    level: int = 0
    prior_us: float | None = None

    @property
    def key(self) -> str:
        return json.dumps(self.override, sort_keys=True)

    def to_dict(self) -> dict:
        d = {"part": self.part, "override": self.override, "level": self.level}
        if self.prior_us is not None:
            d["prior_us"] = round(self.prior_us, 2)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(d["part"], dict(d["override"]), int(d.get("level", len(d["override"]))), d.get("prior_us"))


#: interpreter candidates for quick runs (the interpreter's default tiles are 32)
QUICK_CANDIDATES = [
    Candidate("gram", {"gram_block": 16, "gram_block_r": 16}, 2),
    Candidate("grad", {"grad_block_m": 16, "grad_block_n": 16, "grad_block_j": 16}, 3),
    Candidate("gram", {"gram_split": 2}, 1),
]


def kernels_module():
    """The kernels module the Triton backend calls (``sdecor.kernels.decorrelation``); raises
    RuntimeError when triton is not importable."""
    from ..ops.decorrelation import triton as DT

    if DT._kernels is None:
        raise RuntimeError(f"the Triton kernels are not importable ({DT._IMPORT_ERROR})")
    return DT._kernels


def _part_of(route: str, part: str) -> str:
    return f"grad:{route}" if part == "grad" else part


class _Launcher:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` calls ``on_launch``."""

    def __init__(self, name, fn, on_launch):
        self.name, self.fn, self.on_launch = name, fn, on_launch

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.on_launch(self.name, self.fn, grid, args, kwargs)


@contextlib.contextmanager
def _patched_kernels(K, sm_count: int, override: dict, on_launch):
    """While the block runs: every kernel of ``K`` launches through ``on_launch``, the SM count is
    ``sm_count``, ``select_config`` picks the GPU tiles (even under the interpreter) and
    ``CONFIG_OVERRIDE`` is ``override``. Everything is restored afterwards."""
    names = [n for n in vars(K) if n.startswith("_") and n.endswith("_kernel")]
    saved = {n: getattr(K, n) for n in names}
    saved_sm, saved_select, saved_override = K._sm_count, K.select_config, dict(K.CONFIG_OVERRIDE)
    try:
        for n in names:
            setattr(K, n, _Launcher(n, saved[n], on_launch))
        K._sm_count = lambda device: sm_count
        K.select_config = functools.partial(saved_select, interpret=False)
        K.CONFIG_OVERRIDE.clear()
        K.CONFIG_OVERRIDE.update(override)
        yield
    finally:
        for n, fn in saved.items():
            setattr(K, n, fn)
        K._sm_count, K.select_config = saved_sm, saved_select
        K.CONFIG_OVERRIDE.clear()
        K.CONFIG_OVERRIDE.update(saved_override)


def _arg_names(fn) -> list[str]:
    return list(inspect.signature(getattr(fn, "fn", fn)).parameters)


def _plain(v):
    return v if isinstance(v, (bool, int, float, str, type(None))) else str(v)


def _run_host(setting: Setting, K, sm_count: int, override: dict, on_launch) -> None:
    """Run the op's host code (``decorrelation_triton._forward``, loss and gradient) on meta tensors."""
    from ..ops.decorrelation import triton as DT

    x = torch.empty(setting.n, setting.d, device="meta", dtype=setting.torch_dtype)
    with _patched_kernels(K, sm_count, override, on_launch):
        DT._forward(x, "correlation", "mean", 1, 1, 1e-5, True)


def launch_plan(setting: Setting, override: dict | None = None, sm_count: int = DEFAULT_SM_COUNT) -> list[dict]:
    """The kernel launches of one forward + backward under ``override``, on a GPU with ``sm_count``
    SMs, recorded without a device: per launch ``kernel``, ``grid``, ``num_warps``, ``num_stages``,
    ``constexprs`` and ``ints`` (the integer arguments). Raises what the host code raises."""
    K = kernels_module()
    plan: list[dict] = []

    def record(name, fn, grid, args, kwargs):
        ints = {a: v for a, v in zip(_arg_names(fn), args) if isinstance(v, int) and not isinstance(v, bool)}
        consts = {k: _plain(v) for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
        plan.append(
            {
                "kernel": name,
                "grid": [int(g) for g in grid],
                "num_warps": kwargs.get("num_warps"),
                "num_stages": kwargs.get("num_stages"),
                "constexprs": consts,
                "ints": ints,
            }
        )

    _run_host(setting, K, sm_count, dict(override or {}), record)
    return plan


def default_config(setting: Setting, sm_count: int = DEFAULT_SM_COUNT) -> dict:
    """``select_config``'s GPU choice for ``setting`` on a GPU with ``sm_count`` SMs."""
    K = kernels_module()
    with _patched_kernels(K, sm_count, {}, lambda *a: None):
        return K.select_config(setting.n, setting.d, 1, setting.torch_dtype, torch.device("meta"))


# crude per-SM rates (an ordering heuristic only): mma.sync at ~60% of an H100's dense peak
_MAC_PER_US = {"bf16": 2.2e6, "fp16": 2.2e6, "fp32": 0.37e6}  # fp32: 3xTF32
_BYTES_PER_US_PER_SM = 3.0e6 / DEFAULT_SM_COUNT
_LAUNCH_US = 4.0
_ITER_US = 0.3  # one dependent step of a dot loop (load latency partly hidden by the prefetch)


def predicted_us(setting: Setting, plan: list[dict], sm_count: int = DEFAULT_SM_COUNT) -> float:
    """Crude time estimate of a launch plan, in microseconds: per launch, a launch latency plus
    waves x (per-program dot work at an assumed per-SM rate, scaled down for small tiles, or a
    per-iteration latency floor; memory kernels: bytes at the per-SM share of 3 TB/s). Used only
    to order candidates; a GPU's timings decide."""
    n, d, elt = setting.n, setting.d, _ELEMENT[setting.dtype]
    rate = _MAC_PER_US[setting.dtype]
    route_n = setting.route == "N"
    L = n if route_n else d

    def dot_us(macs, a, b, iters):
        eff = min(1.0, a * b / 16384.0) ** 0.5
        return max(macs / (rate * eff), iters * _ITER_US)

    total = 0.0
    for launch in plan:
        c, ints, k = launch["constexprs"], launch["ints"], launch["kernel"]
        programs = math.prod(launch["grid"])
        warps = launch["num_warps"] or 4
        waves = math.ceil(programs / (sm_count * (1 if warps >= 8 else 2)))
        if k == "_gram_kernel":
            R = d if route_n else n
            chunk = min(ints.get("chunk", R), R)
            per = dot_us(c["BLOCK"] ** 2 * chunk, c["BLOCK"], c["BLOCK"], chunk / c["BLOCK_R"])
        elif k == "_grad_d_kernel":
            per = dot_us(c["BLOCK_M"] * c["BLOCK_N"] * d, c["BLOCK_M"], c["BLOCK_N"], d / c["BLOCK_J"])
        elif k == "_kz_kernel":
            rows = n if c["ROW_LOOP"] else c["BLOCK_M"]
            per = dot_us(
                rows * c["BLOCK_F"] * n, min(c["BLOCK_M"], n), c["BLOCK_F"], (rows / c["BLOCK_M"]) * (n / c["BLOCK_L"])
            )
            if c["ROW_LOOP"]:  # second pass over its columns of the gradient
                per += 3 * rows * c["BLOCK_F"] * elt / _BYTES_PER_US_PER_SM
        else:
            moved = {
                "_col_stats_kernel": 2 * n * d * elt,
                "_gram_finish_kernel": 8 * L * L,
                "_finish_n_kernel": 3 * n * d * elt,
            }.get(k, 0)
            per = moved / max(programs, 1) / _BYTES_PER_US_PER_SM
        total += _LAUNCH_US + waves * per
    return total


def _plan_key(plan: list[dict]) -> str:
    return json.dumps(plan, sort_keys=True)


def generate_candidates(
    setting: Setting, sm_count: int = DEFAULT_SM_COUNT, max_per_part: dict | None = None
) -> list[Candidate]:
    """Every part's candidates for ``setting`` (see the module doc): overrides of one part's keys,
    distinct launch plans only, each part's single-key changes first and then the rest by
    :func:`predicted_us`, at most ``max_per_part[part]`` per part (:data:`MAX_PER_PART`)."""
    limits = {**MAX_PER_PART, **(max_per_part or {})}
    base = default_config(setting, sm_count)
    seen = {_plan_key(launch_plan(setting, {}, sm_count))}
    out: list[Candidate] = []
    for part in PARTS:
        space = SPACE[_part_of(setting.route, part)]
        keys = list(space)
        found: list[Candidate] = []
        for values in itertools.product(*(space[k] for k in keys)):
            override = {}
            for k, v in zip(keys, values):
                if v == AUTO:
                    continue
                if k in base and base[k] == v:
                    continue
                override[k] = v
            if not override:
                continue
            try:
                plan = launch_plan(setting, override, sm_count)
            except Exception:  # the host code refuses it: not a candidate
                continue
            pk = _plan_key(plan)
            if pk in seen:
                continue
            seen.add(pk)
            found.append(Candidate(part, override, len(override), predicted_us(setting, plan, sm_count)))
        # single-key changes first; then by the estimate, the fewer keys changed among equals
        found.sort(key=lambda c: (c.level > 1, round(c.prior_us, 1), c.level))
        out.extend(found[: limits.get(part, len(found))])
    return out


# ------------------------------------------------------------------------------------ compile checks (no GPU needed)


class _StandInDriver:
    """Enough of a triton driver for the JIT to compile (never launch) for ``target``."""

    def __init__(self, target):
        self.target = target

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
        return torch.device("meta")


_WORKER: dict = {}


def _worker_init(target: tuple, sm_count: int) -> None:
    """Worker process: compile (through the JIT) for ``target`` without a GPU or the interpreter."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton  # noqa: F401  (first import in this process: the interpreter stays off)
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    driver.set_active(_StandInDriver(GPUTarget(*target)))
    K = kernels_module()
    if K.INTERPRET:
        raise RuntimeError("compile checks need a process without TRITON_INTERPRET=1")
    _WORKER.update(K=K, sm_count=sm_count, usage={})


def _cuobjdump() -> str | None:
    try:
        import triton

        path = triton.knobs.nvidia.cuobjdump.path
    except Exception:
        from shutil import which

        path = which("cuobjdump")
    return path if path and os.path.exists(path) else None


def _resource_usage(kernel) -> dict:
    """REG / STACK / LOCAL / SHARED of a compiled kernel's cubin (``cuobjdump``), cached by hash."""
    cache = _WORKER.setdefault("usage", {})
    h = getattr(kernel, "hash", None)
    if h in cache:
        return cache[h]
    usage: dict = {"shared": int(getattr(kernel.metadata, "shared", 0) or 0)}
    tool = _cuobjdump()
    cubin = kernel.asm.get("cubin") if hasattr(kernel, "asm") else None
    if tool and cubin:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            text = subprocess.run(
                [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=60, check=False
            ).stdout
        for field_, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text):
            usage[field_.lower()] = int(value)
    if h is not None:
        cache[h] = usage
    return usage


def _compile_task(setting: tuple, override: dict) -> dict:
    """Worker task: compile every kernel one forward + backward of ``setting`` launches under
    ``override``; returns ``{"ok", "reason", "seconds", "kernels": [{kernel, regs, stack, local,
    shared, error}]}``. ``ok`` is False on a compile error, a stack frame or local memory
    (spills), or shared memory over sm_90's 227 KiB."""
    K, sm_count = _WORKER["K"], _WORKER["sm_count"]
    s = Setting(*setting)
    kernels: list[dict] = []
    t0 = time.perf_counter()

    def compile_one(name, fn, grid, args, kwargs):
        entry: dict = {"kernel": name, "num_warps": kwargs.get("num_warps"), "num_stages": kwargs.get("num_stages")}
        try:
            compiled = fn.run(*args, grid=grid, warmup=True, **kwargs)
            entry.update(_resource_usage(compiled))
        except Exception as exc:  # out of resources, ptxas or MLIR failure: a rejected candidate
            entry["error"] = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
            )
        kernels.append(entry)

    try:
        _run_host(s, K, sm_count, dict(override), compile_one)
    except Exception as exc:
        return {
            "ok": False,
            "reason": f"host: {type(exc).__name__}: {exc}",
            "seconds": time.perf_counter() - t0,
            "kernels": kernels,
        }
    reasons = []
    for e in kernels:
        if "error" in e:
            reasons.append(f"{e['kernel']} does not compile ({e['error']})")
        elif e.get("stack", 0) or e.get("local", 0):
            reasons.append(
                f"{e['kernel']} spills ({e.get('stack', 0)} B stack, {e.get('local', 0)} B local, {e.get('reg', '?')} regs)"
            )
        elif e.get("shared", 0) > MAX_SHARED_SM90:
            reasons.append(f"{e['kernel']} needs {e['shared']} B of shared memory (sm_90: {MAX_SHARED_SM90})")
    return {
        "ok": not reasons,
        "reason": "; ".join(dict.fromkeys(reasons)),
        "seconds": time.perf_counter() - t0,
        "kernels": kernels,
    }


def _spawn_pool(workers: int, target: tuple, sm_count: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(tuple(target), int(sm_count)),
    )


def check_candidates(
    jobs: list[tuple[Setting, Candidate]],
    workers: int = 2,
    target: tuple = DEFAULT_TARGET,
    sm_count: int = DEFAULT_SM_COUNT,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Compile each (setting, candidate)'s kernels for ``target`` (default sm_90) in ``workers``
    spawned processes (no GPU, no interpreter) and return :func:`_compile_task`'s report per job,
    in order. A worker that dies marks its jobs as failed compile checks."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    reports: list[dict] = [None] * len(jobs)  # type: ignore[list-item]
    with _spawn_pool(workers, target, sm_count) as pool:
        futures = {pool.submit(_compile_task, (s.n, s.d, s.dtype), c.override): i for i, (s, c) in enumerate(jobs)}
        from concurrent.futures import as_completed

        done = 0
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                reports[i] = fut.result()
            except Exception as exc:
                reports[i] = {
                    "ok": False,
                    "reason": f"compile worker failed: {type(exc).__name__}: {exc}",
                    "kernels": [],
                }
            done += 1
            if progress and (done % 25 == 0 or done == len(jobs)):
                progress(f"compiled {done}/{len(jobs)}")
    return reports


def prune(
    settings: list[Setting] | None = None,
    workers: int = 2,
    sm_count: int = DEFAULT_SM_COUNT,
    target: tuple = DEFAULT_TARGET,
    max_per_part: dict | None = None,
    out: str | os.PathLike | None = DATA_PATH,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Generate every setting's candidates, compile them for ``target`` and keep those that
    compile without spills; returns the data (and writes it to ``out`` unless None)."""
    import triton

    settings = list(settings or TARGET_SETTINGS)
    t0 = time.perf_counter()
    per_setting = {s.name: generate_candidates(s, sm_count, max_per_part) for s in settings}
    jobs = [(s, c) for s in settings for c in per_setting[s.name]]
    jobs += [(s, Candidate("default", {}, 0)) for s in settings]
    if progress:
        progress(f"prune: {len(jobs)} compile checks ({len(settings)} settings) with {workers} workers")
    reports = check_candidates(jobs, workers, target, sm_count, progress)
    data: dict = {
        "about": "decorrelation kernel tuning candidates that compile for sm_90 without register spills "
        "(sdecor.benchmarks.tuning.prune); the sweep tries them in this order",
        "triton": triton.__version__,
        "target": list(target),
        "sm_count": sm_count,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "space": {p: {k: list(v) for k, v in sp.items()} for p, sp in SPACE.items()},
        "max_per_part": {**MAX_PER_PART, **(max_per_part or {})},
        "seconds": None,
        "settings": {},
    }
    by_job = dict(zip(((s.name, c.key) for s, c in jobs), reports))
    for s in settings:
        kept, rejected = [], []
        default_report = by_job[(s.name, "{}")]
        for c in per_setting[s.name]:
            rep = by_job[(s.name, c.key)]
            if rep["ok"]:
                kept.append(c.to_dict())
            else:
                rejected.append({**c.to_dict(), "reason": rep["reason"]})
        data["settings"][s.name] = {
            "n": s.n,
            "d": s.d,
            "dtype": s.dtype,
            "route": s.route,
            "default": default_config(s, sm_count),
            "default_check": "ok" if default_report["ok"] else default_report["reason"],
            "generated": len(per_setting[s.name]),
            "survived": len(kept),
            "candidates": kept,
            "rejected": rejected,
        }
    data["seconds"] = round(time.perf_counter() - t0, 1)
    if out is not None:
        Path(out).write_text(dumps_candidate_data(data))
    return data


def dumps_candidate_data(data: dict) -> str:
    """JSON text of pruned candidate data with one candidate per line (compact, diff-friendly)."""
    head = json.dumps({k: v for k, v in data.items() if k != "settings"}, indent=1, default=_plain)
    entries = []
    for name, entry in data["settings"].items():
        meta = json.dumps({k: v for k, v in entry.items() if k not in ("candidates", "rejected")}, default=_plain)
        lists = [
            f'"{group}": [' + ",".join("\n   " + json.dumps(c, default=_plain) for c in entry[group]) + "]"
            for group in ("candidates", "rejected")
        ]
        entries.append(f"  {json.dumps(name)}: {meta[:-1]},\n  " + ",\n  ".join(lists) + "}")
    text = head[:-2] + ',\n "settings": {\n' + ",\n".join(entries) + "\n }\n}\n"
    if json.loads(text) != json.loads(json.dumps(data, default=_plain)):
        raise AssertionError("dumps_candidate_data does not round-trip")  # a bug here, not in the data
    return text


def load_candidates(path: str | os.PathLike = DATA_PATH) -> dict:
    """The pruned candidate data (see :func:`prune`); raises FileNotFoundError with the command
    that regenerates it, ValueError when it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; regenerate it with `python bench/tune_decorrelation.py --prune-only`"
        )
    data = json.loads(path.read_text())
    validate_candidate_data(data)
    return data


def validate_candidate_data(data: dict) -> None:
    """Raise ValueError naming the problem unless ``data`` is well-formed pruned candidate data:
    known parts, overrides over keys of that part's space with values from it, survivors and
    rejects disjoint, counts consistent."""
    if not isinstance(data, dict):
        raise TypeError(f"candidate data must be a dict, got {type(data).__name__}")
    if not isinstance(data.get("settings"), dict):
        raise ValueError("candidate data must have a 'settings' dict")
    for name, entry in data["settings"].items():
        s = Setting(entry["n"], entry["d"], entry["dtype"])
        if s.name != name:
            raise ValueError(f"candidate data: setting {name!r} holds {s.name}")
        keys_seen = set()
        for group in ("candidates", "rejected"):
            for c in entry[group]:
                part = c.get("part")
                if part not in PARTS:
                    raise ValueError(f"candidate data {name}: unknown part {part!r}")
                space = SPACE[_part_of(s.route, part)]
                if not c["override"]:
                    raise ValueError(f"candidate data {name}: empty override")
                for k, v in c["override"].items():
                    if k not in space or v not in space[k]:
                        raise ValueError(f"candidate data {name}: {k}={v!r} is not in the {part} space")
                if group == "rejected" and not c.get("reason"):
                    raise ValueError(f"candidate data {name}: a rejected candidate without a reason")
                key = json.dumps(c["override"], sort_keys=True)
                if key in keys_seen:
                    raise ValueError(f"candidate data {name}: {key} listed twice")
                keys_seen.add(key)
        if entry.get("survived") != len(entry["candidates"]) or entry.get("generated") != len(
            entry["candidates"]
        ) + len(entry["rejected"]):
            raise ValueError(f"candidate data {name}: counts do not match the lists")


def _runtime_candidates(setting: Setting, data: dict | None, sm_count: int) -> tuple[list[Candidate], str]:
    """(candidates to try, where they came from): the pruned list when it was made for this SM
    count, else a fresh list without the candidates the pruning rejected."""
    entry = (data or {}).get("settings", {}).get(setting.name)
    current = {k: _plain(v) for k, v in default_config(setting, sm_count).items()}
    if entry is not None and data.get("sm_count") == sm_count and entry.get("default") == current:
        return [
            Candidate.from_dict(c) for c in entry["candidates"]
        ], f"pruned list ({len(entry['candidates'])} of {entry['generated']})"
    rejected = {json.dumps(c["override"], sort_keys=True) for c in (entry or {}).get("rejected", [])}
    fresh = [c for c in generate_candidates(setting, sm_count) if c.key not in rejected]
    if entry is None:
        why = "no pruned list for this setting"
    elif data.get("sm_count") != sm_count:
        why = f"pruned for {data.get('sm_count')} SMs, this GPU has {sm_count}"
    else:
        why = "select_config changed since the pruning"
    return fresh, f"generated here ({why}; compile-checked by the pool if it runs)"


# ------------------------------------------------------------------------------------ the sweep


class _ContextLost(RuntimeError):
    """The CUDA context is unusable (e.g. an illegal memory access): no further measurement."""


def _data(setting: Setting, device: torch.device, seed: int = 41) -> torch.Tensor:
    """The tests' inputs: randn * 2 + offset (100 for 16-bit dtypes, 3 for fp32), in the dtype."""
    gen = torch.Generator().manual_seed(seed)
    offset = 3.0 if setting.dtype == "fp32" else 100.0
    x = torch.randn(setting.n, setting.d, generator=gen, dtype=torch.float64) * 2.0 + offset
    return x.to(device=device, dtype=setting.torch_dtype)


@contextlib.contextmanager
def _override(K, override: dict):
    saved = dict(K.CONFIG_OVERRIDE)
    K.CONFIG_OVERRIDE.clear()
    K.CONFIG_OVERRIDE.update(override)
    try:
        yield
    finally:
        K.CONFIG_OVERRIDE.clear()
        K.CONFIG_OVERRIDE.update(saved)


def _loss_and_grad(x: torch.Tensor):
    from .decorrelation import _triton_loss

    loss = _triton_loss(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss, grad


def _errors(loss, grad, ref_loss, ref_grad) -> dict:
    """Relative errors as the tests compute them: loss, gradient norm, largest entry."""
    g = grad.detach().to(torch.float64)
    finite = bool(torch.isfinite(loss).item()) and bool(torch.isfinite(g).all().item())
    value, ref = float(loss.detach()), float(ref_loss)
    return {
        "finite": finite,
        "loss_err": abs(value - ref) / max(abs(ref), 1e-30),
        "loss_abs_err": abs(value - ref),
        "ref_loss": ref,
        "grad_err": float((g - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30)),
        "max_err": float((g - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-30)),
    }


def _within(err: dict, tol: tuple[float, float]) -> bool:
    """The tests' check: loss within rtol (or 1e-12 absolute), gradient norm error < rtol,
    largest entry error < 10 rtol of the largest entry, everything finite."""
    loss_rtol, grad_rtol = tol
    return (
        err["finite"]
        and err["loss_abs_err"] <= max(loss_rtol * abs(err["ref_loss"]), 1e-12)
        and err["grad_err"] < grad_rtol
        and err["max_err"] < 10 * grad_rtol
    )


def _health(device: torch.device) -> None:
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
        except Exception as exc:
            raise _ContextLost(f"CUDA context lost: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from exc


class _Precompiler:
    """Worker processes compiling candidates ahead of the timing loop into triton's cache (the JIT
    then loads them), with their resource reports; disabled after any pool failure."""

    def __init__(self, workers: int, target: tuple, sm_count: int, log):
        self.log = log
        self.futures: dict = {}
        self.pool = None
        try:
            self.pool = _spawn_pool(workers, target, sm_count)
        except Exception as exc:
            log(f"precompile pool not started ({type(exc).__name__}: {exc}); compiling in-process")

    def submit(self, setting: Setting, cand: Candidate) -> None:
        key = (setting.name, cand.key)
        if self.pool is None or key in self.futures:
            return
        try:
            self.futures[key] = self.pool.submit(_compile_task, (setting.n, setting.d, setting.dtype), cand.override)
        except Exception as exc:
            self._disable(exc)

    def report(self, setting: Setting, cand: Candidate, timeout: float) -> dict | None:
        fut = self.futures.get((setting.name, cand.key))
        if fut is None or self.pool is None:
            return None
        from concurrent.futures import CancelledError
        from concurrent.futures import TimeoutError as FutureTimeout

        try:
            return fut.result(timeout=max(timeout, 0.0))
        except (FutureTimeout, TimeoutError, CancelledError):  # not compiled (yet): the JIT compiles it in-process
            return None
        except Exception as exc:
            self._disable(exc)
            return None

    def cancel(self, setting: Setting) -> None:
        for (name, _), fut in list(self.futures.items()):
            if name == setting.name:
                fut.cancel()

    def _disable(self, exc) -> None:
        self.log(f"precompile pool failed ({type(exc).__name__}: {exc}); compiling in-process from here on")
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def _time_candidate(fn, device, per_candidate_s: float, max_reps: int, min_reps: int = 5) -> list[float]:
    """Times of ``fn`` (ms; CUDA events on CUDA) after one warm-up call: at least
    ``min(min_reps, max_reps)`` calls, then more while ``per_candidate_s`` lasts, up to ``max_reps``."""
    from .common import _time_ms

    min_reps = min(min_reps, max_reps)
    fn()  # warm-up
    times: list[float] = []
    t0 = time.perf_counter()
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() - t0 < per_candidate_s):
        times.append(_time_ms(fn, device))
    return times


def _summ(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), 0, max(times)]
    return {"median_ms": statistics.median(times), "iqr_ms": q[2] - q[0], "reps": len(times)}


@dataclass
class _SettingRun:
    setting: Setting
    K: object
    x: torch.Tensor
    ref_loss: torch.Tensor
    ref_grad: torch.Tensor
    tol: tuple
    device: torch.device
    per_candidate_s: float
    max_reps: int
    tried: list = field(default_factory=list)

    def evaluate(self, cand: Candidate, precheck: dict | None = None) -> dict:
        """Check ``cand`` against the reference, then time it; returns its record (also kept)."""
        from .decorrelation import _fwd_bwd, _triton_loss

        rec = {**cand.to_dict(), "status": None}
        if precheck is not None:
            rec["compile_check"] = "ok" if precheck.get("ok") else precheck.get("reason")
            if not precheck.get("ok"):
                rec["status"] = "rejected"
                rec["message"] = precheck.get("reason", "")
                self.tried.append(rec)
                return rec
        try:
            with _override(self.K, cand.override):
                t0 = time.perf_counter()
                loss, grad = _loss_and_grad(self.x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                rec["first_call_s"] = round(time.perf_counter() - t0, 3)
                err = _errors(loss, grad, self.ref_loss, self.ref_grad)
                del loss, grad
                rec.update(
                    {
                        k: (float(f"{v:.3e}") if isinstance(v, float) else v)
                        for k, v in err.items()
                        if k in ("finite", "loss_err", "grad_err", "max_err")
                    }
                )
                if not _within(err, self.tol):
                    rec["status"] = "wrong"
                    rec["message"] = (
                        f"off the reference (loss {err['loss_err']:.2e}, grad {err['grad_err']:.2e}, max {err['max_err']:.2e}; tolerance {self.tol})"
                    )
                else:
                    rec.update(
                        _summ(
                            _time_candidate(
                                _fwd_bwd(_triton_loss, self.x), self.device, self.per_candidate_s, self.max_reps
                            )
                        )
                    )
                    rec["status"] = "ok"
        except _ContextLost:
            raise
        except Exception as exc:  # compile failure, out of resources, out of memory: recorded
            rec["status"] = "error"
            text = str(exc).strip()
            rec["message"] = f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
            if self.device.type == "cuda":
                _health(self.device)
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
        self.tried.append(rec)
        return rec


def _reorder(queue: list[Candidate], measured: list[dict], default_ms: float) -> list[Candidate]:
    """Remaining candidates of a part by the sum of their keys' measured single-key gains
    (failed single-key values count as a full default time lost; unmeasured ones as 0)."""
    gain: dict = {}
    for r in measured:
        if r.get("level") != 1:
            continue
        ((k, v),) = r["override"].items()
        gain[(k, json.dumps(v))] = (r["median_ms"] - default_ms) if r["status"] == "ok" else default_ms
    return sorted(queue, key=lambda c: sum(gain.get((k, json.dumps(v)), 0.0) for k, v in c.override.items()))


def _combos(best_by_part: dict, limit: int = 4) -> list[Candidate]:
    """Unions of the parts' best fragments (each faster than the default on its own): the
    parts touch disjoint keys, so every union is a valid override; most parts first."""
    tops = {p: recs[:2] for p, recs in best_by_part.items() if recs}
    parts = list(tops)
    out: list[Candidate] = []
    for r in range(len(parts), 1, -1):
        for chosen in itertools.combinations(parts, r):
            for picks in itertools.product(*(tops[p] for p in chosen)):
                merged = {}
                for p in picks:
                    merged.update(p["override"])
                out.append(Candidate("combo", merged, len(merged)))
    return out[:limit]


def _tune_setting(
    setting: Setting,
    cands: list[Candidate],
    source: str,
    device: torch.device,
    share_end: float,
    clock,
    pool: _Precompiler | None,
    context: str,
    per_candidate_s: float,
    max_reps: int,
    paired_rounds: int,
    log,
) -> dict:
    from ..ops.decorrelation.reference import decorrelation_reference
    from .decorrelation import (
        _compiled_loss,
        _fwd_bwd,
        _matmul_floor,
        _reference_loss,
        _triton_loss,
    )

    K = kernels_module()
    start = clock()
    budget = max(share_end - start, 0.0)
    default_cand = Candidate("default", {}, 0)
    if pool is not None:  # the default and the first candidates compile while the reference runs
        pool.submit(setting, default_cand)
        for c in cands[: 2 * PARTS_WINDOW]:
            pool.submit(setting, c)
    x = _data(setting, device).requires_grad_(True)
    xr = x.detach().to(torch.float64).requires_grad_(True)
    ref_loss = decorrelation_reference(xr)
    (ref_grad,) = torch.autograd.grad(ref_loss, xr)
    ref_loss, ref_grad = ref_loss.detach(), ref_grad.detach()
    del xr
    run = _SettingRun(setting, K, x, ref_loss, ref_grad, TOLERANCE[setting.dtype], device, per_candidate_s, max_reps)
    rec: dict = {
        "setting": setting.name,
        "N": setting.n,
        "D": setting.d,
        "dtype": setting.dtype,
        "route": setting.route,
        "candidates_from": source,
        "listed": len(cands),
        "tolerance": list(run.tol),
    }
    rec["default_config"] = {
        k: _plain(v) for k, v in K.select_config(setting.n, setting.d, 1, setting.torch_dtype, device).items()
    }
    if pool is not None:
        pool.report(setting, default_cand, timeout=min(60.0, max(share_end - clock(), 0.0)))
    default = run.evaluate(default_cand)  # not rejected by its compile report: it is the baseline
    rec["default"] = default
    if default["status"] == "wrong":  # judge the candidates against what the default reaches
        loose = (
            max(run.tol[0], 2 * default["loss_err"]),
            max(run.tol[1], 2 * default["grad_err"], default["max_err"] / 5),
        )
        rec["note"] = f"the default itself is off the test tolerance {run.tol}; candidates judged at {loose}"
        run.tol = loose
        run.tried.clear()
        default = run.evaluate(default_cand)
        rec["default"] = default
    if default["status"] != "ok":
        rec["status"] = f"default failed: {default.get('message')}"
        return {**rec, "tried": run.tried}
    default_ms = default["median_ms"]

    queues = {p: [c for c in cands if c.part == p] for p in PARTS}
    level1_left = {p: sum(c.level == 1 for c in q) for p, q in queues.items()}
    measured = {p: [] for p in PARTS}
    order = ["gram", "grad", "stages", "gram", "grad", "stats"]
    search_end = start + 0.85 * budget  # the rest: combinations and the paired timing
    turn = 0
    stop = "list exhausted"
    while any(queues.values()):
        if clock() >= search_end:
            stop = "time share used"
            break
        part = next(p for p in (order[(turn + i) % len(order)] for i in range(len(order))) if queues[p])
        turn += 1
        cand = queues[part].pop(0)
        if pool is not None:  # keep the pool ahead of the timing loop
            for p in PARTS:
                for ahead in queues[p][:PARTS_WINDOW]:
                    pool.submit(setting, ahead)
            pool.submit(setting, cand)
        pre = pool.report(setting, cand, timeout=min(60.0, search_end - clock())) if pool is not None else None
        r = run.evaluate(cand, pre)
        measured[part].append(r)
        if cand.level == 1:
            level1_left[part] -= 1
            if level1_left[part] == 0 and queues[part]:
                queues[part] = _reorder(queues[part], measured[part], default_ms)
        if r["status"] == "ok":
            log(
                f"  {setting.name} {part:5s} {r['median_ms']:.4f} ms ({default_ms / r['median_ms']:.2f}x default) {cand.key}"
            )
        else:
            log(f"  {setting.name} {part:5s} {r['status']}: {r.get('message', '')[:100]} {cand.key}")
    if pool is not None:
        pool.cancel(setting)
    combos_end = start + 0.93 * budget
    best_by_part = {
        p: sorted(
            (r for r in measured[p] if r["status"] == "ok" and r["median_ms"] < default_ms),
            key=lambda r: r["median_ms"],
        )
        for p in PARTS
    }
    combos = _combos(best_by_part)
    if pool is not None:
        for cand in combos:
            pool.submit(setting, cand)
    for cand in combos:
        if clock() >= combos_end:
            break
        pre = pool.report(setting, cand, timeout=min(60.0, combos_end - clock())) if pool is not None else None
        r = run.evaluate(cand, pre)
        if r["status"] == "ok":
            log(
                f"  {setting.name} combo {r['median_ms']:.4f} ms ({default_ms / r['median_ms']:.2f}x default) {cand.key}"
            )
    ranked = sorted(
        (r for r in run.tried if r["status"] == "ok" and r["part"] != "default"), key=lambda r: r["median_ms"]
    )
    finalists = [r for r in ranked if r["median_ms"] < default_ms][:PAIRED_FINALISTS]
    rec.update(
        status="ok",
        search_stop=stop,
        counts={
            s: sum(r["status"] == s for r in run.tried if r["part"] != "default")
            for s in ("ok", "wrong", "error", "rejected")
        },
        covered=sum(1 for r in run.tried if r["part"] in PARTS),
    )
    # the default and the finalists in alternating rounds (the winner is decided here), with the
    # context while the share lasts
    fns = {"default": _with_override(K, {}, _fwd_bwd(_triton_loss, x))}
    for j, r in enumerate(finalists, 1):
        fns[f"finalist{j}"] = _with_override(K, r["override"], _fwd_bwd(_triton_loss, x))
    if context != "none" and clock() < share_end:
        fns["reference"] = _fwd_bwd(_reference_loss, x)
        if device.type == "cuda":
            fns["matmul_floor"] = _matmul_floor(x.detach())
        if context == "full" and device.type == "cuda" and (setting.n, setting.d) in _T1_SIZES:
            fns["compiled"] = _fwd_bwd(_compiled_loss(), x)
    paired, winner = _paired(fns, device, paired_rounds)
    rec["paired"] = paired
    best = default if winner == "default" else finalists[int(winner[len("finalist") :]) - 1]
    rec["best"] = best
    rec["best_config"] = {**rec["default_config"], **best["override"]}
    rec["tried"] = run.tried
    rec["seconds"] = round(clock() - start, 1)
    return rec


_T1_SIZES = ((256, 512), (256, 2048))


def _with_override(K, override: dict, fn):
    def call():
        with _override(K, override):
            return fn()

    return call


def _paired(fns: dict, device: torch.device, rounds: int = 10) -> tuple[dict, str]:
    """Time ``fns`` in alternating rounds; returns (per name: median, IQR, peak MB, rounds, and
    ``ratios`` of the winner, ``winner``) and the winner: the fastest of ``default`` and the
    ``finalist*`` entries."""
    from .common import measure_interleaved, paired_ratio

    res = measure_interleaved(fns, device, min_time_s=0.05, min_rounds=rounds, max_rounds=max(rounds, 100), warmup=2)
    out: dict = {}
    for name, m in res.items():
        if isinstance(m, Exception):
            out[name] = {"error": f"{type(m).__name__}: {str(m).splitlines()[0][:160] if str(m) else ''}"}
        else:
            out[name] = {"median_ms": m.median_ms, "iqr_ms": m.iqr_ms, "peak_mb": m.peak_mb, "rounds": m.iters}
    ok = {n: m for n, m in res.items() if not isinstance(m, Exception)}
    tuned = [n for n in ok if n == "default" or n.startswith("finalist")]
    winner = min(tuned, key=lambda n: ok[n].median_ms) if tuned else "default"
    ratios = {}
    if winner in ok:
        if "default" in ok and winner != "default":
            ratios["best_speedup_vs_default"] = paired_ratio(ok["default"], ok[winner])
        for other in ("reference", "compiled"):
            if other in ok:
                ratios[f"speedup_vs_{other}"] = paired_ratio(ok[other], ok[winner])
        if "matmul_floor" in ok:
            ratios["vs_matmul_floor"] = paired_ratio(ok[winner], ok["matmul_floor"])
    out["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    out["winner"] = winner
    return out, winner


def _gpu_target(device: torch.device) -> tuple:
    try:
        from triton.runtime.driver import driver

        t = driver.active.get_current_target()
        return (t.backend, t.arch, t.warp_size)
    except Exception:
        major, minor = torch.cuda.get_device_capability(device)
        return ("cuda", 10 * major + minor, 32)


def sweep(
    settings: list[Setting] | None = None,
    *,
    budget_s: float = 300.0,
    device: str | torch.device | None = None,
    quick: bool | None = None,
    candidates: dict | None = None,
    per_candidate_s: float = 0.15,
    max_reps: int = 40,
    paired_rounds: int = 10,
    context: str = "cheap",
    workers: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] = print,
    command: str = "",
    on_setting: Callable[[dict], None] | None = None,
) -> dict:
    """Tune each setting within ``budget_s`` seconds in all (see the module doc); returns the
    results dict (:func:`write_results` saves it). ``quick`` (default: no CUDA) uses
    :data:`QUICK_SETTINGS` and :data:`QUICK_CANDIDATES` under the interpreter. ``candidates``:
    pruned data (default :func:`load_candidates`). ``context``: ``"none"``, ``"cheap"`` (eager
    reference and matmul floor) or ``"full"`` (+ torch.compile at the N=256, D in {512, 2048}
    settings). ``workers``: precompile processes on CUDA (default: CPU cores - 2, at most 12;
    0 turns the pool off). ``per_candidate_s`` / ``max_reps``: timing of one candidate;
    ``paired_rounds``: the least rounds of the final paired timing. ``clock``: the budget's clock
    (tests replace it). ``on_setting(results)``: called after each setting with the results so
    far (``stopped`` reads "running"), e.g. to save them in case the process is killed. Raises ValueError for bad arguments, RuntimeError when Triton cannot
    run on ``device``."""
    from .runner import _environment

    t_start = clock()
    if not isinstance(budget_s, (int, float)) or budget_s < 0:
        raise ValueError(f"budget_s must be a number >= 0, got {budget_s!r}")
    for name, value in (("per_candidate_s", per_candidate_s), ("max_reps", max_reps), ("paired_rounds", paired_rounds)):
        if not isinstance(value, (int, float)) or value < (0 if name == "per_candidate_s" else 1):
            raise ValueError(f"{name} must be a number >= {0 if name == 'per_candidate_s' else 1}, got {value!r}")
    if context not in ("none", "cheap", "full"):
        raise ValueError(f"context must be 'none', 'cheap' or 'full', got {context!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    quick = dev.type != "cuda" if quick is None else bool(quick)
    from ..ops.decorrelation.triton import can_run

    ok, why = can_run(torch.empty(2, 2, device=dev))
    if not ok:
        raise RuntimeError(f"the Triton kernels cannot run on {dev}: {why}")
    settings = list(settings or (QUICK_SETTINGS if quick else TARGET_SETTINGS))
    deadline = t_start + budget_s
    performance = dev.type == "cuda" and not quick
    results: dict = {
        "kind": "decorrelation tuning sweep",
        "performance_run": performance,
        "label": "performance run"
        if performance
        else "NOT a performance run: "
        + ("Triton interpreter on CPU, tiny shapes" if dev.type != "cuda" else "quick settings"),
        "environment": _environment(dev, command or "sdecor.benchmarks.tuning.sweep"),
        "budget_s": budget_s,
        "quick": quick,
        "context": context,
        "settings": [],
    }
    if dev.type == "cuda":
        sm_count = torch.cuda.get_device_properties(dev).multi_processor_count
        results["environment"]["sm_count"] = sm_count
    else:
        sm_count = DEFAULT_SM_COUNT
    data = None
    if not quick:
        if candidates is None:
            try:
                candidates = load_candidates()
            except (FileNotFoundError, ValueError) as exc:
                log(f"tune: {exc}; generating candidates here")
        data = candidates
        results["candidate_data"] = {k: data.get(k) for k in ("triton", "target", "sm_count", "date")} if data else None
    pool = None
    if performance:
        n_workers = max(0, min(12, (os.cpu_count() or 4) - 2)) if workers is None else workers
        if n_workers > 0:
            pool = _Precompiler(n_workers, _gpu_target(dev), sm_count, log)
            results["precompile_workers"] = n_workers
    if dev.type == "cuda":
        from .decorrelation import _raise_recompile_limit

        _raise_recompile_limit()
    stop = None
    try:
        for i, setting in enumerate(settings):
            now = clock()
            if now >= deadline - (0.0 if quick else MIN_SETTING_S):
                stop = "budget"
                results["settings"].append({"setting": setting.name, "status": "not run: out of time"})
                continue
            share_end = now + (deadline - now) / (len(settings) - i)
            if quick:
                cands, source = (
                    [Candidate(c.part, dict(c.override), c.level) for c in QUICK_CANDIDATES],
                    "QUICK_CANDIDATES (interpreter)",
                )
            else:
                cands, source = _runtime_candidates(setting, data, sm_count)
            log(
                f"tune {setting.name} (route {setting.route}): {len(cands)} candidates from {source}; {share_end - now:.0f}s"
            )
            try:
                rec = _tune_setting(
                    setting,
                    cands,
                    source,
                    dev,
                    share_end,
                    clock,
                    pool,
                    context,
                    per_candidate_s,
                    max_reps,
                    paired_rounds,
                    log,
                )
            except _ContextLost as exc:
                results["settings"].append({"setting": setting.name, "status": f"aborted: {exc}"})
                stop = str(exc)
                for rest in settings[i + 1 :]:
                    results["settings"].append({"setting": rest.name, "status": "not run: CUDA context lost"})
                break
            results["settings"].append(rec)
            if on_setting is not None:
                on_setting({**results, "stopped": "running", "elapsed_s": round(clock() - t_start, 1)})
            b = rec.get("best")
            if b is not None:
                log(
                    f"tune {setting.name}: default {rec['default']['median_ms']:.4f} ms, best {b['median_ms']:.4f} ms {json.dumps(b['override'])}"
                )
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        if pool is not None:
            pool.close()
    if stop is None:
        cut = [r["setting"] for r in results["settings"] if r.get("search_stop") == "time share used"]
        stop = f"budget: search cut short in {', '.join(cut)}" if cut else "done: every listed candidate tried"
    results["stopped"] = stop
    results["elapsed_s"] = round(clock() - t_start, 1)
    return results


# ------------------------------------------------------------------------------------ output


def _fmt(v, spec=".4f", unit=""):
    return "-" if v is None else f"{v:{spec}}{unit}"


def format_markdown(results: dict) -> str:
    """Summary table (default vs best per setting, with the context) and each setting's top 5."""
    env = results.get("environment", {})
    lines = [
        f"# Decorrelation kernel tuning on {env.get('device_name', '?')} ({env.get('device', '?')})",
        "",
        f"**{results.get('label', '')}.** torch {env.get('torch')}, triton {env.get('triton')}, {env.get('date', '')}; "
        f"budget {results.get('budget_s')} s, used {results.get('elapsed_s')} s, stopped: {results.get('stopped')}.",
        "",
        "Forward + backward of decorrelation_loss(x, backend='triton') (correlation, mean), times in ms. "
        "`default` and `best` are each candidate's own timing during the search; the ratio columns come from "
        "the final alternating rounds (the default, the 3 fastest candidates, the eager reference, the cuBLAS "
        "matmul_floor), which also pick `best` among the finalists. Only candidates within the tests' "
        "tolerance of the float64 reference are timed.",
        "",
        "| setting | route | default | best | best/default (paired) | vs reference | vs matmul_floor | tried: ok / wrong / error / rejected | covered | best override |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in results.get("settings", []):
        if "default" not in rec or rec.get("best") is None:
            lines.append(
                f"| {rec.get('setting')} | {rec.get('route', '-')} | - | - | - | - | - | - | - | {rec.get('status')} |"
            )
            continue
        paired = rec.get("paired", {})
        ratios = paired.get("ratios", {})
        c = rec.get("counts", {})
        speed = ratios.get("best_speedup_vs_default")
        lines.append(
            f"| {rec['setting']} | {rec['route']} | {_fmt(rec['default'].get('median_ms'))} | {_fmt(rec['best'].get('median_ms'))} | "
            f"{_fmt(speed, '.2f', 'x') if speed else ('1.00x (default is best)' if rec['best']['part'] == 'default' else '-')} | "
            f"{_fmt(ratios.get('speedup_vs_reference'), '.2f', 'x')} | {_fmt(ratios.get('vs_matmul_floor'), '.2f', 'x')} | "
            f"{c.get('ok', 0)} / {c.get('wrong', 0)} / {c.get('error', 0)} / {c.get('rejected', 0)} | "
            f"{rec.get('covered', 0)} of {rec.get('listed', 0)} ({rec.get('search_stop', '')}) | `{json.dumps(rec['best']['override'])}` |"
        )
    for rec in results.get("settings", []):
        if "tried" not in rec:
            continue
        lines += ["", f"## {rec['setting']} (route {rec.get('route')}): {rec.get('candidates_from', '')}", ""]
        if rec.get("note"):
            lines += [f"Note: {rec['note']}", ""]
        paired = rec.get("paired", {})
        ctx = ", ".join(
            f"{k} {_fmt(v.get('median_ms'))} ms" for k, v in paired.items() if isinstance(v, dict) and "median_ms" in v
        )
        if ctx:
            lines += [f"Paired: {ctx}.", ""]
        lines += ["| # | part | median ms | x default | override |", "|---|---|---|---|---|"]
        ok = sorted((r for r in rec["tried"] if r.get("status") == "ok"), key=lambda r: r["median_ms"])
        d_ms = rec["default"].get("median_ms")
        for j, r in enumerate(ok[:5], 1):
            lines.append(
                f"| {j} | {r['part']} | {r['median_ms']:.4f} | {d_ms / r['median_ms']:.2f}x | `{json.dumps(r['override'])}` |"
            )
        bad = [r for r in rec["tried"] if r.get("status") in ("wrong", "error")]
        if bad:
            lines += [
                "",
                "Failed: "
                + "; ".join(
                    f"`{json.dumps(r['override'])}` {r['status']} ({r.get('message', '')[:80]})" for r in bad[:5]
                )
                + (f"; and {len(bad) - 5} more" if len(bad) > 5 else ""),
            ]
    winners = {
        rec["setting"]: rec["best"]["override"]
        for rec in results.get("settings", [])
        if rec.get("best") and rec["best"].get("override")
    }
    lines += ["", "## Adopting the winners", ""]
    if winners:
        lines += [
            "`CONFIG_OVERRIDE` applies one override to every shape (fine for a run at one setting); "
            "`sdecor.benchmarks.tuning.tuned_select_config(<this JSON>)` installs each setting's winner for its own shape; "
            "for good, `select_config` in kernels/decorrelation.py is changed to return them:",
            "",
            "```python",
            *[f"{name}: {json.dumps(o)}" for name, o in winners.items()],
            "```",
        ]
    else:
        lines.append("No candidate beat the heuristic default (or none was measured).")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<out>/tune-<device>[-quick].json`` and ``.md``; returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"tune-{results.get('environment', {}).get('device', 'cpu')}" + ("-quick" if results.get("quick") else "")
    jp, mp_ = out / f"{stem}.json", out / f"{stem}.md"
    jp.write_text(json.dumps(results, indent=1, default=_plain) + "\n")
    mp_.write_text(format_markdown(results))
    return jp, mp_


@contextlib.contextmanager
def tuned_select_config(results: dict | str | os.PathLike):
    """While the block runs, ``select_config`` returns each tuned setting's winner for its own
    shape (N, D, one group, dtype) and the heuristic elsewhere (``results``: a sweep's results or
    the path of its JSON)."""
    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text())
    winners = {}
    for rec in results.get("settings", []):
        if rec.get("best") and rec["best"].get("override"):
            winners[(rec["N"], rec["D"], 1, _DTYPES[rec["dtype"]])] = dict(rec["best"]["override"])
    K = kernels_module()
    original = K.select_config

    @functools.wraps(original)
    def select(n, g, groups, dtype, device, *args, **kwargs):
        cfg = original(n, g, groups, dtype, device, *args, **kwargs)
        cfg.update(winners.get((n, g * groups, groups, dtype), {}))
        return cfg

    K.select_config = select
    try:
        yield winners
    finally:
        K.select_config = original
