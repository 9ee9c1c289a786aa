"""bench/tune_decorrelation.py: argument errors, and a quick run on tiny shapes (the Triton
interpreter on CPU, the GPU on a CUDA machine) with a right, a wrong-tile and a skipped candidate."""

import json

import pytest
import torch
import tune_decorrelation as tune  # bench/tune_decorrelation.py (bench/ is on sys.path: bench/tests/conftest.py)

from sdecor.ops.decorrelation import triton as DT

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not DT.can_run(torch.zeros(2, 2, device=DEVICE))[0], reason="the Triton kernels cannot run here"
)


def test_parse_settings():
    assert tune.parse_settings("256x512:bf16") == [(256, 512, "bf16")]
    assert tune.parse_settings("24x40, 8192x4096:fp16") == [(24, 40, "fp32"), (24, 40, "bf16"), (8192, 4096, "fp16")]
    for bad in ("256-512", "256x512:int8", "1x8", " , "):
        with pytest.raises(ValueError, match="--settings"):
            tune.parse_settings(bad)


def test_argument_errors(tmp_path, capsys):
    for argv in (
        ["--settings", "256-512"],
        ["--candidates", "{not json"],
        ["--candidates", '{"gram_block": 32}'],  # one dict, not a list
        ["--device", "tpu"],
    ):
        with pytest.raises(SystemExit) as info:
            tune.main([*argv, "--quick", "--out", str(tmp_path)])
        assert info.value.code == 2, argv
    assert "--candidates must be a JSON list of objects" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cpu_without_quick_exits_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        tune.main(["--out", str(tmp_path)])
    assert info.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not any(tmp_path.iterdir())


@needs_kernels
def test_quick_run_checks_times_and_writes_the_table(tmp_path, capsys):
    candidates = [{}, {"gram_block": 16, "gram_block_r": 16, "grad_block_j": 16}, {"gram_block": 48}]
    argv = ["--quick", "--device", DEVICE, "--settings", "24x40:fp32", "--time-s", "0", "--out", str(tmp_path)]
    assert tune.main([*argv, "--candidates", json.dumps(candidates)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].startswith("tune-") and files[0].endswith("-quick.json")
    data = json.loads((tmp_path / files[0]).read_text())
    (record,) = data["settings"]
    assert (record["N"], record["D"], record["dtype"], record["route"]) == (24, 40, "fp32", "N")
    assert record["default"]["gram_block"] > 0  # select_config's choice is recorded
    default, small, bad = record["candidates"]
    assert [c["config"] for c in record["candidates"]] == candidates
    for c in (default, small):
        assert c["status"] == "ok" and c["loss_err"] < 1e-5 and c["grad_err"] < 1e-4 and c["median_ms"] > 0
    assert default["vs_default"] == 1.0 and small["vs_default"] > 0
    assert bad["status"].startswith("error: ") and "median_ms" not in bad  # 48 is no power of two
    table = (tmp_path / files[1]).read_text()
    assert "## N=24 D=40 fp32 (route N)" in table and "| select_config | ok |" in table
    assert table in capsys.readouterr().out


@needs_kernels
def test_spent_budget_runs_nothing(tmp_path):
    argv = ["--quick", "--device", DEVICE, "--settings", "24x40:fp32", "--budget-s", "-1", "--out", str(tmp_path)]
    assert tune.main(argv) == 1  # no candidate ran, so none passed
    (path,) = tmp_path.glob("*.json")
    (record,) = json.loads(path.read_text())["settings"]
    assert [c["status"] for c in record["candidates"]] == ["not run (budget spent)"] * len(tune.QUICK_CANDIDATES)
