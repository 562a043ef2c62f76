"""Stacked training: many masked networks of one architecture trained at once as one network."""

from .loader import StackedLoader
from .model import StackedModel, can_stack
from .trainer import Member, StackedTrainer, checkpoint_epoch

__all__ = ["Member", "StackedLoader", "StackedModel", "StackedTrainer", "can_stack", "checkpoint_epoch"]
