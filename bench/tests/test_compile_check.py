"""bench/compile_check.py compiles the kernels a few settings launch for sm_90 (no GPU needed):
every dot loop is fed by async copies into shared memory, uses wgmma and does not spill."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "compile_check.py"
DOT_KERNELS = {"gram_kernel", "grad_d_kernel", "kz_kernel"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile_check")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # route N (row loop) in bf16, route D with a split Gram in fp32, route D unsplit in bf16
    settings = "256x512:bf16,256x64x8x8:fp32,8192x4096:bf16"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "90", "--out", str(out), "--settings", settings],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        cwd=ROOT,
    )
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "compile_check.json").read_text())


def test_every_variant_compiles_without_spills(compiled):
    out, table, rows = compiled
    assert {r["kernel"] for r in rows} >= DOT_KERNELS | {"col_stats_kernel", "gram_finish_kernel"}
    for r in rows:
        assert "error" not in r, r
        assert r["spill_bytes"] == 0, r
        assert (out / f"{r['file']}.ttgir").stat().st_size > 0 and (out / f"{r['file']}.ptx").stat().st_size > 0
        assert r["blocks_per_sm"] >= 1
    lines = table.strip().splitlines()
    assert lines[0].startswith("| kernel |") and len(lines) == len(rows) + 2  # header, rule, one row each


def test_dot_loops_are_fed_by_async_copies(compiled):
    _, _, rows = compiled
    dots = [r for r in rows if r["kernel"] in DOT_KERNELS]
    assert len(dots) >= 5
    for r in dots:
        assert r["wgmma"] and (r["cp_async"] or r["tma"]), r


def test_bf16_route_d_dots_overlap_wgmma_with_the_next_iteration(compiled):
    # x's dtype is the dot dtype: the second operand goes from shared memory straight to the wgmma
    _, _, rows = compiled
    big = [r for r in rows if "8192x4096:bf16" in r["settings"] and r["kernel"] in ("gram_kernel", "grad_d_kernel")]
    assert len(big) == 2
    for r in big:
        assert r["wgmma_overlap"], r


def test_blocks_per_sm_rule():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import compile_check as cc
    finally:
        sys.path.pop(0)
    assert cc.blocks_per_sm(regs=128, num_warps=8, shared=0) == 2
    assert cc.blocks_per_sm(regs=129, num_warps=8, shared=0) == 1  # 136 after rounding to 8 per thread
    assert cc.blocks_per_sm(regs=32, num_warps=4, shared=100 * 1024) == 2  # shared-memory bound
    assert cc.blocks_per_sm(regs=32, num_warps=4, shared=0) == 16  # thread bound
