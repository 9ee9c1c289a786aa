"""The training loop: :func:`fit`, :func:`evaluate_accuracy`, :func:`set_seed`."""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .._validation import check_choice, check_int, check_positive_float
from ..models.introspection import unwrap_model
from .checkpoint import load_training_state, read_checkpoint, save_checkpoint
from .distributed import (
    distributed_loader,
    get_rank,
    init_distributed,
    loader_shuffles,
    resolve_device,
    want_distributed,
)
from .divergence import NonFiniteWatch, check_interval
from .history import History
from .run_state import gather_random_states, restore_random_state, run_identity

__all__ = ["SCHEDULES", "evaluate_accuracy", "fit", "set_seed"]

#: Learning-rate schedules of :func:`fit` (stepped per batch).
SCHEDULES = ("onecycle", "cosine", "constant")


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed python's, numpy's and torch's (CPU and all CUDA devices) random generators.

    ``deterministic=True`` also asks torch for deterministic algorithms (warn only), turns off
    the cuDNN benchmark and sets ``CUBLAS_WORKSPACE_CONFIG`` if unset.
    """
    check_int(seed, "seed")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of a batch: a ``(images, labels, ...)`` tuple/list or a dict with
    ``"images"``/``"image"`` and ``"labels"``/``"label"``; TypeError otherwise."""
    if isinstance(batch, dict):
        images = batch["images"] if "images" in batch else batch["image"]
        labels = batch["labels"] if "labels" in batch else batch["label"]
        return images, labels
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("batches must be (images, labels, ...) tuples")
    return batch[0], batch[1]


def _autocast(device: torch.device, enabled: bool, dtype: torch.dtype):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader, device=None, amp: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (batches ``(images, labels, ...)``), in [0, 1].

    The (unwrapped) model is put in eval mode for the pass and its previous mode restored;
    ``device`` defaults to the model's; ``amp`` runs the forward under bfloat16 autocast.

    Raises:
        ValueError: the loader yielded no samples.
    """
    model = unwrap_model(model)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    try:
        for batch in loader:
            images, labels = split_batch(batch)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with _autocast(device, amp, torch.bfloat16):
                logits = model(images)
            correct += (logits.argmax(1) == labels).sum()
            total += labels.shape[0]
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_accuracy: the loader yielded no samples")
    return float(correct) / total


# --------------------------------------------------------------------------- internals


def _make_schedule(schedule: str, optimizer, lr: float, total_steps: int):
    if schedule == "onecycle":
        if total_steps < 4:  # too short for a warm-up and a decay phase
            return None
        # 25 % warm-up, but at least 2 steps of it and 1 of decay (OneCycleLR divides by the phase lengths)
        pct = min(max(0.25, 2.0 / total_steps), 1.0 - 1.0 / total_steps)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g.get("max_lr", lr) for g in optimizer.param_groups] if len(optimizer.param_groups) > 1 else lr,
            total_steps=total_steps,
            pct_start=pct,
        )
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return None


def _fmt(record: dict) -> str:
    skip = {"epoch", "time_s"}
    items = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k not in skip]
    return " | ".join(items) + f" ({record.get('time_s', 0):.1f} s)"


def _check_fit_arguments(
    model, objective, train_loader, epochs, lr, schedule, amp_dtype, seed, max_steps, max_grad_norm, optimizer, eval_fn
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(objective):
        raise TypeError(
            f"objective must be callable (model, images, labels) -> (loss, parts), got {type(objective).__name__}"
        )
    if not hasattr(train_loader, "__iter__") or not hasattr(train_loader, "__len__"):
        raise TypeError(
            f"train_loader must be a DataLoader (iterable with a length), got {type(train_loader).__name__}"
        )
    check_int(epochs, "epochs", low=1)
    check_positive_float(lr, "lr")
    check_choice(schedule, "schedule", SCHEDULES)
    check_choice(amp_dtype, "amp_dtype", ("bfloat16", "float16"))
    check_int(seed, "seed")
    if max_steps is not None:
        check_int(max_steps, "max_steps", low=1)
    if max_grad_norm is not None:
        check_positive_float(max_grad_norm, "max_grad_norm")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError("eval_fn must be callable model -> dict[str, float]")
    if len(train_loader) == 0:
        raise ValueError("train_loader is empty")


@dataclass
class _Run:
    """Everything one optimisation step needs, and the step count."""

    model: nn.Module  # the bare model (checkpoints, evaluation)
    wrapped: nn.Module  # what the objective gets (DDP under torchrun)
    objective: Callable
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    params: list
    device: torch.device
    use_amp: bool
    dtype: torch.dtype
    max_grad_norm: float | None
    total_steps: int
    max_steps: int | None
    watch: NonFiniteWatch
    check_every: int  # steps between two reads of the divergence flags (one host sync each)
    channels_last: bool = False  # 4-D batches in channels-last memory format
    step: int = 0
    last_good: str | None = None  # the checkpoint a divergence leaves in place

    def done(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps


def _mixed_precision(device: torch.device, amp: bool | None, amp_dtype: str):
    """(autocast on?, autocast dtype, GradScaler): loss scaling only for float16 on CUDA."""
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    dtype = torch.bfloat16 if amp_dtype == "bfloat16" else torch.float16
    if use_amp and device.type == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and dtype == torch.float16 and device.type == "cuda")
    return use_amp, dtype, scaler


def _trainable_parameters(model: nn.Module, objective) -> list:
    """The model's trainable parameters, then the objective's own (if it is a module), each once."""
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(objective, nn.Module):
        seen = {id(p) for p in params}
        params += [p for p in objective.parameters() if p.requires_grad and id(p) not in seen]
    return params


def _resume(run: _Run, path: str) -> tuple[int, History, dict]:
    """Load ``last.pt`` into the run (checked to be this run's); returns (epochs done, history, checkpoint)."""
    ck = read_checkpoint(path, map_location=run.device)
    load_training_state(ck, path, run.model, run.objective, run.optimizer, run.scaler)
    run.step = int(ck.get("step", 0))
    run.last_good = path
    return int(ck["epoch"]), History.from_dict(ck.get("history", {})), ck


def _restore_schedule(run: _Run, ck: dict | None) -> None:
    """The saved schedule state when this call has the same number of steps (exact), else a replay."""
    if run.scheduler is not None and ck and ck.get("scheduler") and ck.get("total_steps") == run.total_steps:
        run.scheduler.load_state_dict(ck["scheduler"])
        run.optimizer.load_state_dict(ck["optimizer"])  # a new schedule resets the groups' lr and momentum
    else:
        _replay_schedule(run)


def _save_last(run: _Run, path: str, meta, history: History, epoch: int, loader, distributed: bool, main: bool):
    """Write ``last.pt``: everything the rest of the run depends on (every rank's random state)."""
    random_state = gather_random_states(loader, run.objective, distributed)  # after evaluation: the next epoch's
    if main:
        save_checkpoint(
            path,
            run.model,
            meta,
            optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict() if run.scheduler is not None else None,
            scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
            objective_state=run.objective.state_dict() if isinstance(run.objective, nn.Module) else None,
            epoch=epoch,
            step=run.step,
            total_steps=run.total_steps,
            history=history.to_dict(),
            random_state=random_state,
            run_identity=run_identity(run.model, run.objective),
        )
    run.last_good = path


def _monitored(loss: torch.Tensor, parts: dict) -> dict:
    """The loss and the objective's scalar tensor parts: what the divergence watch follows."""
    out = {"loss": loss}
    for k, v in parts.items():
        if k != "logits" and isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = v
    return out


def _replay_schedule(run: _Run) -> None:
    """Step a fresh schedule to ``run.step`` (it follows this call's epochs, not the resumed run's)."""
    if run.scheduler is None or not run.step:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(min(run.step, run.total_steps - 1)):
            run.scheduler.step()


class _EpochSums:
    """Batch-size-weighted running sums of the loss and scalar parts, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.has_logits = False

    def add(self, loss: torch.Tensor, parts: dict, labels: torch.Tensor) -> None:
        bs = labels.shape[0]
        w = float(bs)
        self.sums["loss"] = self.sums.get("loss", 0) + loss.detach().float() * w
        for k, v in parts.items():
            if k == "logits":
                if isinstance(v, torch.Tensor) and v.ndim == 2:
                    self.correct += (v.detach().argmax(1) == labels).sum()
                    self.has_logits = True
                continue
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    continue
                v = v.detach().float().reshape(())
            elif isinstance(v, (int, float)):
                v = torch.tensor(float(v), device=self.device)
            else:
                continue
            self.sums[k] = self.sums.get(k, 0) + v * w
        self.count += bs

    def record(self, distributed: bool) -> dict:
        """The epoch means (all-reduced over ranks when ``distributed``), and ``train_acc``."""
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k].reshape(()) for k in keys] + [self.correct.float(), self.count.float()])
        if distributed:
            torch.distributed.all_reduce(vec)
        n = max(float(vec[-1]), 1.0)
        record = {k: v / n for k, v in zip(keys, vec[: len(keys)].tolist())}
        if self.has_logits:
            record["train_acc"] = float(vec[-2]) / n
        return record


def _train_step(run: _Run, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One objective call, backward and optimizer (and schedule) step; the divergence watch is
    updated on the device and read every ``run.check_every`` steps."""
    try:
        with _autocast(run.device, run.use_amp, run.dtype):
            out = run.objective(run.wrapped, images, labels)
    except Exception as exc:  # NaN or exploded weights often fail inside the objective first
        run.watch.check_after_failure(exc, run.params, images, run.step, run.last_good)
        raise
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], dict)):
        raise TypeError("objective must return (loss, parts: dict)")
    loss, parts = out
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("objective must return a scalar loss tensor")
    run.watch.update(_monitored(loss, parts))
    if (run.step + 1) % run.check_every == 0:
        run.watch.check(run.last_good)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.max_grad_norm is not None:
        run.scaler.unscale_(run.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(run.params, run.max_grad_norm)
        if not run.scaler.is_enabled():  # with loss scaling an inf norm is a skipped step, not a divergence
            run.watch.update({"grad_norm": norm}, count=False)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.scheduler is not None and run.step < run.total_steps - 1:
        run.scheduler.step()
    run.step += 1
    return loss, parts


def _train_epoch(run: _Run, loader, bar) -> _EpochSums:
    """One pass over ``loader`` (stopping at ``max_steps``), in train mode."""
    run.model.train()
    if isinstance(run.objective, nn.Module):
        run.objective.train()
    sums = _EpochSums(run.device)
    for i, batch in enumerate(loader):
        if run.done():
            break
        images, labels = split_batch(batch)
        images = images.to(run.device, non_blocking=True)
        if run.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(run.device, non_blocking=True)
        loss, parts = _train_step(run, images, labels)
        sums.add(loss, parts, labels)
        if bar is not None:
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return sums


def _evaluate_epoch(model: nn.Module, record: dict, eval_loader, eval_fn, device, use_amp: bool, main: bool) -> None:
    """Add ``eval_acc`` (every rank) and ``eval_fn``'s entries (rank 0, model in eval mode) to ``record``."""
    if eval_loader is not None:
        record["eval_acc"] = evaluate_accuracy(model, eval_loader, device, amp=use_amp)
    if eval_fn is not None and main:
        model.eval()
        try:
            extra = eval_fn(model) or {}
        finally:
            model.train()
        record.update({k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v) for k, v in extra.items()})


# --------------------------------------------------------------------------- fit


def fit(
    model: nn.Module,
    objective: Callable,
    train_loader,
    *,
    epochs: int = 10,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "onecycle",
    device=None,
    amp: bool | None = None,
    amp_dtype: str = "bfloat16",
    seed: int = 0,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    eval_loader=None,
    eval_fn: Callable | None = None,
    progress: bool = True,
    meta: dict | None = None,
    distributed: bool | None = None,
    grad_clip: float | None = None,
    max_steps: int | None = None,
    max_grad_norm: float | None = None,
    channels_last: bool = False,
) -> History:
    """Train ``model`` in place with ``objective``; return the per-epoch :class:`History`.

    The model is trained in place; afterwards it is the bare model again (never left inside the
    DDP wrapper), in eval mode.

    Args:
        model: any ``nn.Module`` classifier; moved to ``device``.
        objective: ``objective(model, images, labels) -> (loss, parts)``, called in train mode
            inside the autocast region with the model as wrapped for training (a
            ``DistributedDataParallel`` when distributed): a plain function or an ``nn.Module``
            (then moved to the device, its parameters optimised with the model's and its state
            checkpointed). ``loss``: a scalar tensor; ``parts``: a dict whose scalar entries are
            logged (epoch means weighted by batch size) and whose ``"logits"`` (N, classes) entry
            gives ``train_acc``.
        train_loader: an iterable with a length yielding ``(images, labels, ...)`` batches (or
            dicts with ``images``/``labels``).
        epochs: number of epochs (>= 1).
        optimizer: any ``torch.optim.Optimizer``; default SGD with ``lr``, ``momentum``
            (Nesterov when > 0) and ``weight_decay`` on every trainable parameter. With a given
            optimizer ``lr`` is only used by the schedule.
        lr: learning rate (> 0); the peak rate of ``"onecycle"``.
        momentum, weight_decay: of the default SGD.
        schedule: ``"onecycle"`` (``OneCycleLR``, 25 % warm-up; none below 4 steps),
            ``"cosine"`` (cosine decay to 0) or ``"constant"``; stepped per batch.
        device: ``None``/``"auto"``: ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) if available,
            else cpu.
        amp: autocast; ``None``: on for CUDA, off on CPU.
        amp_dtype: ``"bfloat16"`` (no loss scaling) or ``"float16"`` (with ``GradScaler`` on
            CUDA; bfloat16 is used on CPU).
        seed: ``set_seed(seed + rank)`` at the start (weights are initialised before ``fit``:
            call ``set_seed`` before building the model for reproducible runs); also the seed of
            the ``DistributedSampler``.
        checkpoint_dir: rank 0 writes ``last.pt`` after every epoch (after evaluation) and
            ``final.pt`` at the end (model, meta, history). ``last.pt`` holds everything the rest
            of the run depends on: the model, optimizer, schedule, grad-scaler and objective
            states, the epoch and step counts, the history, ``meta``, the random states of
            python, numpy and torch (CPU and CUDA; every rank's), of the loader's generators (the
            next epochs' order) and of the objective's generators (e.g. the uniform fills), and
            the model's and objective's identity. Each write goes to a temporary file, flushed,
            then renamed over the previous one: a failed or killed write leaves the last good
            checkpoint in place.
        resume: continue from ``checkpoint_dir/last.pt`` if it exists. With the same arguments
            the resumed run repeats the uninterrupted one exactly (bitwise on CPU; on a GPU as
            far as its kernels are deterministic), from the end of the last finished epoch; a
            different ``epochs`` replays the schedule for the new length instead. A checkpoint
            of another model or objective raises ``ValueError`` naming the difference; a
            truncated or corrupted file a short ``ValueError``.
        eval_loader: after every epoch ``eval_acc`` = :func:`evaluate_accuracy` (on every rank,
            on the full loader).
        eval_fn: ``eval_fn(model) -> dict`` on rank 0 after every epoch, with the unwrapped
            model in eval mode (train mode restored afterwards); merged into the epoch's record.
        progress: a tqdm bar per epoch and a line per epoch on rank 0.
        meta: plain-Python dict stored in the checkpoints (see :func:`save_checkpoint`).
        distributed: ``None``: on when launched by torchrun (``WORLD_SIZE > 1``) or inside an
            initialised group of several processes. Then the process group is initialised if
            needed (nccl on CUDA, gloo on CPU), the model wrapped in DDP, a ``DataLoader``
            rebuilt with a ``DistributedSampler`` (same batch size per rank), the logged parts
            all-reduced, and logging, progress and checkpoints left to rank 0.
        grad_clip: the old name of ``max_grad_norm`` (give one of them).
        max_steps: stop after this many optimizer steps in total (smoke tests).
        max_grad_norm: clip the total gradient norm of the optimised parameters to this (> 0)
            before every optimizer step (after unscaling, with float16 loss scaling).
        channels_last: keep the model's 4-D parameters and every 4-D batch in channels-last
            memory format (faster convolutions with oneDNN on CPU and with tensor cores on a
            GPU; the same arithmetic up to the order of float additions, so not bitwise equal
            to a contiguous run). The model is left in that format.

    Divergence: the loss and each scalar part of the objective (and the gradient norm when
    clipping) are checked for NaN/inf at every step, by flags kept on the device: read every
    step on CPU, every :data:`~sdecor.train.divergence.CHECK_EVERY_CUDA` steps on a GPU (one host
    sync each), at every epoch end and when the objective raises. A non-finite value stops the
    run with :class:`~sdecor.train.divergence.TrainingDiverged` naming the epoch, the step, the
    part(s) that went non-finite first and the remedies; ``last.pt`` is not overwritten, so it
    keeps the last good epoch.

    Raises:
        TypeError: a bad argument type, or an objective that does not return
            ``(scalar loss tensor, dict)``.
        ValueError: a bad argument value, an empty ``train_loader``, an unavailable device.
        TrainingDiverged: (a ``FloatingPointError``) the loss or a part of it became NaN or inf,
            or the objective failed on non-finite values made by the model.
    """
    if grad_clip is not None:
        if max_grad_norm is not None:
            raise ValueError("give max_grad_norm only (grad_clip is its old name)")
        max_grad_norm = grad_clip
    _check_fit_arguments(
        model,
        objective,
        train_loader,
        epochs,
        lr,
        schedule,
        amp_dtype,
        seed,
        max_steps,
        max_grad_norm,
        optimizer,
        eval_fn,
    )
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool, got {type(channels_last).__name__}")
    distributed = want_distributed(distributed)
    device = resolve_device(device)
    if distributed:
        init_distributed(device)
    rank = get_rank()
    main = rank == 0
    set_seed(seed + rank)

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if isinstance(objective, nn.Module):
        objective.to(device)
    use_amp, dtype, scaler = _mixed_precision(device, amp, amp_dtype)
    params = _trainable_parameters(model, objective)
    if optimizer is None:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)

    loader = train_loader
    if distributed and isinstance(loader, DataLoader):
        loader = distributed_loader(loader, seed, shuffle=loader_shuffles(train_loader))
    steps_per_epoch = len(loader)
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    run = _Run(
        model=model,
        wrapped=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=None,
        scaler=scaler,
        params=params,
        device=device,
        use_amp=use_amp,
        dtype=dtype,
        max_grad_norm=max_grad_norm,
        total_steps=total_steps,
        max_steps=max_steps,
        watch=NonFiniteWatch(device, lr_hint=f" (lr={lr:g} now)"),
        check_every=check_interval(device),
        channels_last=channels_last,
    )
    history, start_epoch, ck = History(), 0, None
    last_path = os.path.join(checkpoint_dir, "last.pt") if checkpoint_dir else None
    if resume and last_path and os.path.isfile(last_path):
        start_epoch, history, ck = _resume(run, last_path)
    run.scheduler = _make_schedule(schedule, optimizer, lr, total_steps)
    _restore_schedule(run, ck)
    if distributed:
        run.wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if ck is not None and ck.get("random_state"):  # last: nothing after this may draw before the next epoch
        states = ck["random_state"]
        if rank < len(states):
            restore_random_state(states[rank], loader, objective)
        else:
            warnings.warn(
                f"{last_path} holds the random states of {len(states)} ranks, none for rank {rank}: this rank "
                "keeps its fresh seed and the resumed run will not repeat the uninterrupted one exactly",
                RuntimeWarning,
                stacklevel=2,
            )

    bar_cls = None
    if progress and main:
        from tqdm.auto import tqdm as bar_cls

    for epoch in range(start_epoch, epochs):
        if run.done():
            break
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        run.watch.start_epoch(epoch + 1, run.step)
        t0 = time.perf_counter()
        bar = (
            bar_cls(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
            if bar_cls
            else None
        )
        sums = _train_epoch(run, loader, bar)
        if bar is not None:
            bar.close()
        run.watch.check(run.last_good)  # before anything is written: last.pt keeps the last good epoch
        if not sums.sums:  # max_steps reached before this epoch did anything
            break
        record = {"epoch": epoch + 1, **sums.record(distributed)}
        record["lr"] = float(optimizer.param_groups[0]["lr"])
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(
                f"training diverged: epoch {epoch + 1} loss is {record['loss']} (lower lr, or set max_grad_norm)"
            )
        _evaluate_epoch(model, record, eval_loader, eval_fn, device, use_amp, main)
        record["time_s"] = time.perf_counter() - t0
        history.append(record)
        if main and bar_cls is not None:
            bar_cls.write(f"epoch {epoch + 1}/{epochs}: {_fmt({k: v for k, v in record.items() if k != 'epoch'})}")
        if last_path:
            _save_last(run, last_path, meta, history, epoch + 1, loader, distributed, main)
    if checkpoint_dir and main:
        save_checkpoint(os.path.join(checkpoint_dir, "final.pt"), model, meta, history=history.to_dict())
    if distributed:
        torch.distributed.barrier()
    model.eval()
    return history
