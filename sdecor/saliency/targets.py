"""Target classes: the one place where a ``target`` argument is checked and normalised.

The attribution methods (:mod:`sdecor.saliency`) and the metrics (:mod:`sdecor.metrics`) take the
class to explain or to score as an int, a list of B ints, a 0-dim or (B,) integer tensor (or an
integer array, e.g. numpy's), or ``None`` for the model's top-1 prediction;
:func:`resolve_target` turns each into a (B,) int64 tensor.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_target", "select_logits", "check_output"]


def resolve_target(
    target,
    batch_size: int,
    device: torch.device,
    output: torch.Tensor | None = None,
    *,
    name: str = "target",
) -> torch.Tensor:
    """Normalise ``target`` to a (B,) int64 tensor on ``device``.

    Args:
        target: an int, a list/tuple of B ints, a 0-dim, (1,) or (B,) integer tensor (moved to
            ``device``), an integer array (anything with ``__array__``), or None.
        batch_size: B.
        device: where the result lives.
        output: the model's (B, K) output on the inputs. Needed for ``target=None`` (its argmax)
            and for the class-range check ``target < K``; without it only ``target >= 0`` is checked.
        name: the argument's name in error messages.

    Raises:
        TypeError: a float/bool value or tensor, a list holding non-ints, another type; ``output``
            not a tensor.
        ValueError: a list/tensor whose length is not B, a class outside [0, K); ``target=None``
            without ``output``; ``output`` not of shape (B, K).
    """
    if target is None:
        if output is None:
            raise ValueError(f"{name}=None needs the model output to take its argmax")
        check_output(output, batch_size)
        return output.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError(f"{name} must be an int, a list of ints, an integer tensor or None, got bool {target!r}")
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"{name} must be a class index >= 0, got {target}")
        if output is not None:
            check_output(output, batch_size)
            if target >= output.shape[1]:
                raise ValueError(f"{name} {target} is out of range for a model with {output.shape[1]} classes")
        return torch.full((batch_size,), target, dtype=torch.long, device=device)
    if isinstance(target, (list, tuple)):
        if any(isinstance(t, bool) or not isinstance(t, int) for t in target):
            bad = next(t for t in target if isinstance(t, bool) or not isinstance(t, int))
            raise TypeError(f"{name} as a list must hold ints, got {type(bad).__name__} {bad!r}")
        if len(target) != batch_size:
            raise ValueError(f"{name} as a list must have one class per sample ({batch_size}), got {len(target)}")
        if any(t < 0 for t in target):
            raise ValueError(f"{name} must hold class indices >= 0, got {min(target)}")
        if output is not None:
            check_output(output, batch_size)
            if max(target) >= output.shape[1]:
                raise ValueError(f"{name} {max(target)} is out of range for a model with {output.shape[1]} classes")
        return torch.tensor(list(target), dtype=torch.long, device=device)
    if not isinstance(target, torch.Tensor) and hasattr(target, "__array__"):
        try:
            target = torch.as_tensor(target)
        except Exception as exc:
            raise TypeError(f"{name} must be an integer array, got {type(target).__name__}") from exc
    if isinstance(target, torch.Tensor):
        if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
            raise TypeError(
                f"{name} as a tensor must have an integer dtype, got {str(target.dtype).replace('torch.', '')}"
            )
        if target.ndim == 0:
            target = target.reshape(1).expand(batch_size)
        elif target.ndim != 1 or target.shape[0] not in (1, batch_size):
            raise ValueError(f"{name} as a tensor must be 0-dim or of shape ({batch_size},), got {tuple(target.shape)}")
        elif target.shape[0] == 1:
            target = target.expand(batch_size)
        target = target.to(device=device, dtype=torch.long)
        if batch_size == 0:
            return target.contiguous()
        # one device sync, once per call
        if output is not None:
            check_output(output, batch_size)
            low, high = int(target.min()), int(target.max())
            if high >= output.shape[1]:
                raise ValueError(f"{name} {high} is out of range for a model with {output.shape[1]} classes")
        else:
            low = int(target.min())
        if low < 0:
            raise ValueError(f"{name} must hold class indices >= 0, got {low}")
        return target.contiguous()
    raise TypeError(f"{name} must be an int, a list of ints, an integer tensor or None, got {type(target).__name__}")


def check_output(output, batch_size: int) -> None:
    """Raise unless ``output`` is a (B, K) tensor of logits (TypeError: not a tensor; ValueError: shape)."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the model must return a tensor of logits (B, K), got {type(output).__name__}")
    if output.ndim != 2 or output.shape[0] != batch_size:
        raise ValueError(f"the model must return logits of shape ({batch_size}, K), got {tuple(output.shape)}")


def select_logits(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (N,) logits ``output[i, target[i]]``; ``output`` must be (N, K)."""
    check_output(output, target.shape[0])
    return output.gather(1, target[:, None]).squeeze(1)
