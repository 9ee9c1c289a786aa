"""Training that survives faults: exact resume after SIGKILL, clear errors for wrong or damaged
checkpoints, a clear stop on divergence, gradient clipping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sdecor.losses import SaliencyDecor, SaliencyGuidedTraining, Standard
from sdecor.models import SmallCNN
from sdecor.train import TrainingDiverged, fit, save_checkpoint, set_seed
from sdecor.train.checkpoint import read_checkpoint
from sdecor.train.divergence import CHECK_EVERY_CUDA, NonFiniteWatch, check_interval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ----------------------------------------------------------------------------- kill and resume

# A child process (CPU, one thread) training a seeded tiny SmallCNN with fit(checkpoint_dir=...).
# "kill": first an uninterrupted run to the end (its losses and weights saved), then the same run
# afresh, which announces optimizer step KILL_AT on stdout and waits for the parent's SIGKILL.
# "resume": fit(resume=True) on the killed run's checkpoint directory, to the end.
WORKER = textwrap.dedent(
    """
    import signal, sys
    import torch
    torch.set_num_threads(1)
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from sdecor import losses
    from sdecor.data import make_loaders
    from sdecor.models import SmallCNN
    from sdecor.train import fit, set_seed

    name, mode, ckdir, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

    def run(ckdir, resume):
        set_seed(0)
        model = SmallCNN(width=4)
        train, _, _ = make_loaders("digits-in-clutter", batch_size=8, n_train=32, n_test=8, size=16)
        objective = {
            "standard": losses.Standard,
            "saliencydecor": losses.SaliencyDecor,
            "saliencydecor_ramp": lambda: losses.SaliencyDecor(consistency_ramp_steps=10),  # 12 steps in all
        }[name]()
        h = fit(model, objective, train, epochs=3, lr=0.05, seed=0, device="cpu", checkpoint_dir=ckdir,
                resume=resume, progress=False)
        return model, [e["loss"] for e in h.epochs]

    if mode == "kill":
        model, losses_ = run(ckdir + "-clean", False)
        torch.save({"state": model.state_dict(), "losses": losses_}, out)
        steps = [0]
        def hook(optimizer, args, kwargs):
            steps[0] += 1
            if steps[0] == kill_at:
                print("KILL-POINT", flush=True)
                signal.pause()
        register_optimizer_step_post_hook(hook)
        run(ckdir, False)
        print("NOT KILLED", flush=True)
    else:
        model, losses_ = run(ckdir, True)
        torch.save({"state": model.state_dict(), "losses": losses_}, out)
    """
)


def _child(tmp_path, *args, kill=False, timeout=600):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT)
    with open(tmp_path / "stderr.txt", "w+") as err:  # a file: a full stderr pipe could block the child
        proc = subprocess.Popen(
            [sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
        lines = []
        if kill:
            for line in proc.stdout:  # until the child reaches the kill point (or ends)
                lines.append(line)
                if line.strip() == "KILL-POINT":
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        out, _ = proc.communicate(timeout=timeout)
        err.seek(0)
        detail = "".join(lines) + (out or "") + err.read()[-3000:]
    expected = -signal.SIGKILL if kill else 0
    assert proc.returncode == expected, f"child exited with {proc.returncode}, expected {expected}: {detail}"


@pytest.mark.parametrize("objective", ["standard", "saliencydecor", "saliencydecor_ramp"])
def test_resume_after_sigkill_repeats_the_uninterrupted_run(tmp_path, objective):
    """3 epochs of 4 steps; SIGKILL after step 6 (in epoch 2), resume from the epoch-1 checkpoint."""
    ckdir = tmp_path / "ck"
    _child(tmp_path, objective, "kill", ckdir, tmp_path / "clean.pt", 6, kill=True)
    assert read_checkpoint(str(ckdir / "last.pt"))["epoch"] == 1  # killed in epoch 2
    _child(tmp_path, objective, "resume", ckdir, tmp_path / "resumed.pt", 0)
    clean = torch.load(tmp_path / "clean.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert resumed["losses"] == clean["losses"]  # every epoch's mean loss, bit for bit
    a, b = clean["state"], resumed["state"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs by {(a[k].double() - b[k].double()).abs().max().item()}"


# ----------------------------------------------------------------------------- wrong or damaged checkpoints


def _data(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _model(width=4):
    set_seed(0)
    return SmallCNN(width=width)


def _fit(model, objective, ckdir, epochs=1, resume=False, **kw):
    return fit(model, objective, _data(), epochs=epochs, checkpoint_dir=str(ckdir), resume=resume, progress=False, **kw)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    _fit(_model(4), Standard(), tmp_path)
    with pytest.raises(ValueError, match=r"another .*SmallCNN model .*shapes differ: block1"):
        _fit(_model(8), Standard(), tmp_path, epochs=2, resume=True)
    other = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(ValueError, match=r"written for model sdecor\.models\.small\.SmallCNN, not torch\..*Sequential"):
        _fit(other, Standard(), tmp_path, epochs=2, resume=True)


def test_resume_refuses_a_checkpoint_of_another_objective(tmp_path):
    _fit(_model(), Standard(), tmp_path)

    class Other(Standard):
        pass

    with pytest.raises(ValueError, match=r"written for objective sdecor\.losses\.standard\.Standard, not .*Other"):
        _fit(_model(), Other(), tmp_path, epochs=2, resume=True)


def test_resume_refuses_a_checkpoint_of_other_objective_options(tmp_path):
    _fit(_model(), SaliencyGuidedTraining(mask_fraction=0.1), tmp_path)
    with pytest.raises(ValueError, match=r"objective SaliencyGuidedTraining\(mask_fraction=0.1.*\), not .*0.25"):
        _fit(_model(), SaliencyGuidedTraining(mask_fraction=0.25), tmp_path, epochs=2, resume=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_gives_a_short_clear_error(tmp_path, damage):
    _fit(_model(), Standard(), tmp_path)
    path = tmp_path / "last.pt"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(ValueError, match="truncated or corrupted") as info:
        _fit(_model(), Standard(), tmp_path, epochs=2, resume=True)
    message = str(info.value)
    assert str(path) in message and len(message) < 500 and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no page of torch's traceback


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    path = tmp_path / "last.pt"
    save_checkpoint(str(path), model, {"n": 1})
    good = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(str(path), model, {"n": 2})
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary file left behind


def test_checkpoint_holds_the_whole_training_state(tmp_path):
    _fit(_model(), Standard(), tmp_path, epochs=2)
    ck = read_checkpoint(str(tmp_path / "last.pt"))
    for key in ("model_state", "optimizer", "scheduler", "objective_state", "epoch", "step", "total_steps"):
        assert key in ck, key
    assert ck["epoch"] == 2 and ck["step"] == 4 and ck["total_steps"] == 4
    assert len(ck["history"]["epochs"]) == 2
    (state,) = ck["random_state"]
    assert set(state) == {"python", "numpy", "torch", "cuda", "loader", "objective"}
    assert "generator" in state["loader"]  # the DataLoader's generator decides the next epoch's order
    assert ck["run_identity"]["model_class"].endswith("SmallCNN")


# ----------------------------------------------------------------------------- divergence


class _PartGoesNaN(nn.Module):
    """CE plus a "decor" part that turns NaN from call ``at`` on (counted from 1)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, model, images, labels):
        self.calls += 1
        logits = model(images)
        ce = nn.functional.cross_entropy(logits, labels)
        decor = torch.zeros((), requires_grad=True) * 0 + (float("nan") if self.calls >= self.at else 0.0)
        total = ce + decor
        return total, {"ce": ce.detach(), "decor": decor.detach(), "total": total.detach(), "logits": logits.detach()}


def test_divergence_stops_naming_epoch_step_and_part_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged) as info:
        _fit(_model(), _PartGoesNaN(at=3), tmp_path, epochs=3, schedule="constant")  # 2 steps per epoch
    err = info.value
    message = str(err)
    assert "epoch 2, step 1 (global step 3)" in message
    assert "decor became non-finite" in message and "still finite then: ce" in message
    for remedy in ("lower the learning rate", "max_grad_norm", "float32"):
        assert remedy in message
    assert (err.epoch, err.step, err.global_step, err.parts) == (2, 1, 3, ["decor"])
    assert err.checkpoint == str(tmp_path / "last.pt") and "last good checkpoint is kept" in message
    assert read_checkpoint(err.checkpoint)["epoch"] == 1
    assert isinstance(err, FloatingPointError)


def test_saliencydecor_at_a_huge_learning_rate_stops_with_the_divergence_message(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch \d+, step \d+") as info:
        _fit(_model(), SaliencyDecor(), tmp_path, epochs=3, lr=1e5)
    message = str(info.value)
    assert "the objective failed on non-finite values (ValueError: saliency must not contain NaN)" in message
    assert "lower the learning rate" in message and "last good checkpoint is kept" in message
    assert isinstance(info.value.__cause__, ValueError)  # the original error stays attached


def test_watch_reports_the_components_first_and_ignores_finite_steps():
    watch = NonFiniteWatch(torch.device("cpu"))
    watch.start_epoch(1, 0)
    ok = {"loss": torch.tensor(1.0), "ce": torch.tensor(1.0), "decor": torch.tensor(0.5)}
    for _ in range(3):
        watch.update(ok)
    watch.check()
    watch.update({"loss": torch.tensor(float("inf")), "ce": torch.tensor(1.0), "decor": torch.tensor(float("inf"))})
    watch.update({"loss": torch.tensor(float("nan")), "ce": torch.tensor(float("nan")), "decor": torch.tensor(0.0)})
    assert watch.diverged_at() == (4, ["loss", "decor"])
    with pytest.raises(TrainingDiverged, match=r"step 4 \(global step 4\): decor became non-finite") as info:
        watch.check()
    assert info.value.parts == ["decor"]


def test_watch_takes_names_in_any_order_and_subset():
    watch = NonFiniteWatch(torch.device("cpu"))
    watch.start_epoch(3, 10)
    watch.update({"loss": torch.tensor(1.0), "ce": torch.tensor(1.0), "decor": torch.tensor(0.5)})
    watch.update({"grad_norm": torch.tensor(2.0)}, count=False)
    watch.update({"decor": torch.tensor(0.5), "loss": torch.tensor(1.0)})  # a subset, out of order
    watch.update({"grad_norm": torch.tensor(float("nan"))}, count=False)
    watch.update({"decor": torch.tensor(float("nan")), "loss": torch.tensor(1.0)})
    assert watch.diverged_at() == (12, ["grad_norm"])
    with pytest.raises(TrainingDiverged, match=r"epoch 3, step 2 \(global step 12\): grad_norm became"):
        watch.check()


def test_check_interval():
    assert check_interval(torch.device("cpu")) == 1
    assert check_interval(torch.device("cuda")) == CHECK_EVERY_CUDA > 1


@pytest.mark.cuda
def test_watch_update_does_not_sync_the_device(cuda_device):
    watch = NonFiniteWatch(cuda_device)
    watch.start_epoch(1, 0)
    loss = torch.ones((), device=cuda_device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            watch.update({"loss": loss * 2, "ce": loss})
            watch.update({"grad_norm": loss}, count=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert watch.diverged_at() is None


# ----------------------------------------------------------------------------- gradient clipping


def test_max_grad_norm_clips_every_step(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    norms = []

    def record(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    optimizer.register_step_pre_hook(record)
    fit(model, Standard(), _data(), epochs=2, optimizer=optimizer, max_grad_norm=1e-3, progress=False)
    assert len(norms) == 4 and max(norms) <= 1e-3 * (1 + 1e-4)


def test_max_grad_norm_arguments():
    with pytest.raises(ValueError, match="max_grad_norm"):
        fit(_model(), Standard(), _data(), max_grad_norm=-1.0, progress=False)
    with pytest.raises(ValueError, match="max_grad_norm only"):
        fit(_model(), Standard(), _data(), max_grad_norm=1.0, grad_clip=1.0, progress=False)
