"""The decorrelation penalty: options, reference, Triton launcher, dispatch, global batch.

Modules, bottom up: ``options`` (the option values and their checks), ``reference`` (pure torch),
``triton`` (launcher of the fused kernels in ``kernels/``), ``distributed`` (the penalty of a
process group's global batch) and ``dispatch`` (:func:`decorrelation_loss`, backend choice).
"""

from .dispatch import DecorrelationLoss, decorrelation_loss
from .reference import decorrelation_reference

__all__ = ["decorrelation_loss", "DecorrelationLoss", "decorrelation_reference"]
