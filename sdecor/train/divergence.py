"""Divergence detection for :func:`sdecor.train.fit`: non-finite losses found without a host sync per step.

:class:`NonFiniteWatch` keeps, on the training device, the first step at which each monitored
value (the loss and each scalar part of the objective, the gradient norm when clipping) was NaN
or infinite. ``update`` is a few device ops (no host sync); ``check`` reads the flags back (one
sync) and raises :class:`TrainingDiverged` naming the epoch, the step and the part(s) that went
non-finite first. ``fit`` checks every step on CPU, every :data:`CHECK_EVERY_CUDA` steps on a GPU,
at the end of every epoch (before the checkpoint is written, so the last good one is kept) and
when the objective raises (a NaN in the weights often fails inside the objective first, e.g. in
the saliency masking, before any loss exists).
"""

from __future__ import annotations

import re

import torch

__all__ = ["CHECK_EVERY_CUDA", "NonFiniteWatch", "TrainingDiverged", "check_interval"]

#: Steps between two reads of the device flags when training on a GPU (one host sync each).
CHECK_EVERY_CUDA = 20

_NEVER = torch.iinfo(torch.int64).max
_NONFINITE_WORDS = re.compile(r"\b(nan|inf|infinite|finite|non-finite)\b", re.IGNORECASE)
_REMEDIES = (
    "lower the learning rate; clip the gradients (fit(..., max_grad_norm=1.0)); train in float32 (amp=False) "
    "or with amp_dtype='bfloat16' instead of float16"
)


class TrainingDiverged(FloatingPointError):
    """The loss (or a part of it) became NaN or infinite.

    Attributes: ``epoch`` (1-based), ``step`` (1-based within the epoch), ``global_step``
    (1-based over the run), ``parts`` (the names that went non-finite first), ``checkpoint``
    (the last good checkpoint kept, or None).
    """

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int, parts: list[str], checkpoint=None):
        super().__init__(message)
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.parts, self.checkpoint = list(parts), checkpoint


def check_interval(device: torch.device) -> int:
    """Steps between two flag reads: every step on CPU (no sync cost), :data:`CHECK_EVERY_CUDA` on a GPU."""
    return CHECK_EVERY_CUDA if device.type == "cuda" else 1


class NonFiniteWatch:
    """First non-finite step of each monitored value, kept on ``device`` (see the module doc).

    One int64 vector on the device holds, per name (in order of first appearance), the first
    global step at which the value was NaN/inf (or a sentinel); an update is a handful of kernels
    whatever the number of names, and needs no host sync.
    """

    def __init__(self, device: torch.device, lr_hint: str = "") -> None:
        self.device = torch.device(device)
        self.lr_hint = lr_hint
        self.names: dict[str, int] = {}  # name -> slot in self.first
        self.first = torch.empty(0, dtype=torch.int64, device=self.device)
        self.step = torch.zeros((), dtype=torch.int64, device=self.device)  # global step, counted on the device
        self.epoch_start = 0  # global step before this epoch's first (host side)
        self.epoch = 0
        self.last: dict[str, torch.Tensor] = {}  # the latest step's values (references, for the error path)
        self.first_loss: torch.Tensor | None = None

    def start_epoch(self, epoch: int, global_step: int) -> None:
        """Begin epoch ``epoch`` (1-based) after ``global_step`` optimizer steps."""
        self.epoch, self.epoch_start = epoch, global_step
        self.step.fill_(global_step)

    def update(self, values: dict[str, torch.Tensor], count: bool = True) -> None:
        """Record 0-dim tensors ``values`` (name -> value) of a new step (``count=False``: of the
        same step as the last call); no host sync."""
        if count:
            self.step += 1
            self.last = values
            if self.first_loss is None and "loss" in values:
                self.first_loss = values["loss"].detach()
        if not values:
            return
        new = [n for n in values if n not in self.names]
        if new:
            for n in new:
                self.names[n] = len(self.names)
            grow = torch.full((len(new),), _NEVER, dtype=torch.int64, device=self.device)
            self.first = torch.cat([self.first, grow])
        slots = [self.names[n] for n in values]
        bad = ~torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in values.values()]))
        if slots == list(range(slots[0], slots[0] + len(slots))):  # the usual case: one slice of the vector
            groups = [(slice(slots[0], slots[0] + len(slots)), bad)]
        else:
            groups = [(slice(k, k + 1), bad[i : i + 1]) for i, k in enumerate(slots)]
        for where, b in groups:
            first = self.first[where]
            first.copy_(torch.where(b & (first == _NEVER), self.step, first))

    def diverged_at(self) -> tuple[int, list[str]] | None:
        """(first bad global step, the names bad at that step), or None when all were finite (one sync)."""
        if not self.names:
            return None
        steps = self.first.tolist()
        first = min(steps)
        if first == _NEVER:
            return None
        return first, [n for n, k in self.names.items() if steps[k] == first]

    def check(self, checkpoint: str | None = None, cause: BaseException | None = None) -> None:
        """Raise :class:`TrainingDiverged` if any monitored value was non-finite (``cause``: chained)."""
        found = self.diverged_at()
        if found is None:
            return
        global_step, names = found
        raise self.error(global_step, names, checkpoint) from cause

    def error(self, global_step: int, names: list[str], checkpoint: str | None, what: str = "") -> TrainingDiverged:
        step = global_step - self.epoch_start
        # the components before their sum: "decor" explains a NaN "loss"/"total", not the reverse
        parts = [n for n in names if n not in ("loss", "total")] or names
        finite = sorted(n for n in self.names if n not in names)
        flagged = not what
        what = what or f"{' and '.join(parts)} became non-finite (NaN or inf)"
        msg = f"training diverged at epoch {self.epoch}, step {step} (global step {global_step}): {what}"
        if finite and flagged:
            msg += f"; still finite then: {', '.join(finite)}"
        msg += f". Remedies: {_REMEDIES}{self.lr_hint}."
        msg += f" The last good checkpoint is kept: {checkpoint}" if checkpoint else " No checkpoint was written."
        return TrainingDiverged(
            msg, epoch=self.epoch, step=step, global_step=global_step, parts=parts, checkpoint=checkpoint
        )

    def check_after_failure(
        self, exc: BaseException, params, images: torch.Tensor, global_step: int, checkpoint: str | None
    ) -> None:
        """The objective raised during step ``global_step + 1``. Re-raise it as a divergence (chained)
        when a monitored value was already non-finite, the weights hold NaN/inf, or the error is about
        NaN/inf values (e.g. "saliency must not contain NaN") while the batch itself is finite: then the
        model made them. Returns (the caller re-raises ``exc``) otherwise. Syncs; an error path only."""
        self.check(checkpoint, cause=exc)
        params = [p.detach() for p in params if p.is_floating_point()]
        bad = sum(not bool(torch.isfinite(p).all()) for p in params)
        about_nonfinite = _NONFINITE_WORDS.search(str(exc)) is not None
        batch_finite = not images.is_floating_point() or bool(torch.isfinite(images).all())
        if not bad and not (about_nonfinite and batch_finite):
            return
        largest = max((p.abs().max().item() for p in params if p.numel()), default=float("nan"))
        what = f"the objective failed on non-finite values ({type(exc).__name__}: {str(exc).strip()[:200]})"
        what += f"; the model's weights {'hold NaN or inf' if bad else f'had grown to max |w| = {largest:.3g}'}"
        if "loss" in self.last and self.first_loss is not None:
            what += f", the loss from {self.first_loss.item():.4g} to {self.last['loss'].item():.4g}"
        raise self.error(global_step + 1, ["weights"], checkpoint, what=what) from exc
