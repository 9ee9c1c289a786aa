"""What decides the rest of a training run besides the weights: random states and what is trained.

``fit`` stores both in ``last.pt`` so that a resumed run continues exactly as the uninterrupted
run would have:

* :func:`capture_random_state` / :func:`restore_random_state`: python's, numpy's and torch's
  (CPU and CUDA) global generators, the data loader's generators (its ``generator`` and its
  sampler's: they decide the next epochs' order and the workers' seeds) and every
  ``torch.Generator`` attribute of the objective (e.g. the uniform fills of the saliency
  masking), taken at the end of an epoch, after evaluation, i.e. where the next epoch starts.
  Every value loads with ``torch.load(weights_only=True)``.
* :func:`run_identity` / :func:`check_run_identity`: the model's class and parameter shapes and
  the objective's class and options; resuming with a different one raises ``ValueError`` naming
  the difference (the checkpoint would not continue the same run).
"""

from __future__ import annotations

import random
import re
import warnings

import numpy as np
import torch
from torch import nn

__all__ = [
    "capture_random_state",
    "gather_random_states",
    "restore_random_state",
    "loader_generators",
    "objective_generators",
    "run_identity",
    "check_run_identity",
]


def _unique(named: list[tuple[str, object]]) -> dict[str, torch.Generator]:
    out: dict[str, torch.Generator] = {}
    for name, g in named:
        if isinstance(g, torch.Generator) and all(g is not seen for seen in out.values()):
            out[name] = g
    return out


def loader_generators(loader) -> dict[str, torch.Generator]:
    """The distinct ``torch.Generator`` objects of a DataLoader-like object, by attribute path."""
    named = [("generator", getattr(loader, "generator", None))]
    for attr in ("sampler", "batch_sampler"):
        s = getattr(loader, attr, None)
        named.append((f"{attr}.generator", getattr(s, "generator", None)))
        inner = getattr(s, "sampler", None)
        named.append((f"{attr}.sampler.generator", getattr(inner, "generator", None)))
    return _unique(named)


def objective_generators(objective) -> dict[str, torch.Generator]:
    """``torch.Generator`` attributes of the objective (and of its submodules), by dotted name."""
    modules = objective.named_modules() if isinstance(objective, nn.Module) else [("", objective)]
    named = []
    for prefix, module in modules:
        for key, value in getattr(module, "__dict__", {}).items():
            named.append((f"{prefix}.{key}" if prefix else key, value))
    return _unique(named)


def _numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _set_numpy_state(state) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def capture_random_state(loader, objective) -> dict:
    """Every random state that decides what comes next (see the module doc); plain values and tensors."""
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "loader": {k: g.get_state() for k, g in loader_generators(loader).items()},
        "objective": {k: g.get_state() for k, g in objective_generators(objective).items()},
    }


def gather_random_states(loader, objective, distributed: bool) -> list[dict]:
    """Every rank's :func:`capture_random_state`, in rank order (all ranks must call it)."""
    state = capture_random_state(loader, objective)
    if not distributed:
        return [state]
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def restore_random_state(state: dict, loader, objective) -> None:
    """Put back what :func:`capture_random_state` took; warns when a generator has no saved state."""
    random.setstate(_as_python_state(state["python"]))
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    for what, current, saved in (
        ("loader", loader_generators(loader), state.get("loader", {})),
        ("objective", objective_generators(objective), state.get("objective", {})),
    ):
        for name, g in current.items():
            if name in saved:
                g.set_state(saved[name])
            else:
                warnings.warn(
                    f"the checkpoint has no state for the {what}'s generator {name!r}: the resumed run will not "
                    "repeat the uninterrupted one exactly",
                    RuntimeWarning,
                    stacklevel=3,
                )


def _as_python_state(state):
    """random.setstate wants tuples; a checkpoint may give lists back."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


# --------------------------------------------------------------------------- identity

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _qualname(obj) -> str:
    kind = obj if isinstance(obj, type) else (obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj))
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', type(kind).__name__)}"


def run_identity(model: nn.Module, objective) -> dict:
    """The model's class and parameter/buffer shapes, the objective's class and options (its repr)."""
    return {
        "model_class": _qualname(type(model)),
        "model_shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "objective_class": _qualname(type(objective) if isinstance(objective, nn.Module) else objective),
        "objective_options": _ADDRESS.sub("", repr(objective)) if isinstance(objective, nn.Module) else None,
    }


def check_run_identity(saved: dict | None, current: dict, path: str) -> None:
    """Raise ``ValueError`` naming the first difference between the checkpoint's run and this one."""
    if not saved:
        return
    hint = "; resume with the same model and objective, or train into another checkpoint_dir"
    if saved["model_class"] != current["model_class"]:
        raise ValueError(
            f"checkpoint {path} was written for model {saved['model_class']}, not {current['model_class']}{hint}"
        )
    old, new = saved["model_shapes"], current["model_shapes"]
    if old != new:
        missing = [k for k in old if k not in new][:3]
        extra = [k for k in new if k not in old][:3]
        shapes = [f"{k} {old[k]} vs {new[k]}" for k in old if k in new and old[k] != new[k]][:3]
        diff = "; ".join(
            s
            for s in (
                f"not in this model: {', '.join(missing)}" if missing else "",
                f"not in the checkpoint: {', '.join(extra)}" if extra else "",
                f"shapes differ: {', '.join(shapes)}" if shapes else "",
            )
            if s
        )
        raise ValueError(f"checkpoint {path} was written for another {current['model_class']} model ({diff}){hint}")
    if saved["objective_class"] != current["objective_class"]:
        raise ValueError(
            f"checkpoint {path} was written for objective {saved['objective_class']}, "
            f"not {current['objective_class']}{hint}"
        )
    if saved.get("objective_options") != current.get("objective_options"):
        raise ValueError(
            f"checkpoint {path} was written for the objective {saved.get('objective_options')}, "
            f"not {current.get('objective_options')}{hint}"
        )
