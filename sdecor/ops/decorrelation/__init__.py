"""The decorrelation penalty: reference, Triton launcher, dispatch, distributed (global batch)."""

from .dispatch import DecorrelationLoss, decorrelation_loss
from .reference import decorrelation_reference

__all__ = ["decorrelation_loss", "DecorrelationLoss", "decorrelation_reference"]
