"""Training objectives: SaliencyDecor and the baselines it is compared with.

Each objective is an ``nn.Module`` called as ``objective(model, images, labels) -> (loss, parts)``
(``parts``: detached 0-dim tensors ``"ce"``, ``"total"`` and the objective's own terms, plus the
detached clean ``"logits"``). Objectives are built from their options alone (every one with no
arguments at all); ``model`` may be wrapped (DDP). Objectives that read hidden features
(``feature_layer``: ``None``/``"penultimate"``, ``"conv"`` or a module name) find the layer in the
model they are called with and hook it only for the duration of the call: no hook remains on the
model afterwards, also when the call raises.

=========================  ============================================================
:class:`Standard`          cross-entropy
:class:`DeCov`             CE + 0.5 * sum of squared off-diagonal covariances (biased) of
                           the penultimate features (Cogswell et al. 2016)
:class:`SaliencyGuidedTraining`  CE + KL(p(x) || p(x masked at its least salient pixels))
                           (Ismail et al. 2021; its official CIFAR or MNIST branch, ``saliency_of``)
:class:`SCAAT`             our documented reading of SCAAT (BMVC 2023): CE + KL under a PGD
                           perturbation of the least salient pixels, adaptive pixel budget
:class:`SaliencyDecor`     CE + SGT-style consistency + decorrelation of hooked features
=========================  ============================================================

:func:`build_objective` makes one by name (``"standard"``, ``"decov"``, ``"sgt"``, ``"scaat"``,
``"saliencydecor"``; :data:`OBJECTIVES` maps each name to its class), passing keyword options
through. :mod:`sdecor.losses.base` holds the contract's shared pieces, :mod:`sdecor.losses.masking`
the saliency masking of the consistency objectives.
"""

from __future__ import annotations

from ..ops import DecorrelationLoss
from .base import Objective, consistency_kl
from .decov import DeCov, decov_penalty
from .masking import MASKED_BN, SALIENCY_OF, input_saliency
from .saliency_decor import DEFAULT_LAMBDA_DECOR, SaliencyDecor
from .scaat import SCAAT, adaptive_budget
from .sgt import SaliencyGuidedTraining
from .standard import Standard

__all__ = [
    "Objective",
    "Standard",
    "DeCov",
    "SaliencyGuidedTraining",
    "SCAAT",
    "SaliencyDecor",
    "DecorrelationLoss",
    "MASKED_BN",
    "SALIENCY_OF",
    "DEFAULT_LAMBDA_DECOR",
    "OBJECTIVES",
    "build_objective",
    "consistency_kl",
    "input_saliency",
    "decov_penalty",
    "adaptive_budget",
]

#: name -> objective class (each one builds with no arguments)
OBJECTIVES: dict[str, type[Objective]] = {
    "standard": Standard,
    "decov": DeCov,
    "sgt": SaliencyGuidedTraining,
    "scaat": SCAAT,
    "saliencydecor": SaliencyDecor,
}


def build_objective(name: str, **options) -> Objective:
    """The objective called ``name`` (case-insensitive, a key of :data:`OBJECTIVES`) with keyword ``options``.

    Raises:
        ValueError: unknown name. The class raises TypeError / ValueError for bad options.
    """
    if not isinstance(name, str) or name.lower() not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name.lower()](**options)
