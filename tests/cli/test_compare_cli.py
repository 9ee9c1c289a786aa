"""``sdecor compare`` end to end (as a subprocess) and its argument errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sdecor.cli import main
from sdecor.experiments.runner import METRICS, format_table, summarize
from sdecor.losses import OBJECTIVES

TINY = [
    "--epochs",
    "1",
    "--seeds",
    "1",
    "--n-train",
    "64",
    "--n-test",
    "32",
    "--n-eval",
    "16",
    "--width",
    "4",
    "--batch-size",
    "32",
    "--threads",
    "2",
]


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "sdecor.cli", "compare", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_compare_one_epoch_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    proc = _cli(*TINY, "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # the table: every method, every column with its direction
    for method in OBJECTIVES:
        assert method in proc.stdout
    assert "higher is better" in proc.stdout and "lower is better" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == set(OBJECTIVES)
    assert results["directions"]["relevance_mass_accuracy"] == "higher"
    assert results["directions"]["deletion_auc"] == "lower"
    assert len(results["runs"]) == len(OBJECTIVES)
    for run in results["runs"]:
        assert set(METRICS) <= set(run["metrics"])
        assert 0.0 <= run["metrics"]["accuracy"] <= 1.0
        assert len(run["masked_accuracy"]["fractions"]) == len(run["masked_accuracy"]["accuracy"])
        assert len(run["history"]) == 1
    for name in ("saliency_maps.png", "masked_accuracy.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_compare_option_values_read_as_json_python_constants_or_text():
    from sdecor.commands.compare import _option

    assert _option("saliencydecor.lambda_decor=0.5") == ("saliencydecor", "lambda_decor", 0.5)
    assert _option("saliencydecor.feature_layer=None") == ("saliencydecor", "feature_layer", None)
    assert _option("saliencydecor.feature_layer=null") == ("saliencydecor", "feature_layer", None)
    assert _option("SGT.saliency_abs=True") == ("sgt", "saliency_abs", True)
    assert _option("saliencydecor.detach_target=false") == ("saliencydecor", "detach_target", False)
    assert _option("saliencydecor.feature_layer=block4") == ("saliencydecor", "feature_layer", "block4")


def test_compare_options_reach_the_objective(tmp_path):
    proc = _cli(
        *TINY,
        "--methods",
        "saliencydecor",
        "--set",
        "saliencydecor.lambda_decor=0.5",
        "--set",
        'saliencydecor.masked_bn="joint"',
        "--no-figures",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"][0]["options"] == {"lambda_decor": 0.5, "masked_bn": "joint"}
    from sdecor.losses import SaliencyDecor

    # the record says every option the objective ran with, the defaults included
    expected = {**SaliencyDecor().options(), "lambda_decor": 0.5, "masked_bn": "joint"}
    assert results["runs"][0]["resolved_options"] == expected
    assert expected["feature_layer"] == "conv" and expected["mask_fraction"] == 0.5
    assert not (tmp_path / "saliency_maps.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "positive integer"),
        (["--epochs", "two"], "positive integer"),
        (["--seeds", "x"], "number of seeds"),
        (["--seeds", "0"], "at least 1"),
        (["--methods", "standard,nope"], "unknown method"),
        (["--lr", "-1"], "positive number"),
        (["--set", "lambda_decor=1"], "METHOD.OPTION=VALUE"),
        (["--set", "saliencydecor.lambda_decor=-1"], "lambda_decor"),
        (["--set", "sgt.no_such_option=1"], "no_such_option"),
        (["--methods", "standard", "--set", "sgt.mask_fraction=0.5"], "not among --methods"),
        (["--device", "tpu"], "--device"),
        (["--model", "vgg99"], "unknown model"),
    ],
)
def test_bad_arguments_give_a_message_not_a_traceback(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path, capsys):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--out", str(path)])
    assert exc.value.code == 2
    assert "not a folder" in capsys.readouterr().err


def test_bad_dataset_path_in_a_subprocess(tmp_path):
    proc = _cli(
        "--dataset", str(tmp_path / "missing"), "--epochs", "1", "--seeds", "1", "--quiet", "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "sdecor compare: error:" in proc.stderr


def test_summary_and_table():
    records = [
        {"method": "a", "metrics": {m: 0.5 for m in METRICS}},
        {"method": "a", "metrics": {**{m: 0.7 for m in METRICS}, "pointing_game": None}},
    ]
    summary = summarize(records)
    assert summary["a"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["a"]["accuracy"]["std"] == pytest.approx(0.1414213, rel=1e-5)
    assert summary["a"]["pointing_game"]["n"] == 1
    table = format_table(summary)
    assert "0.600" in table and "acc" in table


def test_compare_under_torchrun_two_ranks(tmp_path):
    """Two gloo ranks, two methods: fit keeps the process group between runs (re-initialising it
    on the same rendezvous hung), only rank 0 prints and writes."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "-m",
            "sdecor.cli",
            "compare",
            "--epochs",
            "1",
            "--seeds",
            "1",
            "--n-train",
            "96",
            "--n-test",
            "48",
            "--n-eval",
            "16",
            "--methods",
            "standard,saliencydecor",
            "--out",
            str(out),
            "--threads",
            "1",
            "--no-figures",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"standard", "saliencydecor"}
