"""Evaluation metrics for attribution maps: batched torch, on the attributions' device.

Every metric returns a (B,) tensor (one score per sample) or a small dataclass of curves plus
their AUC; :data:`METRIC_DIRECTIONS` says for each whether higher or lower is better (the CLI marks
table columns with it). Definitions follow Quantus (sparseness, complexity, the localisation
scores, max-sensitivity, pixel flipping, region perturbation), RISE (deletion / insertion) and
Saliency Guided Training (the masked-accuracy curve); each docstring states the exact formula
and where it departs from the reference implementation.

Metrics that run the model do so under ``torch.no_grad()`` (except max-sensitivity, whose
``explain_fn`` needs gradients) and in the mode the caller left it; chunked by ``batch_size``.
"""

from ._common import PerturbationCurve
from .complexity import complexity, sparseness
from .localisation import pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from .perturbation import (
    MaskedAccuracyCurve,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
    masked_accuracy_curve,
    pixel_flipping,
    region_perturbation,
    rise_blur,
)
from .robustness import max_sensitivity

#: Whether a higher or a lower score is better, per metric. For the curve metrics the entry
#: refers to the AUC (``masked_accuracy_curve``: the accuracy / its AUC). ``pixel_flipping`` and
#: ``region_perturbation`` are listed for their default MoRF order; with ``order="lerf"`` the
#: direction flips (see ``direction``).
METRIC_DIRECTIONS = {
    "sparseness": "higher",
    "complexity": "lower",
    "pointing_game": "higher",
    "relevance_mass_accuracy": "higher",
    "relevance_rank_accuracy": "higher",
    "deletion_auc": "lower",
    "deletion_curve": "lower",
    "insertion_auc": "higher",
    "insertion_curve": "higher",
    "pixel_flipping": "lower",
    "region_perturbation": "lower",
    "masked_accuracy_curve": "lower",
    "max_sensitivity": "lower",
}
#: former name of :data:`METRIC_DIRECTIONS`
DIRECTIONS = METRIC_DIRECTIONS


def direction(name: str, order: str = "morf") -> str:
    """``METRIC_DIRECTIONS[name]``, flipped for the perturbation orders where keeping accuracy is good.

    ``order="lerf"`` (least relevant first) makes a high pixel-flipping / region-perturbation
    AUC good; ``"random"`` has no direction and raises ``ValueError``.
    """
    if name not in METRIC_DIRECTIONS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRIC_DIRECTIONS)}")
    if name in ("pixel_flipping", "region_perturbation"):
        if order == "lerf":
            return "higher"
        if order == "random":
            raise ValueError("a random-order curve is a reference, it has no better direction")
    return METRIC_DIRECTIONS[name]


__all__ = [
    "METRIC_DIRECTIONS",
    "DIRECTIONS",
    "direction",
    "PerturbationCurve",
    "MaskedAccuracyCurve",
    "sparseness",
    "complexity",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "deletion_curve",
    "deletion_auc",
    "insertion_curve",
    "insertion_auc",
    "pixel_flipping",
    "region_perturbation",
    "masked_accuracy_curve",
    "max_sensitivity",
    "rise_blur",
]
