"""prunekit: pruning neural networks at initialization and early in training.

Public API::

    masks = prunekit.prune(model, "force", sparsity=0.99, data=batches, seed=0)
    scores = prunekit.score(model, "snip", data=batches)
    masks.apply(model); masks.report(model); masks.save(path); prunekit.Masks.load(path)
    prunekit.list_methods()
"""

from ._version import __version__
from .core.layer_report import LayerComparison, MaskReport, compare_masks
from .core.masks import Masks
from .core.prunable import prunable_parameters
from .core.pruning import prune, score
from .errors import (
    ConfigError,
    DataError,
    DiskFullError,
    LayerCollapseError,
    MaskError,
    MaskFileError,
    PrunekitError,
    PrunekitWarning,
    ScoreError,
    UserCodeError,
)
from .methods import get_method, list_methods

__all__ = [
    "ConfigError",
    "DataError",
    "DiskFullError",
    "LayerCollapseError",
    "LayerComparison",
    "MaskError",
    "MaskFileError",
    "MaskReport",
    "Masks",
    "PrunekitError",
    "PrunekitWarning",
    "ScoreError",
    "UserCodeError",
    "__version__",
    "compare_masks",
    "get_method",
    "list_methods",
    "prunable_parameters",
    "prune",
    "score",
]
