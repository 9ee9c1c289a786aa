"""Standard training: cross-entropy only (the baseline every other objective adds to)."""

from __future__ import annotations

from ._common import Objective, check_batch, cross_entropy

__all__ = ["Standard"]


class Standard(Objective):
    """``CE(f(x), y)``. Parts: ``ce``, ``total``, ``logits``."""

    def forward(self, model, images, labels):
        check_batch(images, labels)
        logits = model(images)
        ce = cross_entropy(logits, labels)
        return ce, self._parts(ce, logits, ce=ce)
