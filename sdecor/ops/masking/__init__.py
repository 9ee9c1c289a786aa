"""Batched saliency masking: argument checks, reference, rank-once ops, dispatch, the extension.

Modules, bottom up: ``checks`` (argument checks shared by the ops), ``reference`` (pure torch),
``extension`` (loads ``sdecor._C``; ``library`` registers the compiled ops' fake and autograd
formulas when it does), ``ranked`` (rank once, fill many times) and ``dispatch``
(:func:`mask_features`, backend choice).
"""

from .checks import FILLS
from .dispatch import mask_features, mask_features_reference
from .ranked import mask_fill_ranked, mask_ranks

__all__ = ["mask_features", "mask_features_reference", "mask_ranks", "mask_fill_ranked", "FILLS"]
