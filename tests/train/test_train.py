"""sdecor.train: the loop, checkpoints, determinism, DDP."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sdecor.data import make_loaders
from sdecor.losses import Standard
from sdecor.models import SmallCNN, build_model, unwrap_model
from sdecor.train import (
    History,
    evaluate_accuracy,
    fit,
    load_checkpoint,
    save_checkpoint,
    set_seed,
)


def _loaders(n=96, bs=32, seed=0):
    return make_loaders(batch_size=bs, seed=seed, n_samples=n)


def _tiny_model(seed=0):
    set_seed(seed)
    return SmallCNN(width=8)


def test_one_step_lowers_the_loss():
    set_seed(0)
    x = torch.rand(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    model = _tiny_model()
    obj = Standard()
    model.train()
    with torch.no_grad():
        before = obj(model, x, y)[0].item()
    hist = fit(model, obj, loader, epochs=1, lr=0.02, schedule="constant", progress=False, device="cpu")
    model.train()
    with torch.no_grad():
        after = obj(model, x, y)[0].item()
    assert after < before
    assert hist[0]["loss"] == pytest.approx(before, rel=1e-5)


def test_history_and_metrics():
    train, test, _ = _loaders()
    model = _tiny_model()
    calls = []

    def eval_fn(m):
        assert not m.training and not isinstance(m, nn.parallel.DistributedDataParallel)
        calls.append(1)
        return {"custom": 1.5}

    h = fit(
        model,
        Standard(),
        train,
        epochs=2,
        lr=0.05,
        eval_loader=test,
        eval_fn=eval_fn,
        progress=False,
        schedule="cosine",
    )
    assert isinstance(h, History) and len(h) == 2 and len(calls) == 2
    rec = h.last
    for key in ("epoch", "loss", "ce", "train_acc", "lr", "time_s", "eval_acc", "custom"):
        assert key in rec, key
    assert rec["epoch"] == 2 and 0 <= rec["train_acc"] <= 1 and 0 <= rec["eval_acc"] <= 1
    assert rec["custom"] == 1.5 and rec["loss"] == pytest.approx(rec["ce"])
    assert h.series("epoch") == [1, 2]
    assert History.from_dict(json.loads(json.dumps(h.to_dict()))).epochs == h.epochs
    assert not model.training


def test_parts_are_averaged_and_objective_module_parameters_train():
    class Obj(nn.Module):
        def __init__(self):
            super().__init__()
            self.temperature = nn.Parameter(torch.ones(()))

        def forward(self, model, images, labels):
            logits = model(images) / self.temperature
            ce = nn.functional.cross_entropy(logits, labels)
            return ce, {"ce": ce.detach(), "const": torch.tensor(2.0), "py": 3.0, "vector": torch.ones(3)}

    train, _, _ = _loaders()
    obj = Obj()
    h = fit(_tiny_model(), obj, train, epochs=1, progress=False)
    assert h[0]["const"] == pytest.approx(2.0) and h[0]["py"] == pytest.approx(3.0)
    assert "vector" not in h[0] and "train_acc" not in h[0]
    assert obj.temperature.item() != 1.0


def test_determinism_by_seed():
    def run(seed):
        train, _, _ = _loaders(seed=seed)
        model = _tiny_model(seed)
        fit(model, Standard(), train, epochs=2, seed=seed, progress=False)
        return model.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_channels_last_is_the_same_training_in_another_layout():
    seen = []

    def run(channels_last):
        train, _, _ = _loaders()  # a fresh loader: the same batches in the same order
        model = _tiny_model(0)
        hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        h = fit(model, Standard(), train, epochs=2, seed=0, progress=False, channels_last=channels_last)
        hook.remove()
        convs = [p for p in model.parameters() if p.ndim == 4]
        layouts = {p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs}
        return model, h, layouts

    plain, h_plain, layouts = run(False)
    assert seen and all(x.is_contiguous() for x in seen) and layouts == {False}
    seen.clear()
    last, h_last, layouts = run(True)
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in seen)
    assert layouts == {True}  # the model is left in channels-last format
    # the same arithmetic up to the order of float additions
    for a, b in zip(h_plain, h_last):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    for (name, a), b in zip(plain.state_dict().items(), last.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        fit(_tiny_model(), Standard(), _loaders()[0], channels_last="yes", progress=False)


def test_checkpoints_and_resume(tmp_path):
    train, test, info = _loaders()
    model = _tiny_model()
    meta = {"data": info.as_dict(), "objective": "ce"}
    fit(model, Standard(), train, epochs=1, checkpoint_dir=str(tmp_path), meta=meta, progress=False)
    assert (tmp_path / "last.pt").exists() and (tmp_path / "final.pt").exists()
    loaded, m = load_checkpoint(str(tmp_path / "final.pt"))
    assert isinstance(loaded, SmallCNN) and not loaded.training
    assert m["data"]["num_classes"] == 10 and m["model"]["name"] == "small_cnn"
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))

    # resume: a second call with more epochs continues from last.pt
    model2 = _tiny_model()
    h = fit(model2, Standard(), train, epochs=2, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    assert h.series("epoch") == [1, 2]
    ck = torch.load(str(tmp_path / "last.pt"), weights_only=True)
    assert ck["epoch"] == 2


def test_save_load_user_model(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    net = Net()
    path = save_checkpoint(str(tmp_path / "sub" / "net.pt"), net, {"note": "hi"})
    with pytest.raises(ValueError, match="pass the model"):
        load_checkpoint(path)
    other, meta = load_checkpoint(path, model=Net())
    assert torch.equal(other.fc.weight, net.fc.weight) and meta == {"note": "hi"}
    # a spec in meta is enough to rebuild a reference model
    path2 = save_checkpoint(
        str(tmp_path / "m.pt"),
        build_model("resnet20", num_classes=3),
        {"model": {"name": "resnet20", "kwargs": {"num_classes": 3}}},
    )
    assert load_checkpoint(path2)[0].fc.out_features == 3


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an sdecor checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))
    path = save_checkpoint(str(tmp_path / "small.pt"), SmallCNN(width=8))
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(path, model=SmallCNN(width=16))


def test_evaluate_accuracy():
    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float() + self.dummy

    x = torch.zeros(10, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(10).float()
    y = torch.arange(10)
    y[:3] = 9  # three wrong
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    m = Oracle().train()
    assert evaluate_accuracy(m, loader) == pytest.approx(0.7)
    assert m.training


def test_fit_argument_errors():
    train, _, _ = _loaders()
    model = _tiny_model()
    obj = Standard()
    with pytest.raises(TypeError):
        fit("model", obj, train)
    with pytest.raises(ValueError, match="schedule"):
        fit(model, obj, train, schedule="linear")
    with pytest.raises(ValueError, match="epochs"):
        fit(model, obj, train, epochs=0)
    with pytest.raises(ValueError, match="CUDA"):
        if torch.cuda.is_available():
            raise ValueError("CUDA (skip)")
        fit(model, obj, train, device="cuda")
    with pytest.raises(TypeError, match="objective must return"):
        fit(model, lambda m, x, y: m(x).sum(), train, progress=False)
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(model, lambda m, x, y: (m(x).sum() * float("nan"), {}), train, progress=False, epochs=1)


def test_max_steps_and_progress_bar(capsys):
    train, _, _ = _loaders(n=96, bs=16)
    h = fit(_tiny_model(), Standard(), train, epochs=3, max_steps=8, progress=True)
    assert len(h) == 2  # 6 steps per epoch: the second epoch stops after 2 steps
    assert "epoch 1/3" in capsys.readouterr().err


def test_unwrap_model():
    m = SmallCNN(width=8)
    assert unwrap_model(nn.DataParallel(m)) is m and unwrap_model(m) is m


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from torch import nn
    from sdecor.data import make_loaders
    from sdecor.models import SmallCNN, get_layer, unwrap_model
    from sdecor.train import fit, set_seed, load_checkpoint

    out = sys.argv[1]

    class SaliencyLike(nn.Module):
        # two forward passes and a double backward, like saliency-guided objectives
        def forward(self, model, images, labels):
            feats = {}
            inner = unwrap_model(model)
            h = get_layer(inner, inner.feature_layer).register_forward_hook(lambda m, i, o: feats.setdefault("f", o))
            images = images.clone().requires_grad_(True)
            logits = model(images)
            h.remove()
            ce = nn.functional.cross_entropy(logits, labels)
            (g,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), images, create_graph=True)
            masked = images * (g.abs() > g.abs().flatten(1).median(1).values[:, None, None, None])
            kl = nn.functional.kl_div(model(masked).log_softmax(1), logits.softmax(1), reduction="batchmean")
            decor = feats["f"].var(0).mean()
            loss = ce + kl + 0.01 * decor + 0.01 * g.pow(2).mean()
            return loss, {"ce": ce.detach(), "kl": kl.detach(), "logits": logits.detach()}

    set_seed(0)
    model = SmallCNN(width=8)
    train, test, info = make_loaders(batch_size=16, n_samples=64, seed=0)
    h = fit(model, SaliencyLike(), train, epochs=2, lr=0.05, eval_loader=test, checkpoint_dir=os.path.join(out, "ck"),
            meta={"data": info.as_dict()}, progress=True)
    rank = int(os.environ["RANK"])
    torch.save({k: v for k, v in model.state_dict().items()}, os.path.join(out, f"state{rank}.pt"))
    with open(os.path.join(out, f"hist{rank}.json"), "w") as f:
        json.dump({"history": h.to_dict(), "world": int(os.environ["WORLD_SIZE"])}, f)
    """
)


def test_ddp_two_process_gloo(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    root = str(pathlib.Path(__file__).resolve().parents[2])  # the repository root
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s0 = torch.load(tmp_path / "state0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "state1.pt", weights_only=True)
    # gradients were all-reduced: the parameters agree across ranks
    for k in s0:
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(s0[k], s1[k], msg=k)
    h0 = json.loads((tmp_path / "hist0.json").read_text())
    assert h0["world"] == 2 and len(h0["history"]["epochs"]) == 2
    rec = h0["history"]["epochs"][-1]
    assert {"loss", "ce", "kl", "train_acc", "eval_acc"} <= set(rec)
    # rank 0 alone wrote the checkpoints and the log
    assert sorted(os.listdir(tmp_path / "ck")) == ["final.pt", "last.pt"]
    model, meta = load_checkpoint(str(tmp_path / "ck" / "final.pt"))
    assert meta["data"]["name"] == "digits-in-clutter"
    assert (proc.stderr + proc.stdout).count("epoch 2/2: ce ") == 1  # the per-epoch line, not the bar


DDP_OBJECTIVES_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from sdecor.data import make_loaders
    from sdecor.losses import build_objective
    from sdecor.models import SmallCNN
    from sdecor.train import fit, set_seed

    out, rank = sys.argv[1], int(os.environ["RANK"])
    train, _, _ = make_loaders(batch_size=16, n_samples=64, seed=0)
    result = {}
    for name in ("decov", "saliencydecor"):
        set_seed(0)
        model = SmallCNN(width=8)
        seen = []

        class Spy(torch.nn.Module):
            # records the type of the model the objective is called with
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, model, images, labels):
                seen.append(type(model).__name__)
                return self.inner(model, images, labels)

        h = fit(model, Spy(build_objective(name)), train, epochs=1, lr=0.05, progress=False)
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        torch.save(model.state_dict(), os.path.join(out, f"{name}{rank}.pt"))
        result[name] = {"keys": sorted(h.last), "hooks": hooks, "seen": sorted(set(seen))}
    with open(os.path.join(out, f"objectives{rank}.json"), "w") as f:
        json.dump(result, f)
    """
)


def test_objectives_under_ddp_two_process_gloo(tmp_path):
    script = tmp_path / "ddp_objectives.py"
    script.write_text(DDP_OBJECTIVES_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    root = str(pathlib.Path(__file__).resolve().parents[2])  # the repository root
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd + [str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"objectives{rank}.json").read_text())
        assert result["decov"]["seen"] == result["saliencydecor"]["seen"] == ["DistributedDataParallel"]
        assert {"ce", "decov", "train_acc"} <= set(result["decov"]["keys"])
        assert {"ce", "consistency", "decor", "train_acc"} <= set(result["saliencydecor"]["keys"])
        assert result["decov"]["hooks"] == result["saliencydecor"]["hooks"] == 0
    for name in ("decov", "saliencydecor"):  # gradients were all-reduced: the ranks agree
        s0 = torch.load(tmp_path / f"{name}0.pt", weights_only=True)
        s1 = torch.load(tmp_path / f"{name}1.pt", weights_only=True)
        for k in s0:
            if "running" not in k and "num_batches" not in k:
                torch.testing.assert_close(s0[k], s1[k], msg=k)


@pytest.mark.cuda
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_fit_on_cuda_with_amp(cuda_device, amp_dtype):
    train, test, _ = _loaders()
    model = _tiny_model()
    h = fit(model, Standard(), train, epochs=2, eval_loader=test, amp_dtype=amp_dtype, progress=False)
    assert next(model.parameters()).device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(h.series("loss"))))
    assert 0 <= h.last["eval_acc"] <= 1
