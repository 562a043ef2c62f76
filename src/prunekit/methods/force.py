"""Iterative SNIP and FORCE (de Jorge et al., "Progressive Skeletonization", ICLR 2021).

Both run ``num_steps`` steps of score -> top-k along a density schedule (exponential by default) in the
shared loop of :func:`prunekit.prune`; their first step equals SNIP.

* **Iter-SNIP** scores ``|w~ * dL/dw~|`` on the currently pruned network ``w~ = w0 * m``; a pruned weight
  is never selected again, so the masks are nested (monotone).
* **FORCE** scores ``|w0 * dL/dw~|``: the gradient of the *pruned* network multiplied by the *dense*
  original weights, ranked over all weights, so a weight pruned at an earlier step can come back
  ("resurrection"). It maximises the connection sensitivity of the pruned network itself.

Each step draws ``num_batches`` new batches from the data, as the official code draws fresh batches.

Deviations from the official code (naver/force), by choice; ``official=True`` reproduces both:
    * **Loss.** The official pruning loss is ``F.nll_loss`` applied to raw logits (inherited from a
      code base whose models returned log-probabilities), i.e. the gradient of ``-mean(z_y)``; here
      it is the cross-entropy the paper defines (or the ``loss_fn`` passed in).
      ``official_loss=True`` uses the official one. The published FORCE results were obtained with
      it; the first step's scores of the two losses have a Spearman correlation of about 0.76.
    * **Count and ties.** The official code keeps ``int(d N)`` weights and then every weight whose
      score is ``>=`` the threshold (all ties kept); Iter-SNIP first gives the pruned weights the
      global minimum score, so with massive ties they can come back. prunekit keeps exactly
      ``round(d N)`` by index top-k. ``count_rule="official"`` uses the official rule; on a step
      whose scores are mostly 0 it keeps far more than asked (realised density 1.0 for a scheduled
      0.79 was seen on random inputs).

The masks of an iterative method are chaotic in the last steps: one weight more at step 2 leaves the
official code's own masks overlapping only 34-67 % after 10 FORCE steps. Compare per-layer
allocations and accuracies, not mask identity (:func:`prunekit.compare_masks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..core.allocation import SCHEDULES
from ..options import option
from .context import ScoringContext, nll_on_logits
from .registry import Method, count_rule_option, official_option, register_method
from .snip import BN_MODES, connection_sensitivity


@dataclass(frozen=True)
class IterativeSnipOptions:
    num_steps: int = option(60, "pruning steps T (official README: 60; official CLI default: 10)", min=1)
    schedule: str = option("exponential", "density schedule over the steps", choices=tuple(SCHEDULES))
    num_batches: int = option(1, "fresh mini-batches averaged per step (CIFAR-10: 1, ImageNet: 40)", min=1)
    bn_mode: str = option("train", "train: batch statistics; eval: running statistics", choices=BN_MODES)
    official_loss: bool = option(False, "the official pruning loss: F.nll_loss on raw logits (-mean z_y)", since="0.2")
    count_rule: str = count_rule_option()
    official: bool = official_option()


def iter_snip_scores(ctx: ScoringContext, opts: IterativeSnipOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    loss = nll_on_logits if opts.official_loss else None
    return connection_sensitivity(ctx, masks, opts.num_batches, opts.bn_mode, dense_weights=False, loss_fn=loss)


def force_scores(ctx: ScoringContext, opts: IterativeSnipOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    loss = nll_on_logits if opts.official_loss else None
    return connection_sensitivity(ctx, masks, opts.num_batches, opts.bn_mode, dense_weights=True, loss_fn=loss)


_OFFICIAL = {"official_loss": True, "count_rule": "official"}


register_method(
    Method(
        "iter_snip",
        "SNIP repeated along a density schedule on the pruned net; masks are nested",
        IterativeSnipOptions,
        iter_snip_scores,
        needs_data=True,
        monotone=True,
        reference="de Jorge et al., Progressive Skeletonization, ICLR 2021",
        official=_OFFICIAL,
        official_rule="floor_keep_ties_min_pruned",
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
        official=_OFFICIAL,
        official_rule="floor_keep_ties",
    )
)
