"""prunekit: pruning neural networks at initialization and early in training.

Public API::

    masks = prunekit.prune(model, "force", sparsity=0.99, data=batches, seed=0)
    scores = prunekit.score(model, "snip", data=batches)
    masks.apply(model); masks.report(model); masks.save(path); prunekit.Masks.load(path)
    prunekit.list_methods()
"""

__version__ = "0.1.0"

from .errors import ConfigError, DataError, MaskError, MaskFileError, PrunekitError, ScoreError  # noqa: E402
from .errors import PrunekitWarning  # noqa: E402
from .layer_report import LayerComparison, MaskReport, compare_masks  # noqa: E402
from .masks import Masks  # noqa: E402
from .methods import get_method, list_methods  # noqa: E402
from .prunable import prunable_parameters  # noqa: E402
from .pruning import prune, score  # noqa: E402

__all__ = [
    "ConfigError",
    "DataError",
    "MaskError",
    "MaskFileError",
    "LayerComparison",
    "MaskReport",
    "Masks",
    "PrunekitError",
    "PrunekitWarning",
    "ScoreError",
    "__version__",
    "compare_masks",
    "get_method",
    "list_methods",
    "prunable_parameters",
    "prune",
    "score",
]
