"""Kill-and-resume exactness: SIGKILL a training run part-way, resume it, compare with an uninterrupted run.

    python scripts/resume_exactness.py [--objective standard saliencydecor] [--epochs 4] [--kill-step 6]

For each objective, three child processes train the same seeded SmallCNN on a small slice of
digits-in-clutter on CPU with one thread (``fit(..., seed=0, checkpoint_dir=d)``):

1. an uninterrupted run to the end (``clean``);
2. a run that the parent kills with SIGKILL right after optimizer step ``--kill-step`` (by
   default inside epoch 2: the child announces the step on stdout and waits; the parent sends
   SIGKILL);
3. a run with ``resume=True`` on the killed run's checkpoint directory, to the end.

It prints, per objective, each run's per-epoch loss and the largest absolute difference between
the final weights (every tensor of the state dict) of the clean and the resumed run. Exact
resume prints ``max |w_clean - w_resumed| = 0``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.abspath(__file__)
ANNOUNCE = "KILL-POINT-REACHED"


def _build_objective(name: str):
    from sdecor import losses

    return {"standard": losses.Standard, "saliencydecor": losses.SaliencyDecor}[name]()


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    from sdecor.data import make_loaders
    from sdecor.models import SmallCNN
    from sdecor.train import fit, set_seed

    if args.kill_at:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def hook(optimizer, _args, _kwargs):
            hook.steps += 1
            if hook.steps == args.kill_at:
                print(ANNOUNCE, flush=True)
                signal.pause()  # the parent sends SIGKILL

        hook.steps = 0
        register_optimizer_step_post_hook(hook)

    set_seed(0)
    model = SmallCNN(width=8)
    train, _, _ = make_loaders("digits-in-clutter", batch_size=args.batch_size, n_train=args.n_train, n_test=16)
    objective = _build_objective(args.objective)
    history = fit(
        model,
        objective,
        train,
        epochs=args.epochs,
        lr=0.05,
        seed=0,
        device="cpu",
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        progress=False,
    )
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out)
    print(json.dumps({"loss": [round(e["loss"], 6) for e in history.epochs]}), flush=True)


def _run(argv: list[str], kill: bool) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, HERE, "--child", *argv], stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if kill and line.strip() == ANNOUNCE:
            os.kill(proc.pid, signal.SIGKILL)
            break
    rc = proc.wait()
    proc.stdout.close()
    if kill:
        if rc != -signal.SIGKILL:
            raise RuntimeError(f"the child to be killed exited with {rc}: {''.join(lines)}")
        return ""
    if rc != 0:
        raise RuntimeError(f"child {argv} failed with exit code {rc}")
    return lines[-1]


def measure(objective: str, epochs: int, kill_step: int, n_train: int, batch_size: int) -> dict:
    import torch

    common = ["--objective", objective, "--epochs", str(epochs), "--n-train", str(n_train)]
    common += ["--batch-size", str(batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        clean_w, resumed_w = os.path.join(tmp, "clean.pt"), os.path.join(tmp, "resumed.pt")
        ck_clean, ck_killed = os.path.join(tmp, "ck_clean"), os.path.join(tmp, "ck_killed")
        clean = json.loads(_run([*common, "--checkpoint-dir", ck_clean, "--out", clean_w], kill=False))
        _run([*common, "--checkpoint-dir", ck_killed, "--out", resumed_w, "--kill-at", str(kill_step)], kill=True)
        resumed = json.loads(_run([*common, "--checkpoint-dir", ck_killed, "--out", resumed_w, "--resume"], kill=False))
        a, b = torch.load(clean_w), torch.load(resumed_w)
        diff = max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)
    return {"clean_loss": clean["loss"], "resumed_loss": resumed["loss"], "max_abs_weight_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--objective", nargs="+", default=["standard", "saliencydecor"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--kill-step", type=int, default=6, help="SIGKILL after this optimizer step (default: in epoch 2)")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--kill-at", type=int, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.objective = args.objective[0]
        child(args)
        return
    steps = -(-args.n_train // args.batch_size)
    epoch = 1 + (args.kill_step - 1) // steps
    print(f"{args.epochs} epochs of {steps} steps; SIGKILL after step {args.kill_step} (epoch {epoch})")
    for name in args.objective:
        r = measure(name, args.epochs, args.kill_step, args.n_train, args.batch_size)
        print(f"{name}: clean loss per epoch   {r['clean_loss']}")
        print(f"{name}: resumed loss per epoch {r['resumed_loss']}")
        print(f"{name}: max |w_clean - w_resumed| = {r['max_abs_weight_diff']:.3g}")


if __name__ == "__main__":
    main()
