"""The training loop (see :mod:`sdecor.train` for the contract)."""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .._validation import check_choice, check_int, check_positive_float

__all__ = [
    "CrossEntropyObjective",
    "History",
    "evaluate_accuracy",
    "fit",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "resolve_device",
    "set_seed",
    "unwrap_model",
]

SCHEDULES = ("onecycle", "cosine", "constant")


# --------------------------------------------------------------------------- helpers


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed python's, numpy's and torch's (CPU and all CUDA devices) random generators."""
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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _destroy_group_at_exit() -> None:
    if _dist_ready():
        torch.distributed.destroy_process_group()


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    return torch.distributed.get_rank() if _dist_ready() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return torch.distributed.get_world_size() if _dist_ready() else int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return get_rank() == 0


def resolve_device(device=None) -> torch.device:
    """``None``/``"auto"``: CUDA if available (``cuda:LOCAL_RANK`` under torchrun), else CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


class CrossEntropyObjective(nn.Module):
    """Standard training: ``loss = CE(model(x), y)``; parts ``{"ce", "logits"}``."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        logits = model(images)
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return ce, {"ce": ce.detach(), "logits": logits.detach()}


class History:
    """Per-epoch training records (a list of dicts; see :mod:`sdecor.train`)."""

    def __init__(self, epochs: list | None = None):
        self.epochs: list[dict] = [dict(e) for e in (epochs or [])]

    def append(self, record: dict) -> None:
        self.epochs.append(dict(record))

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, i):
        return self.epochs[i]

    def __iter__(self):
        return iter(self.epochs)

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}

    def series(self, key: str) -> list:
        return [e.get(key, float("nan")) for e in self.epochs]

    def to_dict(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(d.get("epochs", []))

    def to_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, last={self.last})"


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader, device=None, amp: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (batches ``(images, labels, ...)``), in [0, 1].
    The model is put in eval mode for the pass and its previous mode restored."""
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
            images, labels = _split_batch(batch)
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


def _split_batch(batch):
    if isinstance(batch, dict):
        return batch["images"] if "images" in batch else batch["image"], batch[
            "labels"
        ] if "labels" in batch else batch["label"]
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("batches must be (images, labels, ...) tuples")
    return batch[0], batch[1]


def _autocast(device: torch.device, enabled: bool, dtype: torch.dtype):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _distributed_loader(loader: DataLoader, seed: int, shuffle: bool) -> DataLoader:
    """Rebuild ``loader`` over the same data set with a DistributedSampler (same batch size)."""
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError("distributed training needs a DataLoader with a batch_size (not a custom batch_sampler)")
    sampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed, drop_last=loader.drop_last)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers else False,
    )


def _loader_shuffles(loader: DataLoader) -> bool:
    return isinstance(loader.sampler, torch.utils.data.RandomSampler)


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
) -> History:
    """Train ``model`` in place with ``objective`` (see :mod:`sdecor.train` for every argument)."""
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
    if grad_clip is not None:
        check_positive_float(grad_clip, "grad_clip")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError("eval_fn must be callable model -> dict[str, float]")
    if len(train_loader) == 0:
        raise ValueError("train_loader is empty")

    # -- distributed setup
    env_world = int(os.environ.get("WORLD_SIZE", 1))
    if distributed is None:
        distributed = env_world > 1 or (_dist_ready() and torch.distributed.get_world_size() > 1)
    created_group = False
    device = resolve_device(device)
    if distributed:
        if not torch.distributed.is_available():
            raise RuntimeError("distributed training requested but torch.distributed is not available")
        if not _dist_ready():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            created_group = True
    rank = get_rank()
    main = rank == 0
    set_seed(seed + rank)

    model.to(device)
    if isinstance(objective, nn.Module):
        objective.to(device)
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    dtype = torch.bfloat16 if amp_dtype == "bfloat16" else torch.float16
    if use_amp and device.type == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and dtype == torch.float16 and device.type == "cuda")

    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(objective, nn.Module):
        seen = {id(p) for p in params}
        params += [p for p in objective.parameters() if p.requires_grad and id(p) not in seen]
    if optimizer is None:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)

    loader = train_loader
    if distributed and isinstance(loader, DataLoader):
        loader = _distributed_loader(loader, seed, shuffle=_loader_shuffles(train_loader))
    steps_per_epoch = len(loader)
    total_steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    history = History()
    start_epoch, step = 0, 0
    last_path = os.path.join(checkpoint_dir, "last.pt") if checkpoint_dir else None
    ck = None
    if resume and last_path and os.path.isfile(last_path):
        from .checkpoint import read_checkpoint

        ck = read_checkpoint(last_path, map_location=device)
        model.load_state_dict(ck["model_state"])
        optimizer.load_state_dict(ck["optimizer"])  # before the schedule, which adds its keys to the groups
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if isinstance(objective, nn.Module) and ck.get("objective_state"):
            objective.load_state_dict(ck["objective_state"])
        start_epoch, step = int(ck["epoch"]), int(ck.get("step", 0))
        history = History.from_dict(ck.get("history", {}))
    scheduler = _make_schedule(schedule, optimizer, lr, total_steps)
    if scheduler is not None and step:  # replay: the schedule follows this call's epochs, not the old one's
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(min(step, total_steps - 1)):
                scheduler.step()

    wrapped = model
    if distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    bar_cls = None
    if progress and main:
        from tqdm.auto import tqdm as bar_cls

    try:
        for epoch in range(start_epoch, epochs):
            if max_steps is not None and step >= max_steps:
                break
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            model.train()
            if isinstance(objective, nn.Module):
                objective.train()
            t0 = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            correct = torch.zeros((), device=device)
            count = torch.zeros((), device=device)
            has_logits = False
            bar = (
                bar_cls(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
                if bar_cls
                else None
            )
            for i, batch in enumerate(loader):
                if max_steps is not None and step >= max_steps:
                    break
                images, labels = _split_batch(batch)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                bs = labels.shape[0]
                with _autocast(device, use_amp, dtype):
                    out = objective(wrapped, images, labels)
                if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], dict)):
                    raise TypeError("objective must return (loss, parts: dict)")
                loss, parts = out
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError("objective must return a scalar loss tensor")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None and step < total_steps - 1:
                    scheduler.step()
                step += 1
                # -- running sums, on the device (no sync per step)
                w = float(bs)
                sums["loss"] = sums.get("loss", 0) + loss.detach().float() * w
                for k, v in parts.items():
                    if k == "logits":
                        if isinstance(v, torch.Tensor) and v.ndim == 2:
                            correct += (v.detach().argmax(1) == labels).sum()
                            has_logits = True
                        continue
                    if isinstance(v, torch.Tensor):
                        if v.numel() != 1:
                            continue
                        v = v.detach().float().reshape(())
                    elif isinstance(v, (int, float)):
                        v = torch.tensor(float(v), device=device)
                    else:
                        continue
                    sums[k] = sums.get(k, 0) + v * w
                count += bs
                if bar is not None:
                    bar.update(1)
                    if i % 10 == 0:
                        bar.set_postfix(loss=f"{loss.item():.4f}")
            if bar is not None:
                bar.close()
            if not sums:  # max_steps reached before this epoch did anything
                break
            keys = sorted(sums)
            vec = torch.stack([sums[k].reshape(()) for k in keys] + [correct.float(), count.float()])
            if distributed:
                torch.distributed.all_reduce(vec)
            n = max(float(vec[-1]), 1.0)
            record = {"epoch": epoch + 1}
            for k, v in zip(keys, vec[: len(keys)].tolist()):
                record[k] = v / n
            if has_logits:
                record["train_acc"] = float(vec[-2]) / n
            record["lr"] = float(optimizer.param_groups[0]["lr"])
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(
                    f"training diverged: epoch {epoch + 1} loss is {record['loss']} (lower lr, or enable grad_clip)"
                )
            if eval_loader is not None:
                record["eval_acc"] = evaluate_accuracy(model, eval_loader, device, amp=use_amp)
            if eval_fn is not None and main:
                model.eval()
                try:
                    extra = eval_fn(model) or {}
                finally:
                    model.train()
                record.update(
                    {k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v) for k, v in extra.items()}
                )
            record["time_s"] = time.perf_counter() - t0
            history.append(record)
            if main and bar_cls is not None:
                bar_cls.write(f"epoch {epoch + 1}/{epochs}: {_fmt({k: v for k, v in record.items() if k != 'epoch'})}")
            if last_path and main:
                from .checkpoint import save_checkpoint

                save_checkpoint(
                    last_path,
                    model,
                    meta,
                    optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler.is_enabled() else None,
                    objective_state=objective.state_dict() if isinstance(objective, nn.Module) else None,
                    epoch=epoch + 1,
                    step=step,
                    history=history.to_dict(),
                )
        if checkpoint_dir and main:
            from .checkpoint import save_checkpoint

            save_checkpoint(os.path.join(checkpoint_dir, "final.pt"), model, meta, history=history.to_dict())
        if distributed:
            torch.distributed.barrier()
    finally:
        if created_group:
            # Keep the group for later fit() calls in this process (re-initialising it on the same
            # torchrun rendezvous hangs); it is destroyed when the interpreter exits.
            atexit.register(_destroy_group_at_exit)
    model.eval()
    return history
