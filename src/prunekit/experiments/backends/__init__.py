"""How claimed runs are trained (one file per backend); the lifecycle around them is :mod:`..lifecycle`'s."""

from .local import LocalBackend
from .stacked import StackedBackend

__all__ = ["LocalBackend", "StackedBackend"]
