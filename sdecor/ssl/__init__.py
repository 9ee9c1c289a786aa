"""Self-supervised learning: med-moco's MoCo v2 recipe and its decorrelation variants.

* :mod:`sdecor.ssl.augment`: MoCo v2 augmentations in torch (affine crops/flips, colour jitter,
  grayscale, noise), returning the affine maps used by the local loss.
* :mod:`sdecor.ssl.moco`: :class:`Encoder`, :class:`MoCo` (momentum encoder, queue),
  :func:`info_nce`, :func:`local_patch_contrastive_loss`.
* :mod:`sdecor.ssl.metrics`: :func:`effective_rank` (Roy & Vetterli 2007), :func:`linear_probe`,
  :func:`mean_squared_correlation`.
* :mod:`sdecor.ssl.recipe`: the three settings ("plain", "decor", "iternorm"),
  :func:`run_comparison` (what ``sdecor ssl`` runs) and :func:`format_table`.
"""

from .augment import AugmentConfig, augment
from .metrics import effective_rank, linear_probe, mean_squared_correlation
from .moco import Encoder, MoCo, info_nce, local_patch_contrastive_loss
from .recipe import SETTINGS, SSLConfig, build_encoder, evaluate, format_table, run_comparison, train_moco

__all__ = [
    "AugmentConfig",
    "augment",
    "effective_rank",
    "linear_probe",
    "mean_squared_correlation",
    "Encoder",
    "MoCo",
    "info_nce",
    "local_patch_contrastive_loss",
    "SETTINGS",
    "SSLConfig",
    "build_encoder",
    "evaluate",
    "format_table",
    "run_comparison",
    "train_moco",
]
