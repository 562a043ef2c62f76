"""SNIP: connection sensitivity ``|g * theta|`` (Lee, Ajanthan & Torr, ICLR 2019).

The score of a weight is the magnitude of the derivative of the loss with respect to a multiplicative
indicator ``c_j`` on it, at ``c = 1``: ``|dL(c * theta)/dc_j| = |g_j * theta_j|`` with ``g`` the gradient of
the loss on one mini-batch. The paper normalises by the sum of scores, which does not change the
ranking and is omitted.

Deviations from the official TensorFlow code, by choice:
    * Only conv/linear weights are prunable (the TF code ranks biases together with weights); every
      PyTorch port does the same.
    * The mask is computed on the weights that will be trained (``reinit=False``). The TF code scores
      an independent random draw of the weights; ``reinit=True`` re-draws every prunable weight with
      Xavier-normal in the scoring copy, as mil-ad/snip does. Frankle et al. (2021) found the choice
      does not matter.
    * BN runs in train mode (batch statistics) like the PyTorch ports and FORCE/GraSP; the TF code
      used moving statistics (``bn_mode="eval"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..options import option
from .context import ScoringContext, apply_masks_
from .registry import Method, register_method

BN_MODES = ("train", "eval")


@dataclass(frozen=True)
class SnipOptions:
    num_batches: int = option(1, "mini-batches whose gradients are averaged (official: 1)", min=1)
    bn_mode: str = option("train", "train: batch statistics; eval: running statistics", choices=BN_MODES)
    reinit: bool = option(False, "score a Xavier-normal re-draw of the weights, like the official code")


def connection_sensitivity(
    ctx: ScoringContext,
    masks: Mapping[str, Tensor] | None,
    num_batches: int,
    bn_mode: str,
    dense_weights: bool,
    reinit: bool = False,
) -> dict[str, Tensor]:
    """``|w * dL/dw~|`` with the gradient taken at ``w~ = w0 * m`` (``m`` = ``masks``, all ones if None).

    Args:
        dense_weights: multiply by the dense original ``w0`` (FORCE) rather than by ``w~`` (SNIP,
            Iter-SNIP); the two differ only on pruned entries.
    """
    net = ctx.copy(bn_mode)
    params = ctx.prunable(net)
    if reinit:
        for p in params.values():
            ctx.xavier_normal_(p)
    w0 = {n: p.detach().clone() for n, p in params.items()}
    apply_masks_(params, masks)
    grads = ctx.mean_gradients(net, list(params.values()), ctx.data.take(num_batches))
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
    )
)
