"""The benchmark runner: ratios, error capture, JSON and Markdown output."""

import json
import sys
import time
import types

import pytest
import torch

from sdecor.benchmarks import runner
from sdecor.benchmarks.common import Group, Impl, Measurement, measure, measure_interleaved, paired_ratio


def _fake_suite(device, quick):
    slow = Impl("slow", lambda: time.sleep(0.004))
    fast = Impl("fast", lambda: None)

    def broken():
        raise RuntimeError("kernel exploded\nsecond line")

    return [
        Group(
            suite="fake",
            params={"n": 64, "quick": quick},
            impls=[slow, fast, Impl("broken", broken)],
            baseline="slow",
            skipped={"gpu": "needs CUDA"},
        )
    ]


def test_measure_returns_sane_statistics():
    m = measure(lambda: torch.randn(32, 32).sum(), torch.device("cpu"), min_time_s=0.01)
    assert m.iters >= 3 and m.median_ms > 0 and m.iqr_ms >= 0 and m.peak_mb is None


def test_measure_interleaved_alternates_and_reports_failures():
    calls = []

    def make(name, seconds):
        def fn():
            calls.append(name)
            time.sleep(seconds)

        return fn

    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] > 4:  # passes warmup (2 calls) and two timed rounds, then fails
            raise RuntimeError("late failure")

    def broken():
        raise ValueError("at once")

    out = measure_interleaved(
        {"a": make("a", 0.002), "b": make("b", 0.0), "flaky": flaky, "broken": broken},
        torch.device("cpu"),
        min_time_s=0.0,
        min_rounds=6,
    )
    assert list(out) == ["a", "b", "flaky", "broken"]
    assert isinstance(out["a"], Measurement) and isinstance(out["b"], Measurement)
    assert out["a"].iters == out["b"].iters == 6
    assert out["a"].median_ms >= 2.0 > out["b"].median_ms
    assert isinstance(out["flaky"], RuntimeError) and isinstance(out["broken"], ValueError)
    timed = calls[4:]  # after the 2 + 2 warmup calls of a and b
    # the order rotates: round 0 starts with a, round 1 with b (flaky and broken aside)
    assert timed[0] == "a" and timed[1] == "b" and timed[2] == "b" and timed[3] == "a"


def test_runner_writes_tables_with_ratios(tmp_path, monkeypatch, capsys):
    module = types.ModuleType("sdecor.benchmarks.fake")
    module.run = _fake_suite
    monkeypatch.setitem(sys.modules, "sdecor.benchmarks.fake", module)
    monkeypatch.setattr(runner, "SUITES", ("fake",))
    assert runner.main(suites=["fake"], device="cpu", out=tmp_path, command="test", progress=False) == 0
    data = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert data["environment"]["command"] == "test" and data["quick"] is True
    (record,) = data["results"]
    impls = record["impls"]
    assert impls["slow"]["speedup"] == 1.0
    assert impls["fast"]["speedup"] > 10.0  # a no-op vs a 4 ms sleep
    assert impls["broken"]["error"] == "RuntimeError: kernel exploded"
    md = (tmp_path / "cpu-quick.md").read_text()
    assert "| n | quick | impl | ms | speed-up vs baseline | peak MB |" in md
    assert (
        "| 64 | True | **slow** (baseline) |" in md
        and "| 64 | True | broken | error (RuntimeError: kernel exploded) |" in md
    )
    assert "skipped" in md and "needs CUDA" in md
    assert "## fake" in capsys.readouterr().out


def test_unknown_suite_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="unknown benchmark suite"):
        runner.run_suites(["nope"], torch.device("cpu"), quick=True, progress=False)


def test_runner_reports_time_over_the_floor(tmp_path, monkeypatch):
    def suite(device, quick):
        return [
            Group(
                suite="floored",
                params={"n": 1},
                impls=[
                    Impl("ours", lambda: time.sleep(0.003)),
                    Impl("bare", lambda: time.sleep(0.002)),
                    Impl("theirs", lambda: time.sleep(0.006)),
                ],
                baseline="theirs",
                floor="bare",
            )
        ]

    module = types.ModuleType("sdecor.benchmarks.floored")
    module.run = suite
    monkeypatch.setitem(sys.modules, "sdecor.benchmarks.floored", module)
    monkeypatch.setattr(runner, "SUITES", ("floored",))
    runner.main(suites=["floored"], device="cpu", out=tmp_path, command="test", progress=False)
    (record,) = json.loads((tmp_path / "cpu-quick.json").read_text())["results"]
    assert record["floor"] == "bare"
    impls = record["impls"]
    assert impls["bare"]["vs_floor"] == 1.0
    assert 1.2 < impls["ours"]["vs_floor"] < 2.0 and impls["theirs"]["vs_floor"] > 2.5
    md = (tmp_path / "cpu-quick.md").read_text()
    assert "| n | impl | ms | speed-up vs baseline | time / floor | peak MB |" in md
    assert "| 1 | bare (floor) |" in md and "| 1 | **theirs** (baseline) |" in md


def test_paired_ratio_cancels_a_machine_that_changes_speed():
    # the machine runs 3x slower in rounds 2-4; ours always takes 1.1x the floor of the same round
    slow = [1, 1, 3, 3, 3, 1]
    floor = Measurement(0, 0, None, 6, tuple(10.0 * f for f in slow))
    ours = Measurement(0, 0, None, 6, tuple(11.0 * f for f in slow))
    assert paired_ratio(ours, floor) == pytest.approx(1.1)
    # unequal round counts: the ratio of the medians
    assert paired_ratio(Measurement(4.0, 0, None, 2, (3.0, 5.0)), Measurement(2.0, 0, None, 1, (2.0,))) == 2.0
