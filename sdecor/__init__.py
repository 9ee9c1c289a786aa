"""sdecor: SaliencyDecor training with fused decorrelation and saliency-masking kernels.

Top level: the two ops (:func:`decorrelation_loss`, :class:`DecorrelationLoss`,
:func:`mask_features`). Subpackages, imported on first access (``sdecor.saliency`` etc.):

* ``sdecor.ops``        one folder per op (``decorrelation``, ``masking``): reference, fused backend, dispatch
* ``sdecor.losses``     SaliencyDecor and the baselines' objectives
* ``sdecor.saliency``   attribution methods (Captum-style classes)
* ``sdecor.metrics``    saliency evaluation metrics (batched, on the device)
* ``sdecor.data``       the embedded digits-in-clutter data set and loaders
* ``sdecor.models``     SmallCNN, ResNet20, IterNorm
* ``sdecor.train``      ``fit`` (AMP, DDP, checkpoints)
* ``sdecor.ssl``        MoCo v2 recipe with decorrelation / IterNorm
* ``sdecor.benchmarks`` the benchmark suites and table runner
"""

import importlib

from .ops import DecorrelationLoss, decorrelation_loss, mask_features

__version__ = "0.1.0"
_SUBPACKAGES = ("ops", "losses", "saliency", "metrics", "data", "models", "train", "ssl", "benchmarks", "experiments")
__all__ = ["decorrelation_loss", "DecorrelationLoss", "mask_features", "__version__", *_SUBPACKAGES]


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'sdecor' has no attribute {name!r}")
