"""Training objectives: SaliencyDecor and the baselines it is compared with.

Each objective is an ``nn.Module`` called as ``objective(model, images, labels) -> (loss, parts)``
(``parts``: detached 0-dim tensors ``"ce"``, ``"total"`` and the objective's own terms, plus the
detached clean ``"logits"``). Objectives that read hidden features take the model when built,
install a forward hook (the model itself is not changed) and release it on ``close()`` or at the
end of a ``with`` block.

=========================  ============================================================
:class:`Standard`          cross-entropy
:class:`DeCov`             CE + 0.5 * sum of squared off-diagonal covariances (biased) of
                           the penultimate features (Cogswell et al. 2016)
:class:`SaliencyGuidedTraining`  CE + KL(p(x) || p(x masked at its least salient pixels))
                           (Ismail et al. 2021, the official code's semantics)
:class:`SCAAT`             our documented reading of SCAAT (BMVC 2023): CE + KL under a PGD
                           perturbation of the least salient pixels, adaptive pixel budget
:class:`SaliencyDecor`     CE + SGT-style consistency + decorrelation of hooked features
=========================  ============================================================

:func:`build_objective` makes one by name (``"standard"``, ``"decov"``, ``"sgt"``, ``"scaat"``,
``"saliencydecor"``) for a model, passing keyword options through.
"""

from __future__ import annotations

from ..ops import DecorrelationLoss
from ._common import MASKED_BN, FeatureHook, Objective, consistency_kl, input_saliency
from .decov import DeCov, decov_penalty
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
    "FeatureHook",
    "MASKED_BN",
    "DEFAULT_LAMBDA_DECOR",
    "OBJECTIVES",
    "build_objective",
    "consistency_kl",
    "input_saliency",
    "decov_penalty",
    "adaptive_budget",
]

#: name -> (class, whether it takes the model as its first argument)
OBJECTIVES = {
    "standard": (Standard, False),
    "decov": (DeCov, True),
    "sgt": (SaliencyGuidedTraining, False),
    "scaat": (SCAAT, False),
    "saliencydecor": (SaliencyDecor, True),
}


def build_objective(name: str, model, **options) -> Objective:
    """The objective called ``name`` (case-insensitive) for ``model``, with keyword ``options``."""
    if not isinstance(name, str) or name.lower() not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
    cls, takes_model = OBJECTIVES[name.lower()]
    return cls(model, **options) if takes_model else cls(**options)
