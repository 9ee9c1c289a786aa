"""Standard training: cross-entropy only (the baseline every other objective adds to)."""

from __future__ import annotations

from .._validation import check_positive_float
from .base import Objective, check_batch, cross_entropy

__all__ = ["Standard"]


class Standard(Objective):
    """``CE(f(x), y)``, optionally with label smoothing. Parts: ``ce``, ``total``, ``logits``.

    Args:
        label_smoothing: in [0, 1) (``F.cross_entropy``'s ``label_smoothing``; 0: plain CE).
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = check_positive_float(label_smoothing, "label_smoothing", allow_zero=True)
        if self.label_smoothing >= 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def forward(self, model, images, labels):
        check_batch(images, labels)
        logits = model(images)
        ce = cross_entropy(logits, labels, self.label_smoothing)
        return ce, self._parts(ce, logits, ce=ce)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
