"""Timing and memory measurement shared by every benchmark suite.

A suite is a module in :mod:`sdecor.benchmarks` with ``run(device, quick) -> list[Group]``. A
:class:`Group` is one input setting with several implementations timed in the same run; the
first implementation (or the one named ``baseline``) is the reference the ratios are against.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "Impl",
    "Group",
    "measure",
    "measure_interleaved",
    "paired_ratio",
    "pin_glibc_malloc",
    "Measurement",
    "synchronize",
]


@dataclass
class Impl:
    """One implementation to time: ``fn()`` runs one iteration (e.g. forward + backward)."""

    name: str
    fn: Callable[[], object]


@dataclass
class Group:
    """Implementations of one op on one input setting, measured in the same run.

    ``params`` describe the setting (shape, dtype, k, ...) and become table columns.
    ``baseline`` names the implementation the speed-up ratios divide by.
    ``skipped`` maps implementation names to the reason they were not run.
    ``floor`` optionally names an implementation that does only the unavoidable work (the bare
    forward passes of a metric, the matmuls of a route, a copy of the bytes that must move);
    every implementation then also gets ``vs_floor`` = its time / the floor's time (>= 1).
    """

    suite: str
    params: dict
    impls: list[Impl]
    baseline: str
    skipped: dict = field(default_factory=dict)
    floor: str | None = None


@dataclass
class Measurement:
    median_ms: float
    iqr_ms: float
    peak_mb: float | None  # peak memory above the pre-call level; None where not measurable (CPU)
    iters: int
    times_ms: tuple = ()  # every timed call, in call order (one per round when interleaved)


def paired_ratio(num: Measurement, den: Measurement) -> float:
    """Median over rounds of num's time / den's time in the same round (interleaved runs).

    Pairing calls made moments apart cancels a machine whose speed drifts or jumps between
    states (shared cores, clock changes) far better than a ratio of two medians; with unequal
    round counts it falls back to the ratio of the medians.
    """
    if num.times_ms and len(num.times_ms) == len(den.times_ms):
        return statistics.median(a / b for a, b in zip(num.times_ms, den.times_ms))
    return num.median_ms / den.median_ms


def pin_glibc_malloc() -> str | None:
    """Keep glibc from mapping and unmapping large CPU tensors on every call (Linux, glibc only).

    By default glibc serves allocations above a moving threshold (128 KiB at start, adjusted as
    memory is freed) with fresh ``mmap`` pages and trims freed heap memory, so whether a
    convolution's output costs page faults depends on the process's allocation history: the
    same forward pass then takes 50 ms or 120 ms in one process, and a benchmark's ratios swing
    with it. Fixing the mmap threshold at glibc's maximum (32 MiB on 64-bit) and disabling
    trimming makes every implementation reuse heap memory, as a caching allocator would (and as
    CUDA does). Returns a description for the results, or None where it does not apply.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or no libc: nothing to pin
        return None
    m_trim_threshold, m_mmap_threshold = -1, -3
    threshold = 32 * 2**20
    if not (mallopt(m_mmap_threshold, threshold) and mallopt(m_trim_threshold, 2**30)):
        return None
    return "glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory of one call of ``fn`` above what was allocated before it (CUDA; None on CPU)."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in ms (CUDA events on CUDA, so queued work is included)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _summary(times: list[float], peak_mb: float | None) -> Measurement:
    ordered = sorted(times)
    q = (
        statistics.quantiles(ordered, n=4)
        if len(ordered) >= 4
        else [ordered[0], ordered[len(ordered) // 2], ordered[-1]]
    )
    return Measurement(
        median_ms=statistics.median(ordered),
        iqr_ms=q[2] - q[0],
        peak_mb=peak_mb,
        iters=len(times),
        times_ms=tuple(times),
    )


def measure(
    fn: Callable[[], object], device: torch.device, min_time_s: float = 0.2, max_iters: int = 200, warmup: int = 2
) -> Measurement:
    """Median and interquartile range of ``fn``'s wall time, and its peak extra memory on CUDA.

    Runs ``warmup`` untimed calls (compilation, autotuning, caches), then repeats until
    ``min_time_s`` has passed or ``max_iters`` calls were made (at least 3).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    peak_mb = _peak_mb(fn, device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start_all < min_time_s and len(times) < max_iters):
        times.append(_time_ms(fn, device))
    return _summary(times, peak_mb)


def measure_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    min_time_s: float = 0.2,
    min_rounds: int = 10,
    max_rounds: int = 200,
    warmup: int = 2,
) -> dict[str, Measurement | Exception]:
    """Time several implementations of one setting in alternating rounds.

    Each round calls every implementation once (the order rotates between rounds), so a
    machine that speeds up or slows down during the run (other processes, clock changes,
    shared cores) shifts all of them alike and their ratios stay honest. Rounds continue until
    ``min_rounds`` are done and ``min_time_s`` per implementation has passed, or ``max_rounds``.
    An implementation that raises is dropped and its exception returned in its place.
    """
    results: dict[str, Measurement | Exception] = {}
    live: dict[str, Callable[[], object]] = {}
    peaks: dict[str, float | None] = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            synchronize(device)
            peaks[name] = _peak_mb(fn, device)
            live[name] = fn
        except Exception as exc:  # reported by the caller
            results[name] = exc
            if device.type == "cuda":
                torch.cuda.empty_cache()
    times: dict[str, list[float]] = {name: [] for name in live}
    start_all = time.perf_counter()
    rounds = 0
    while (
        live
        and rounds < max_rounds
        and (rounds < min_rounds or time.perf_counter() - start_all < min_time_s * len(live))
    ):
        names = list(live)
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            try:
                times[name].append(_time_ms(live[name], device))
            except Exception as exc:
                results[name] = exc
                del live[name]
        rounds += 1
    for name in live:
        results[name] = _summary(times[name], peaks[name])
    return {name: results[name] for name in fns}
