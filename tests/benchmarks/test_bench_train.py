"""The ``train`` benchmark suite: one quick CPU run through the runner (the targets check on such a
run is in bench/tests/test_targets.py)."""

import json
import math

import pytest
import torch

from sdecor.benchmarks import runner, train

NAMES = ["standard", "saliencydecor", "part:saliency", "part:mask_features", "part:decorrelation"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One CPU quick run of the suite (batch 16, float32: a few seconds) written by the runner."""
    out = tmp_path_factory.mktemp("train")
    assert runner.main(suites=["train"], device="cpu", quick=True, out=out, command="test", progress=False) == 0
    return out / "cpu-quick.json"


def test_suite_is_registered():
    assert "train" in runner.SUITES


def test_quick_run_times_every_implementation(quick_run):
    data = json.loads(quick_run.read_text())
    (record,) = data["results"]
    assert record["suite"] == "train" and record["baseline"] == "standard" and not record["skipped"]
    assert record["params"] == {
        "model": "resnet20",
        "image": "3x32x32",
        "B": train.QUICK_BATCH,
        "amp": "off",
        "features": f"{train.QUICK_BATCH}x64x8x8 fp32",
        "saliency": "1x32x32",
    }
    impls = record["impls"]
    assert list(impls) == NAMES
    ms = {name: r["median_ms"] for name, r in impls.items()}  # a KeyError here would mean an error entry
    # times are positive and finite (no wall-clock bound: a loaded machine takes many seconds per step)
    assert all(0 < t < math.inf for t in ms.values()), ms
    # a SaliencyDecor step does a saliency pass and two forwards: clearly more than one CE step,
    # and more than each of its parts
    assert ms["saliencydecor"] > 1.2 * ms["standard"], ms
    assert all(ms[p] < ms["saliencydecor"] for p in NAMES[2:]), ms
    assert impls["standard"]["speedup"] == 1.0


def test_run_honours_the_batch_and_each_impl_runs():
    (group,) = train.run(torch.device("cpu"), quick=True, batch=4)
    assert group.params["B"] == 4 and group.params["features"] == "4x64x8x8 fp32"
    assert [impl.name for impl in group.impls] == NAMES
    for impl in group.impls:
        impl.fn()
