"""Process-group and device helpers for training under torchrun (rank 0 logs and checkpoints)."""

from __future__ import annotations

import atexit
import os

import torch
from torch.utils.data import DataLoader

__all__ = [
    "distributed_loader",
    "dist_ready",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "loader_shuffles",
    "resolve_device",
    "want_distributed",
]


def dist_ready() -> bool:
    """True when ``torch.distributed`` is available and its default process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def get_rank() -> int:
    """This process's rank: from the process group, else ``$RANK``, else 0."""
    return torch.distributed.get_rank() if dist_ready() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    """The number of processes: from the process group, else ``$WORLD_SIZE``, else 1."""
    return torch.distributed.get_world_size() if dist_ready() else int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on rank 0 (and outside distributed runs)."""
    return get_rank() == 0


def resolve_device(device=None) -> torch.device:
    """``None``/``"auto"``: CUDA if available (``cuda:LOCAL_RANK`` under torchrun), else CPU.

    Raises:
        ValueError: an unparsable device, or CUDA requested but not available.
    """
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


def want_distributed(distributed: bool | None) -> bool:
    """``distributed`` as given, or (None) whether this process was launched as one of several."""
    if distributed is not None:
        return bool(distributed)
    env_world = int(os.environ.get("WORLD_SIZE", 1))
    return env_world > 1 or (dist_ready() and torch.distributed.get_world_size() > 1)


def _destroy_group_at_exit() -> None:
    if dist_ready():
        torch.distributed.destroy_process_group()


def init_distributed(device: torch.device) -> bool:
    """Initialise the default process group if needed (nccl on CUDA, gloo on CPU).

    Returns True when this call created it. A created group is kept for later calls in this process
    (re-initialising it on the same torchrun rendezvous hangs) and destroyed when the interpreter exits.

    Raises:
        RuntimeError: ``torch.distributed`` is not available.
    """
    if not torch.distributed.is_available():
        raise RuntimeError("distributed training requested but torch.distributed is not available")
    if dist_ready():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    atexit.register(_destroy_group_at_exit)
    return True


def loader_shuffles(loader: DataLoader) -> bool:
    """Whether ``loader`` draws its samples in random order (a ``RandomSampler``)."""
    return isinstance(loader.sampler, torch.utils.data.RandomSampler)


def distributed_loader(loader: DataLoader, seed: int, shuffle: bool) -> DataLoader:
    """Rebuild ``loader`` over the same data set with a ``DistributedSampler`` (same batch size per rank).

    A loader that already has one is returned as it is.

    Raises:
        ValueError: the loader has no ``batch_size`` (a custom ``batch_sampler``).
    """
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
