"""Issue 7's target checker (bench/targets.py) on synthetic results JSONs, and on a quick CPU run
of the ``train`` suite."""

import copy
import json

import pytest
import targets  # bench/targets.py (bench/ is put on sys.path by bench/tests/conftest.py)

from sdecor.benchmarks import decorrelation, masking, runner

GPU = "nvidia-h100-80gb-hbm3"


def _impl(ms, peak=None):
    return {"median_ms": ms, "iqr_ms": 0.01, "peak_mb": peak, "iters": 10}


def _decor(n, d, dtype, triton=0.1, reference=1.0, compiled=0.3, floor=None, peak=None):
    impls = {"triton": _impl(triton, peak), "reference": _impl(reference, 50.0), "compiled": _impl(compiled, 20.0)}
    if floor is not None:
        impls["matmul_floor"] = _impl(floor, 10.0)
    return {
        "suite": "decorrelation",
        "params": {"N": n, "D": d, "dtype": dtype, "route": "D" if n >= d else "N"},
        "baseline": "reference",
        "impls": impls,
        "skipped": {},
    }


def passing(device=GPU) -> dict:
    """Results in which every target passes."""
    results = []
    for n, d in targets.T1_SIZES:
        for dtype in targets.DTYPES:
            results.append(
                _decor(n, d, dtype, triton=0.1, reference=1.0, compiled=0.3, peak=0.5 * targets._bound_mb(n, d, dtype))
            )
    for n, d in targets.T2_SIZES:
        for dtype in targets.DTYPES:
            results.append(
                _decor(
                    n,
                    d,
                    dtype,
                    triton=1.2,
                    reference=9.0,
                    compiled=5.0,
                    floor=1.0,
                    peak=0.9 * targets._bound_mb(n, d, dtype),
                )
            )
    results.append(
        {
            "suite": "masking",
            "params": {**targets.T4_SETTING, "backend": "cuda", "MB moved": 372.2},
            "baseline": "topk_scatter",
            "impls": {
                "ours": _impl(0.2),
                "topk_scatter": _impl(3.0),
                "reference": _impl(4.0),
                "sgt_loop": _impl(40.0),
                "copy_floor": _impl(0.15),
            },
            "skipped": {},
        }
    )
    results.append(
        {
            "suite": "train",
            "params": {"model": "resnet20", "image": "3x32x32", "B": 256, "amp": "bf16"},
            "baseline": "standard",
            "impls": {
                "standard": _impl(10.0),
                "saliencydecor": _impl(22.0),
                "part:saliency": _impl(6.0),
                "part:mask_features": _impl(0.5),
                "part:decorrelation": _impl(0.3),
            },
            "skipped": {},
        }
    )
    return {
        "environment": {
            "device": device,
            "device_name": "NVIDIA H100 80GB HBM3",
            "torch": "2.11",
            "triton": "3.6",
            "cuda": "13.0",
            "python": "3.12",
            "cpu_threads": 16,
            "command": "test",
            "date": "today",
        },
        "quick": False,
        "results": results,
    }


def _rows(data, target):
    return [r for r in targets.evaluate(data) if r.target == target]


def _record(data, suite, **params):
    return targets._find(data["results"], suite, **params)


def test_all_targets_pass():
    rows = targets.evaluate(passing())
    assert rows and all(r.status == "PASS" for r in rows), [
        (r.target, r.check, r.setting, r.note) for r in rows if r.status != "PASS"
    ]
    assert targets.summary(rows) == {t: "PASS" for t in targets.TARGETS}
    assert {r.target for r in rows} == set(targets.TARGETS)
    # 4 settings x 2 checks; 4 settings; 8 sizes + the all-sizes row; 2; 2
    assert [len(_rows(passing(), t)) for t in targets.TARGETS] == [8, 4, 9, 2, 2]
    text = targets.format_targets(passing())
    assert "| 1. decorrelation fwd+bwd speed, N=256 | PASS |" in text and "FAIL" not in text and "NOT RUN" not in text
    t4 = _rows(passing(), 4)
    assert t4[0].measured.startswith("20.00x") and "75% of floor" in t4[1].measured  # 0.15 / 0.2
    assert "2481 GB/s" in t4[1].context  # 372.2 MB in 0.15 ms


def test_each_target_fails_with_what_would_pass():
    data = passing()
    _record(data, "decorrelation", N=256, D=512, dtype="bf16")["impls"]["triton"]["median_ms"] = (
        0.25  # 4x ref, 1.2x compiled
    )
    _record(data, "decorrelation", N=8192, D=4096, dtype="fp32")["impls"]["triton"]["median_ms"] = 1.5  # 1.5x floor
    rec3 = _record(data, "decorrelation", N=256, D=8192, dtype="bf16")
    rec3["impls"]["triton"]["peak_mb"] = 2 * targets._bound_mb(256, 8192, "bf16")
    _record(data, "masking", B=256)["impls"]["ours"]["median_ms"] = 0.5  # 8x reference but 30% of the copy bandwidth
    _record(data, "train", B=256)["impls"]["saliencydecor"]["median_ms"] = 30.0  # 3x standard; parts 2.7%
    rows = targets.evaluate(data)
    fails = {(r.target, r.check, r.setting): r for r in rows if r.status == "FAIL"}
    assert set(fails) == {
        (1, "triton vs eager reference", "N=256 D=512 bf16"),
        (1, "triton vs torch.compile(reference)", "N=256 D=512 bf16"),
        (2, "triton vs cuBLAS matmuls (D x D route)", "N=8192 D=4096 fp32"),
        (3, "triton peak vs N*D + min(N,D)^2 elements", "N=256 D=8192 bf16"),
        (3, "triton peak within the bound, every measured size", "all sizes"),
        (4, "ours GB/s vs copy_floor GB/s (bytes that must move)", "B=256 3x224x224 pixel k=50%"),
        (5, "saliencydecor step vs cross-entropy step", "resnet20 B=256 3x32x32 amp=bf16"),
    }
    assert fails[(1, "triton vs eager reference", "N=256 D=512 bf16")].note.startswith(
        "triton must reach 0.200 ms (1.25x faster"
    )
    assert (
        "triton must reach 1.300 ms" in fails[(2, "triton vs cuBLAS matmuls (D x D route)", "N=8192 D=4096 fp32")].note
    )
    assert "2.00x it" in fails[(3, "triton peak vs N*D + min(N,D)^2 elements", "N=256 D=8192 bf16")].note
    assert "7 of 8 within" == fails[(3, "triton peak within the bound, every measured size", "all sizes")].measured
    assert (
        "ours must reach 0.300 ms"
        in fails[(4, "ours GB/s vs copy_floor GB/s (bytes that must move)", "B=256 3x224x224 pixel k=50%")].note
    )
    assert (
        "must reach 25.000 ms"
        in fails[(5, "saliencydecor step vs cross-entropy step", "resnet20 B=256 3x32x32 amp=bf16")].note
    )
    assert targets.summary(rows) == {1: "FAIL", 2: "FAIL", 3: "FAIL", 4: "FAIL", 5: "FAIL"}
    text = targets.format_targets(data, rows)
    assert "## Missed: what would pass" in text and "| **FAIL** |" in text


def test_share_of_the_step_fails_at_ten_percent():
    data = passing()
    _record(data, "train", B=256)["impls"]["part:mask_features"]["median_ms"] = 2.0  # (2.0 + 0.3) / 22 = 10.5%
    (ratio, share) = _rows(data, 5)
    assert ratio.status == "PASS" and share.status == "FAIL" and share.measured == "10.5%"


def test_missing_records_skips_and_errors_are_not_run():
    data = passing()
    data["results"] = [r for r in data["results"] if r["suite"] not in ("masking", "train")]
    rec = _record(data, "decorrelation", N=256, D=2048, dtype="fp32")
    del rec["impls"]["triton"]
    rec["skipped"]["triton"] = "no triton"
    _record(data, "decorrelation", N=256, D=8192, dtype="fp32")["impls"]["matmul_floor"] = {"error": "out of memory"}
    rows = targets.evaluate(data)
    by = {(r.target, r.setting): r for r in rows}
    assert (
        by[(1, "N=256 D=2048 fp32")].status == "NOT RUN"
        and "triton skipped: no triton" in by[(1, "N=256 D=2048 fp32")].note
    )
    assert by[(3, "N=256 D=2048 fp32")].status == "NOT RUN"
    assert (
        by[(2, "N=256 D=8192 fp32")].status == "NOT RUN"
        and "matmul_floor failed: out of memory" in by[(2, "N=256 D=8192 fp32")].note
    )
    assert all(r.status == "NOT RUN" and r.note == "setting not in the results" for r in rows if r.target in (4, 5))
    summary = targets.summary(rows)
    assert summary[4] == summary[5] == "NOT RUN" and summary[1] == "NOT RUN" and summary[3] == "NOT RUN"
    assert "## Not run" in targets.format_targets(data, rows)


def test_cpu_results_show_figures_without_a_verdict():
    data = passing(device="cpu")
    rows = targets.evaluate(data)
    assert all(r.status == "NOT RUN" for r in rows)
    t1 = _rows(data, 1)[0]
    assert t1.measured.startswith("10.00x") and "targets are for a CUDA GPU" in t1.note


def test_masking_on_the_reference_backend_is_not_judged():
    data = passing()
    _record(data, "masking", B=256)["params"]["backend"] = "reference"
    assert all(r.status == "NOT RUN" and "not the CUDA kernels" in r.note for r in _rows(data, 4))


def test_mb_moved_falls_back_to_the_shapes():
    rec = {"params": {**targets.T4_SETTING}}
    x = 256 * 3 * 224 * 224
    assert targets._mb_moved(rec) == pytest.approx((2 * x * 4 + 256 * 224 * 224 * 5) / 1e6)
    import torch

    xs, sal = torch.empty(2, 3, 4, 4), torch.empty(2, 4, 4)
    assert masking.bytes_moved(xs, sal) == 2 * 96 * 4 + 32 * 5
    assert targets._bound_mb(256, 512, "bf16") == pytest.approx(decorrelation.bound_mb(256, 512, torch.bfloat16))


def test_train_at_another_setting_is_shown_not_judged():
    data = passing()
    rec = _record(data, "train", B=256)
    rec["params"].update(B=16, amp="off")
    rows = _rows(data, 5)
    assert [r.status for r in rows] == ["NOT RUN", "NOT RUN"] and "B=16 amp=off" in rows[0].note
    assert rows[0].measured.startswith("2.20x")


def test_evaluate_rejects_what_is_not_a_results_json():
    with pytest.raises(ValueError, match="results"):
        targets.evaluate({"environment": {}})
    with pytest.raises(TypeError, match="data must be a dict"):
        targets.evaluate([])


def test_merge_later_records_replace_earlier_ones(tmp_path):
    a, b = passing(), passing()
    a["environment"]["command"] = "first"
    b["environment"]["command"] = "second"
    b["results"] = [copy.deepcopy(_record(b, "train", B=256))]
    b["results"][0]["impls"]["standard"]["median_ms"] = 99.0
    b["results"].append(
        {"suite": "metrics", "params": {"x": 1}, "baseline": "q", "impls": {"q": _impl(1.0)}, "skipped": {}}
    )
    merged = targets.merge([a, b])
    assert len(merged["results"]) == len(a["results"]) + 1
    assert [r["suite"] for r in merged["results"]][-2:] == ["train", "metrics"]  # replaced in place, new one appended
    assert _record(merged, "train")["impls"]["standard"]["median_ms"] == 99.0
    assert merged["environment"]["command"] == "merged: first; second" and len(merged["environments"]) == 2
    with pytest.raises(ValueError, match="different devices"):
        targets.merge([a, passing(device="cpu")])
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    out = targets.merge_files([pa, tmp_path / "missing.json", pb], tmp_path / "m" / "all.json")
    assert json.loads(out.read_text())["results"] == merged["results"]
    assert "## train" in (tmp_path / "m" / "all.md").read_text()


def test_cli_checks_merges_and_writes_the_table(tmp_path, capsys):
    good, bad = passing(), passing()
    _record(bad, "train", B=256)["impls"]["saliencydecor"]["median_ms"] = 40.0
    pg, pb = tmp_path / "good.json", tmp_path / "bad.json"
    pg.write_text(json.dumps(good))
    pb.write_text(json.dumps(bad))
    assert targets.main([str(pg)]) == 0
    assert "| 5. SaliencyDecor training step | PASS |" in (tmp_path / "good-targets.md").read_text()
    assert targets.main([str(pb)]) == 0  # a missed target is a finding, not an error
    assert targets.main([str(pb), "--strict"]) == 1
    assert "| 5. SaliencyDecor training step | FAIL |" in capsys.readouterr().out
    assert (
        targets.main([str(pb), str(pg), "--merge", str(tmp_path / "both.json"), "--strict"]) == 0
    )  # good's records win
    assert (tmp_path / "both-targets.md").is_file() and (tmp_path / "both.md").is_file()
    with pytest.raises(SystemExit):
        targets.main([str(pg), str(pb)])  # several files need --merge
    with pytest.raises(SystemExit):
        targets.main([])


def test_suite_part_slices_and_restores():
    full, quick = list(decorrelation.SIZES), list(decorrelation.QUICK_SIZES)
    parts = []
    for i in (1, 2, 3):
        with targets.suite_part("decorrelation", i, 3):
            parts.append(list(decorrelation.SIZES))
            assert len(decorrelation.QUICK_SIZES) in (1, 2)
    assert [size for part in parts for size in part] == full and all(parts)
    assert decorrelation.SIZES == full and decorrelation.QUICK_SIZES == quick
    with targets.suite_part("metrics", 1, 1):  # one part: anything goes, nothing changes
        pass
    with pytest.raises(ValueError, match="cannot be split"), targets.suite_part("metrics", 1, 2):
        pass
    with pytest.raises(ValueError, match="1 <= I <= K"), targets.suite_part("masking", 3, 2):
        pass
    with targets.target_settings():
        assert decorrelation.SIZES == targets.DECORRELATION_SIZES and masking.FULL_SETTINGS == targets.MASKING_SETTINGS
    assert decorrelation.SIZES == full
    assert set(targets.DECORRELATION_SIZES) <= set(decorrelation.SIZES)
    assert set(targets.MASKING_SETTINGS) <= set(masking.FULL_SETTINGS)


@pytest.fixture(scope="module")
def train_quick_run(tmp_path_factory):
    """One CPU quick run of the ``train`` suite (batch 16, float32: a few seconds) written by the runner."""
    out = tmp_path_factory.mktemp("train")
    assert runner.main(suites=["train"], device="cpu", quick=True, out=out, command="test", progress=False) == 0
    return out / "cpu-quick.json"


def test_targets_show_the_quick_figures_without_a_verdict(train_quick_run):
    text, rows = targets.check_file(train_quick_run)
    t5 = [r for r in rows if r.target == 5]
    assert len(t5) == 2 and all(r.status == "NOT RUN" for r in t5)
    assert t5[0].measured.endswith(" ms)") and t5[1].measured.endswith("%")
    assert "B=16" in t5[0].setting and "CUDA" in t5[0].note
    assert (train_quick_run.parent / "cpu-quick-targets.md").read_text() == text
    assert targets.summary(rows) == {t: "NOT RUN" for t in targets.TARGETS}
