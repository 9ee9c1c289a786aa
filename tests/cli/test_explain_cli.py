"""``sdecor explain``: PNGs from a checkpoint; clean messages for bad arguments."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdecor.cli import main
from sdecor.data import make_loaders
from sdecor.models import SmallCNN
from sdecor.train import save_checkpoint

ROOT = str(pathlib.Path(__file__).resolve().parents[2])  # the repository root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    _, _, info = make_loaders(batch_size=8, n_samples=16)
    path = tmp_path_factory.mktemp("ck") / "model.pt"
    save_checkpoint(str(path), SmallCNN(width=8).eval(), {"data": info.as_dict()})
    return str(path)


def _png_ok(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_explain_dataset_subprocess(checkpoint, tmp_path):
    out = tmp_path / "maps"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    cmd = [
        sys.executable,
        "-m",
        "sdecor.cli",
        "explain",
        "--checkpoint",
        checkpoint,
        "--dataset",
        "digits-in-clutter",
        "--n",
        "2",
        "--method",
        "gradient",
        "--target",
        "label",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert files == ["test000_gradient.png", "test001_gradient.png"]
    for f in files:
        _png_ok(out / f)
    assert "wrote 2 PNG" in proc.stdout


def test_explain_image_files(checkpoint, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        p = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    rc = main(
        [
            "explain",
            "--checkpoint",
            checkpoint,
            "--images",
            *paths,
            "--method",
            "input_x_gradient",
            "--target",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert sorted(os.listdir(out)) == ["a_input_x_gradient.png", "b_input_x_gradient.png"]
    _png_ok(out / "a_input_x_gradient.png")


def test_explain_method_options(checkpoint, tmp_path):
    rc = main(
        [
            "explain",
            "--checkpoint",
            checkpoint,
            "--dataset",
            "digits-in-clutter",
            "--n",
            "1",
            "--method",
            "smoothgrad",
            "--option",
            "n_samples=2",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0 and len(os.listdir(tmp_path)) == 1


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "nosuch"], "unknown method 'nosuch'"),
        (["--n", "0"], "expected a positive integer"),
        (["--target", "label"], "needs --dataset"),
        (["--target", "99"], "out of range"),
        (["--target", "cat"], "--target must be"),
        (["--option", "novalue"], "expected KEY=VALUE"),
        (["--option", "bogus=1"], "bad --option"),
        (["--device", "tpu:9"], "device"),
    ],
)
def test_bad_arguments(checkpoint, tmp_path, capsys, extra, message):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(img)
    err = _error(
        ["explain", "--checkpoint", checkpoint, "--images", str(img), "--out", str(tmp_path / "o"), *extra], capsys
    )
    assert message in err


def test_bad_sources(checkpoint, tmp_path, capsys):
    assert "one of the arguments --images --dataset is required" in _error(
        ["explain", "--checkpoint", checkpoint], capsys
    )
    err = _error(["explain", "--checkpoint", str(tmp_path / "missing.pt"), "--dataset", "digits-in-clutter"], capsys)
    assert "checkpoint not found" in err
    err = _error(["explain", "--checkpoint", checkpoint, "--images", str(tmp_path / "missing.png")], capsys)
    assert "image not found" in err
    err = _error(["explain", "--checkpoint", checkpoint, "--dataset", "no-such-data"], capsys)
    assert "unknown data set" in err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    err = _error(["explain", "--checkpoint", str(tmp_path / "junk.pt"), "--dataset", "digits-in-clutter"], capsys)
    assert "not a readable sdecor checkpoint" in err
