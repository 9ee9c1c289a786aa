"""DeCov (Cogswell et al., ICLR 2016): cross-entropy plus a covariance penalty on hidden features.

``L = CE(f(x), y) + lambda_decov * DeCov(h)``, with h the penultimate features (the classifier's
input; another layer through ``feature_layer``) and

    DeCov(h) = 0.5 * (||C||_F^2 - ||diag(C)||_2^2),   C = (1/N) sum_n (h_n - mu)(h_n - mu)^T,

the biased (1/N) covariance of the batch: ``0.5 * decorrelation_loss(h, mode="covariance",
reduction="sum", correction=0)``. The paper applies it to a hidden layer before the classifier;
its weight is data-set dependent there (we default to 0.1, see docs/experiments.md).
"""

from __future__ import annotations

import torch

from .._validation import check_positive_float
from ..models.introspection import record_features
from ..ops import decorrelation_loss
from .base import Objective, check_batch, check_feature_layer, cross_entropy

__all__ = ["DeCov", "decov_penalty"]


def decov_penalty(features: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum_{i != j} C_ij^2`` with the biased covariance C of the (N, D) features."""
    return 0.5 * decorrelation_loss(
        features.flatten(1) if features.ndim > 2 else features, mode="covariance", reduction="sum", correction=0
    )


class DeCov(Objective):
    """``CE + lambda_decov * DeCov(features)``; reads ``feature_layer`` of the model it is called with.

    Args:
        feature_layer: ``None``/``"penultimate"`` (the classifier's input, or the module named by
            ``model.feature_layer``), ``"conv"``, or a module name whose output is flattened to
            (N, D) features. Looked up in the model at each call
            (:func:`sdecor.models.resolve_feature_layer`); the layer is hooked only during the call.
        lambda_decov: weight of the penalty (>= 0).

    Parts: ``ce``, ``decov`` (unweighted), ``total``, ``logits``.
    """

    def __init__(self, feature_layer: str | None = None, lambda_decov: float = 0.1) -> None:
        super().__init__()
        self.feature_layer = check_feature_layer(feature_layer)
        self.lambda_decov = check_positive_float(lambda_decov, "lambda_decov", allow_zero=True)

    def forward(self, model, images, labels):
        check_batch(images, labels)
        with record_features(model, self.feature_layer) as record:
            logits = model(images)
            features = record.pop()
        ce = cross_entropy(logits, labels)
        penalty = decov_penalty(features)
        total = ce + self.lambda_decov * penalty
        return total, self._parts(total, logits, ce=ce, decov=penalty)

    def extra_repr(self) -> str:
        return f"feature_layer={self.feature_layer!r}, lambda_decov={self.lambda_decov}"
