"""Iterative SNIP and FORCE (de Jorge et al., "Progressive Skeletonization", ICLR 2021).

Both run ``num_steps`` steps of score -> top-k along a density schedule (exponential by default) in the
shared loop of :func:`prunekit.prune`; their first step equals SNIP.

* **Iter-SNIP** scores ``|w~ * dL/dw~|`` on the currently pruned network ``w~ = w0 * m``; a pruned weight
  is never selected again, so the masks are nested (monotone).
* **FORCE** scores ``|w0 * dL/dw~|``: the gradient of the *pruned* network multiplied by the *dense*
  original weights, ranked over all weights, so a weight pruned at an earlier step can come back
  ("resurrection"). It maximises the connection sensitivity of the pruned network itself.

Deviation from the official code, by choice: the official pruning loss is ``F.nll_loss`` applied to
raw logits (inherited from a code base whose models output log-probabilities), i.e. the gradient of
``-mean(z_y)``; here the loss is the cross-entropy the paper defines (or the ``loss_fn`` passed in).
Each step draws ``num_batches`` new batches from the data, as the official code draws fresh batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..allocation import SCHEDULES
from ..options import option
from .context import ScoringContext
from .registry import Method, register_method
from .snip import BN_MODES, connection_sensitivity


@dataclass(frozen=True)
class IterativeSnipOptions:
    num_steps: int = option(60, "pruning steps T (official README: 60; official CLI default: 10)", min=1)
    schedule: str = option("exponential", "density schedule over the steps", choices=tuple(SCHEDULES))
    num_batches: int = option(1, "fresh mini-batches averaged per step (CIFAR-10: 1, ImageNet: 40)", min=1)
    bn_mode: str = option("train", "train: batch statistics; eval: running statistics", choices=BN_MODES)


def iter_snip_scores(ctx: ScoringContext, opts: IterativeSnipOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    return connection_sensitivity(ctx, masks, opts.num_batches, opts.bn_mode, dense_weights=False)


def force_scores(ctx: ScoringContext, opts: IterativeSnipOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    return connection_sensitivity(ctx, masks, opts.num_batches, opts.bn_mode, dense_weights=True)


register_method(
    Method(
        "iter_snip",
        "SNIP repeated along a density schedule on the pruned net; masks are nested",
        IterativeSnipOptions,
        iter_snip_scores,
        needs_data=True,
        monotone=True,
        reference="de Jorge et al., Progressive Skeletonization, ICLR 2021",
    )
)
register_method(
    Method(
        "force",
        "FORCE: |w0 * grad of the pruned net| along a schedule; pruned weights can come back",
        IterativeSnipOptions,
        force_scores,
        needs_data=True,
        monotone=False,
        reference="de Jorge et al., Progressive Skeletonization, ICLR 2021",
    )
)
