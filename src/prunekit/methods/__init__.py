"""Pruning methods, one file per family; importing this package registers them all."""

from . import baselines, force, grasp, prospr, snip, synflow  # noqa: F401  (registration side effects)
from .autosparse import AutoSparseOptions  # noqa: F401  (registered after the papers' one-shot and iterative methods)
from .autosparse_layerwise import AutoSparseLayerwiseOptions  # noqa: F401
from .registry import Method, all_methods, get_method, list_methods, register_method

__all__ = ["Method", "all_methods", "get_method", "list_methods", "register_method"]
