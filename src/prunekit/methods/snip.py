"""SNIP: connection sensitivity ``|g * theta|`` (Lee, Ajanthan & Torr, ICLR 2019).

The score of a weight is the magnitude of the derivative of the loss with respect to a multiplicative
indicator ``c_j`` on it, at ``c = 1``: ``|dL(c * theta)/dc_j| = |g_j * theta_j|`` with ``g`` the gradient of
the loss on one mini-batch. The paper normalises by the sum of scores, which does not change the
ranking and is omitted.

The count is the official code's: ``round(d N)`` weights by exact top-k (the TF code's ``top_k``).

Deviations from the official TensorFlow code, by choice (``official=True`` undoes the last two):
    * Only conv/linear weights are prunable (the TF code ranks biases together with weights); every
      PyTorch port does the same. Add biases with ``include=["*.weight", "*.bias"]`` to rank them too.
    * The mask is computed on the weights that will be trained (``reinit=False``). The TF code scores
      an independent random draw of the weights; ``reinit=True`` re-draws every prunable weight with
      Xavier-normal in the scoring copy, as mil-ad/snip does. Frankle et al. (2021) found the choice
      does not matter.
    * BN runs in train mode (batch statistics), as FORCE, GraSP and ProsPr score. The TF code, and
      Synaptic-Flow's SNIP baseline (its ``prune_train_mode=False`` default), score with moving
      statistics: ``bn_mode="eval"``, which at initialisation makes BN the identity. On BN networks
      the two modes give very different masks (10-16 % overlap measured on VGG/ResNet at 98 %), so
      compare with a paper only in the mode it used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..options import option
from .context import LossFn, ScoringContext, apply_masks_
from .registry import Method, official_option, register_method

BN_MODES = ("train", "eval")


@dataclass(frozen=True)
class SnipOptions:
    num_batches: int = option(1, "mini-batches whose gradients are averaged (official: 1)", min=1)
    bn_mode: str = option("train", "train: batch statistics; eval: running statistics", choices=BN_MODES)
    reinit: bool = option(False, "score a Xavier-normal re-draw of the weights, like the official code")
    official: bool = official_option()


def connection_sensitivity(
    ctx: ScoringContext,
    masks: Mapping[str, Tensor] | None,
    num_batches: int,
    bn_mode: str,
    dense_weights: bool,
    reinit: bool = False,
    loss_fn: LossFn | None = None,
) -> dict[str, Tensor]:
    """``|w * dL/dw~|`` with the gradient taken at ``w~ = w0 * m`` (``m`` = ``masks``, all ones if None).

    Args:
        dense_weights: multiply by the dense original ``w0`` (FORCE) rather than by ``w~`` (SNIP,
            Iter-SNIP); the two differ only on pruned entries.
        loss_fn: replaces the call's loss (FORCE's official loss).
    """
    net = ctx.copy(bn_mode)
    params = ctx.prunable(net)
    if reinit:
        for p in params.values():
            ctx.xavier_normal_(p)
    w0 = {n: p.detach().clone() for n, p in params.items()}
    apply_masks_(params, masks)
    grads = ctx.mean_gradients(net, list(params.values()), ctx.data.take(num_batches), loss_fn)
    scores = {}
    for (name, p), g in zip(params.items(), grads):
        w = w0[name] if dense_weights else p.detach()
        scores[name] = (w * g).abs()
    return scores


def snip_scores(ctx: ScoringContext, opts: SnipOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    return connection_sensitivity(ctx, masks, opts.num_batches, opts.bn_mode, dense_weights=False, reinit=opts.reinit)


register_method(
    Method(
        "snip",
        "connection sensitivity |g * theta| on one mini-batch, one shot",
        SnipOptions,
        snip_scores,
        needs_data=True,
        reference="Lee, Ajanthan & Torr, SNIP, ICLR 2019",
        official={"bn_mode": "eval", "reinit": True},
    )
)
