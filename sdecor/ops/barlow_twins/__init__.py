"""The Barlow Twins loss: reference, Triton launcher, dispatch, distributed (global batch)."""

from .dispatch import BarlowTwinsLoss, barlow_twins_loss
from .reference import barlow_twins_reference

__all__ = ["barlow_twins_loss", "BarlowTwinsLoss", "barlow_twins_reference"]
