"""The decorrelation tuning sweep (sdecor.benchmarks.tuning) on CPU: candidate generation and the
pruned data, the sweep under the Triton interpreter on tiny shapes (correctness rejection,
errors recorded, budget stop, JSON/Markdown), and the sm_90 compile check in worker processes."""

import json
import time

import pytest
import torch

from sdecor.benchmarks import tuning
from sdecor.ops.decorrelation import triton as DT

needs_triton = pytest.mark.skipif(DT._kernels is None, reason="triton is not importable")
needs_interpreter = pytest.mark.skipif(not DT.can_run(torch.zeros(2, 2))[0], reason="no Triton interpreter here")


def test_parse_settings():
    assert tuning.parse_settings("256x512:bf16") == [tuning.Setting(256, 512, "bf16")]
    assert [s.name for s in tuning.parse_settings("256x512, N8192-D4096-fp32")] == [
        "N256-D512-fp32",
        "N256-D512-bf16",
        "N8192-D4096-fp32",
    ]
    assert tuning.Setting(256, 512, "fp32").route == "N" and tuning.Setting(8192, 4096, "bf16").route == "D"
    for bad in ("256-512", "256x512:int8", ""):
        with pytest.raises(ValueError, match="settings"):
            tuning.parse_settings(bad)
    assert len(tuning.TARGET_SETTINGS) == 8


@needs_triton
def test_pruned_candidate_data_is_well_formed():
    data = tuning.load_candidates()
    assert data["sm_count"] == tuning.DEFAULT_SM_COUNT and data["target"] == list(tuning.DEFAULT_TARGET)
    assert set(data["settings"]) == {s.name for s in tuning.TARGET_SETTINGS}
    for name, entry in data["settings"].items():
        parts = {c["part"] for c in entry["candidates"]}
        assert {"gram", "grad"} <= parts, name
        assert entry["default_check"] == "ok", (name, entry["default_check"])
        for c in entry["rejected"]:
            assert any(w in c["reason"] for w in ("spills", "does not compile", "shared memory")), c
        # search order: each part's single-key changes come first
        for part in parts:
            levels = [c["level"] for c in entry["candidates"] if c["part"] == part]
            assert levels == sorted(levels, key=lambda v: v > 1)
    broken = json.loads(json.dumps(data))
    first = next(iter(broken["settings"].values()))
    first["candidates"][0]["override"] = {"gram_block": 48}
    with pytest.raises(ValueError, match="not in the"):
        tuning.validate_candidate_data(broken)
    first["candidates"].pop(0)
    with pytest.raises(ValueError, match="counts"):
        tuning.validate_candidate_data(broken)


@needs_triton
def test_generated_candidates_are_distinct_launch_plans():
    s = tuning.Setting(256, 512, "bf16")
    cands = tuning.generate_candidates(s)
    assert len({c.key for c in cands}) == len(cands)
    plans = {json.dumps(tuning.launch_plan(s, c.override), sort_keys=True) for c in cands[:20]}
    assert len(plans) == 20
    assert json.dumps(tuning.launch_plan(s, {}), sort_keys=True) not in plans
    for c in cands:
        space = tuning.SPACE[f"grad:{s.route}" if c.part == "grad" else c.part]
        assert c.override and all(k in space and v in space[k] for k, v in c.override.items())
    default_plan = tuning.launch_plan(s)
    assert [p["kernel"] for p in default_plan] == ["_col_stats_kernel", "_gram_kernel", "_kz_kernel"]
    assert tuning.predicted_us(s, default_plan) > 0


def _corrupt_split(monkeypatch):
    """Candidates that set gram_split get a gradient 1% too large (a wrong kernel, simulated)."""
    real = tuning._loss_and_grad
    K = tuning.kernels_module()

    def fake(x):
        loss, grad = real(x)
        if "gram_split" in K.CONFIG_OVERRIDE:
            grad = grad * 1.01
        return loss, grad

    monkeypatch.setattr(tuning, "_loss_and_grad", fake)


@needs_interpreter
def test_quick_sweep_rejects_wrong_and_records_errors(monkeypatch, tmp_path):
    _corrupt_split(monkeypatch)
    monkeypatch.setattr(
        tuning,
        "QUICK_CANDIDATES",
        [
            tuning.Candidate("gram", {"gram_split": 2}, 1),  # wrong (corrupted above)
            tuning.Candidate("gram", {"gram_block_r": 24}, 1),  # tl.arange of 24: does not compile
            tuning.Candidate("grad", {"grad_block_j": 16}, 1),  # fine
        ],
    )
    logs, partial = [], []
    res = tuning.sweep(
        [tuning.Setting(24, 40, "fp32")],
        budget_s=120,
        device="cpu",
        quick=True,
        context="none",
        per_candidate_s=0.0,
        max_reps=2,
        paired_rounds=2,
        log=logs.append,
        on_setting=partial.append,
    )
    assert [p["stopped"] for p in partial] == ["running"] and len(partial[0]["settings"]) == 1
    assert res["performance_run"] is False and "NOT a performance run" in res["label"]
    (rec,) = res["settings"]
    status = {json.dumps(r["override"]): r["status"] for r in rec["tried"]}
    assert status == {
        "{}": "ok",
        '{"gram_split": 2}': "wrong",
        '{"gram_block_r": 24}': "error",
        '{"grad_block_j": 16}': "ok",
    }
    wrong = next(r for r in rec["tried"] if r["status"] == "wrong")
    assert wrong["grad_err"] > 1e-3 and "off the reference" in wrong["message"]
    assert rec["counts"] == {"ok": 1, "wrong": 1, "error": 1, "rejected": 0}
    assert rec["best"]["override"] in ({}, {"grad_block_j": 16}) and rec["paired"]["winner"] in ("default", "finalist1")
    assert rec["default"]["median_ms"] > 0 and rec["default"]["reps"] == 2
    json_path, md_path = tuning.write_results(res, tmp_path)
    assert (
        json_path.name == "tune-cpu-quick.json"
        and json.loads(json_path.read_text())["settings"][0]["setting"] == "N24-D40-fp32"
    )
    md = md_path.read_text()
    assert "NOT a performance run" in md and "| N24-D40-fp32 | N |" in md and "1 / 1 / 1 / 0" in md
    assert tuning.kernels_module().CONFIG_OVERRIDE == {}


@needs_interpreter
def test_sweep_stops_on_budget(tmp_path):
    ticks = iter(range(10**6))
    res = tuning.sweep(
        tuning.QUICK_SETTINGS,
        budget_s=3,
        device="cpu",
        quick=True,
        context="none",
        per_candidate_s=0.0,
        max_reps=1,
        paired_rounds=1,
        clock=lambda: float(next(ticks)),
        log=lambda *_: None,
    )
    first, second = res["settings"]
    assert first["status"] == "ok" and first["search_stop"] == "time share used" and first["covered"] == 0
    assert first["best"]["part"] == "default" and first["paired"]["winner"] == "default"
    assert second == {"setting": "N40-D24-bf16", "status": "not run: out of time"}
    assert res["stopped"] == "budget"
    md = tuning.format_markdown(res)
    assert "not run: out of time" in md and "stopped: budget" in md
    none = tuning.sweep(tuning.QUICK_SETTINGS, budget_s=0, device="cpu", quick=True, log=lambda *_: None)
    assert [r["status"] for r in none["settings"]] == ["not run: out of time"] * 2
    tuning.write_results(none, tmp_path)
    with pytest.raises(ValueError, match="budget_s"):
        tuning.sweep(budget_s=-1, device="cpu")
    with pytest.raises(ValueError, match="context"):
        tuning.sweep(budget_s=1, device="cpu", context="all")


@needs_triton
def test_tuned_select_config_installs_each_winner():
    K = tuning.kernels_module()
    results = {
        "settings": [
            {"N": 24, "D": 40, "dtype": "fp32", "best": {"override": {"gram_block": 16}}},
            {"setting": "N40-D24-bf16", "status": "not run: out of time"},
        ]
    }
    original = K.select_config
    with tuning.tuned_select_config(results) as winners:
        assert winners == {(24, 40, 1, torch.float32): {"gram_block": 16}}
        assert K.select_config(24, 40, 1, torch.float32, torch.device("cpu"))["gram_block"] == 16
        assert (
            K.select_config(24, 40, 1, torch.bfloat16, torch.device("cpu"))["gram_block"]
            == original(24, 40, 1, torch.bfloat16, torch.device("cpu"))["gram_block"]
        )
    assert K.select_config is original


@needs_triton
def test_sm90_compile_check_rejects_spills_and_compile_errors():
    s = tuning.Setting(8192, 4096, "bf16")
    jobs = [
        (s, tuning.Candidate("grad", {"grad_block_m": 256}, 1)),
        (s, tuning.Candidate("gram", {"gram_block_r": 24}, 1)),
    ]
    try:
        spill, broken = tuning.check_candidates(jobs, workers=2)
    except Exception as exc:  # no ptxas / cuobjdump in this triton build
        pytest.skip(f"sm_90 compile check unavailable: {exc}")
    if not spill["kernels"] or "stack" not in spill["kernels"][-1]:
        pytest.skip("cuobjdump unavailable: no resource usage")
    assert not spill["ok"] and "_grad_d_kernel spills" in spill["reason"]
    assert {k["kernel"] for k in spill["kernels"]} == {
        "_col_stats_kernel",
        "_col_stats_combine_kernel",
        "_gram_kernel",
        "_grad_d_kernel",
    }
    assert not broken["ok"] and "_gram_kernel does not compile" in broken["reason"]


@needs_interpreter
def test_sweep_with_compile_pool_rejects_spilling_candidates():
    """The CUDA sweep's precompile pool, driven on CPU: candidates are compiled for sm_90 by a
    worker process while the interpreter runs them; one whose kernel spills is not run."""
    logs = []
    pool = tuning._Precompiler(1, tuning.DEFAULT_TARGET, tuning.DEFAULT_SM_COUNT, logs.append)
    cands = [tuning.Candidate("gram", {"gram_block": 128}, 1), tuning.Candidate("grad", {"grad_block_j": 16}, 1)]
    try:
        rec = tuning._tune_setting(
            tuning.Setting(24, 40, "fp32"),
            cands,
            "test",
            torch.device("cpu"),
            time.perf_counter() + 300,
            time.perf_counter,
            pool,
            "none",
            0.0,
            2,
            2,
            logs.append,
        )
    finally:
        pool.close()
    by_key = {json.dumps(r["override"]): r for r in rec["tried"]}
    assert (
        by_key['{"grad_block_j": 16}']["status"] == "ok" and by_key['{"grad_block_j": 16}']["compile_check"] == "ok"
    ), logs
    spill = by_key['{"gram_block": 128}']
    if spill["status"] == "rejected":
        assert "_gram_kernel spills" in spill["message"] and "median_ms" not in spill
    else:  # no cuobjdump: nothing to read spills from
        assert spill["compile_check"] == "ok"
