"""Checkpoints that know how to rebuild their model (see :mod:`sdecor.train`)."""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

from ..models import build_model
from ..models.introspection import unwrap_model

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "load_training_state", "read_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "sdecor-checkpoint-v1"


def _model_spec(model: nn.Module, meta: dict | None) -> dict | None:
    spec = getattr(model, "config", None)
    if isinstance(spec, dict) and "name" in spec:
        return {"name": str(spec["name"]), "kwargs": dict(spec.get("kwargs", {}))}
    if meta and isinstance(meta.get("model"), dict) and "name" in meta["model"]:
        return {"name": str(meta["model"]["name"]), "kwargs": dict(meta["model"].get("kwargs", {}))}
    return None


def save_checkpoint(path: str, model: nn.Module, meta: dict | None = None, **extra_state) -> str:
    """Write ``{"format", "model_state", "model_spec", "meta", **extra_state}`` to ``path``
    atomically: into a temporary file in the same directory, flushed to disk, then renamed over
    ``path``. A write that fails (or is killed) leaves the previous ``path`` as it was. ``meta``
    should hold plain Python values (dict / list / str / numbers / bool / None) so it loads with
    ``weights_only=True``. Returns ``path``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    model = unwrap_model(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_spec": _model_spec(model, meta),
        "meta": dict(meta or {}),
    }
    payload.update(extra_state)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """The raw checkpoint dict (loaded with ``weights_only=True``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a truncated or corrupted file (a one-line message), or not an sdecor checkpoint.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, struct.error, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = os.path.getsize(path)
        # from None: torch's own traceback is pages long and says nothing more useful
        raise ValueError(
            f"checkpoint {path} ({size} bytes) is not a readable sdecor checkpoint: truncated or corrupted "
            f"({first[:200]}); delete it to start afresh, or point checkpoint_dir at a good copy"
        ) from None
    if not isinstance(ck, dict) or "model_state" not in ck:
        raise ValueError(
            f"{path} is not an sdecor checkpoint (no 'model_state'; write it with sdecor.train.save_checkpoint)"
        )
    return ck


def load_checkpoint(path: str, model: nn.Module | None = None, map_location="cpu", strict: bool = True):
    """Load a checkpoint written by :func:`save_checkpoint` (or by ``fit``).

    Without ``model`` the model is rebuilt with ``sdecor.models.build_model`` from the stored
    spec. Returns ``(model, meta)`` with the model in eval mode on ``map_location`` and
    ``meta`` the stored meta dict plus ``"model"`` (the spec) when known.
    """
    ck = read_checkpoint(path, map_location)
    spec = ck.get("model_spec")
    if model is None:
        if not spec:
            raise ValueError(
                f"{path} does not say how to build its model (no model spec: the model had no .config and "
                "meta['model'] was not given); pass the model: load_checkpoint(path, model=...)"
            )
        model = build_model(spec["name"], **spec.get("kwargs", {}))
    target = unwrap_model(model)
    try:
        target.load_state_dict(ck["model_state"], strict=strict)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit the model: {str(exc).splitlines()[0]}") from exc
    if isinstance(map_location, (str, torch.device)):
        target.to(map_location)
    target.eval()
    meta = dict(ck.get("meta") or {})
    if spec and "model" not in meta:
        meta["model"] = spec
    return model, meta


def load_training_state(ck: dict, path: str, model: nn.Module, objective, optimizer, scaler) -> None:
    """Load a ``last.pt`` checkpoint (read by :func:`read_checkpoint`) into a run being resumed.

    Checks first that it was written for the same kind of model and objective, then loads the
    model, optimizer, grad-scaler and objective states (``fit`` restores the schedule and the
    random states itself).

    Raises:
        ValueError: another model class or parameter shapes, another objective class or options
            (the message names the difference), no training state, or an optimizer it does not fit.
    """
    from .run_state import check_run_identity, run_identity

    target = unwrap_model(model)
    check_run_identity(ck.get("run_identity"), run_identity(target, objective), path)
    if "optimizer" not in ck or "epoch" not in ck:
        raise ValueError(f"checkpoint {path} has no training state (optimizer, epoch): it cannot be resumed")
    try:
        target.load_state_dict(ck["model_state"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit the model: {str(exc).strip().splitlines()[0]}") from None
    try:
        optimizer.load_state_dict(ck["optimizer"])  # before the schedule, which adds its keys to the groups
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(
            f"checkpoint {path} does not fit the optimizer ({str(exc).strip().splitlines()[0]}): resume with the "
            "optimizer (and parameter groups) it was written with"
        ) from None
    if ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    if isinstance(objective, nn.Module) and ck.get("objective_state"):
        objective.load_state_dict(ck["objective_state"])
