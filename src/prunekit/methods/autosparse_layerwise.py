"""Layer-aware AutoSparse: per-layer densities and a within-layer ranking, both learned from the tickets
of iterative rewind pruning (one or several teachers); :mod:`prunekit.autosparse.layerwise`.

The paper's AutoSparse (method ``autosparse``) ranks every weight of the model against every other
one by a score network of ``(theta0, g0)``; nothing in those features names a weight's layer, and the
global threshold starves small layers (``benchmarks/RESULTS.md``). Here the density model predicts
how many weights each layer keeps (allocation ``learned``: exactly ``round(d N)`` in all, every
layer at least one), and the ranking model orders the weights inside a layer from features that mean
the same in every layer (within-layer ranks and relative sizes of ``|theta0|``, ``|g0|``,
``|theta0 g0|``). ``g0`` is the gradient summed over ``gradient_batches`` batches; the features do
not depend on its scale. ``profile=`` replaces the learned densities by a teacher's own ticket
profile (a model of the teacher's architecture). Frankle et al.'s question, does the ranking add
anything beyond the allocation, is the ``shuffle`` ablation of a run.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from torch import Tensor

from ..options import option
from .context import ScoringContext
from .registry import Method, register_method

if TYPE_CHECKING:
    from ..autosparse.layerwise import LayerwiseScorer

DEFAULT_SCORER = "irp-lenets-resnet20"


@dataclass(frozen=True)
class AutoSparseLayerwiseOptions:
    scorer: str = option(DEFAULT_SCORER, "a shipped layer-aware scorer's name (prunekit autosparse list) or a scorer file")
    scorer_sha256: str | None = option(None, "the scorer file's checksum, filled in when a run is resolved: a file taught again "
                                       "at the same path is another run; scoring refuses a file that changed since")
    profile: str | None = option(None, "a teacher of the scorer (prunekit autosparse list): its tickets' per-layer densities "
                                 "instead of the learned ones, for a model of the teacher's architecture")
    gradient_batches: int | None = option(10, "batches summed for g0 (None: one full pass); the features are scale-free", min=1)


def _scorer(opts: AutoSparseLayerwiseOptions) -> LayerwiseScorer:
    from ..autosparse import ScorerFileError, load_layerwise_scorer

    scorer = load_layerwise_scorer(opts.scorer)
    if opts.scorer_sha256 is not None and scorer.sha256 != opts.scorer_sha256:
        raise ScorerFileError(f"the scorer file {opts.scorer!r} changed since this run was resolved (checksum {scorer.sha256} "
                              f"instead of {opts.scorer_sha256}): it is another run; resolve it again")
    return scorer


def layerwise_scores(ctx: ScoringContext, opts: AutoSparseLayerwiseOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    from ..autosparse import full_pass_gradient
    from ..autosparse.layerwise import weight_features
    from ..console import ProgressLines

    scorer = _scorer(opts)
    batches = ProgressLines("autosparse_layerwise: g0", opts.gradient_batches, "batches")
    g0 = full_pass_gradient(ctx.model, ctx.data.source, ctx.names, num_batches=opts.gradient_batches, loss_fn=ctx.loss_fn,
                            output_fn=ctx.output_fn, progress=None if sys.stderr.isatty() else batches.update)
    theta0 = ctx.original()
    return {n: scorer.rank(weight_features(theta0[n], g0[n])).view(theta0[n].shape).to(ctx.device) for n in ctx.names}


def layerwise_counts(ctx: ScoringContext, opts: AutoSparseLayerwiseOptions, density: float) -> Sequence[int]:
    from ..autosparse.layerwise import layer_descriptors

    scorer = _scorer(opts)
    params = dict(ctx.model.named_parameters())
    shapes = [tuple(params[n].shape) for n in ctx.names]
    if opts.profile is not None:
        return scorer.profile_counts(opts.profile, shapes, density)
    return scorer.counts(layer_descriptors(ctx.model, ctx.names, shapes), [math.prod(s) for s in shapes], density)


def complete_options(opts: AutoSparseLayerwiseOptions) -> AutoSparseLayerwiseOptions:
    """The scorer is read now (one clear error if it is missing, not a layer-aware scorer, or has no
    such teacher for ``profile``); a file's checksum becomes part of the run."""
    from ..autosparse import list_layerwise_scorers
    from ..errors import ConfigError

    scorer = _scorer(opts)
    teachers = [t["name"] for t in scorer.meta.get("teachers", [])]
    if opts.profile is not None and opts.profile not in teachers:
        raise ConfigError(f"profile {opts.profile!r}: the scorer {opts.scorer!r} was taught on {', '.join(map(repr, teachers))}")
    return opts if opts.scorer in list_layerwise_scorers() else replace(opts, scorer_sha256=scorer.sha256)


register_method(
    Method(
        "autosparse_layerwise",
        "AutoSparse, layer-aware: per-layer densities and a within-layer ranking learned from IRP tickets",
        AutoSparseLayerwiseOptions,
        layerwise_scores,
        needs_data=True,
        allocation="learned",
        complete=complete_options,
        layer_counts=layerwise_counts,
        reference="after Liu, Cheng et al., arXiv 2408.14757; prunekit's layer-aware variant (docs/autosparse.md)",
    )
)
