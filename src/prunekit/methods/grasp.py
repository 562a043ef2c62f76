"""GraSP: gradient signal preservation (Wang, Zhang & Grosse, ICLR 2020), and |GraSP|.

``S(-theta) = -theta * (H g)`` with ``H`` the Hessian and ``g`` the gradient of the loss (both with respect
to the prunable weights). GraSP removes the weights with the *largest* ``S``, i.e. it keeps the largest
``theta * Hg``: that is the score returned here (higher = keep). ``grasp_abs`` scores ``|theta * Hg|``
(gradient-norm preservation, Lubana & Dick, ICLR 2021; discussed by Frankle et al., ICLR 2021).

As in the official code (``pruner/GraSP.py``):
    * the scoring copy re-initialises every ``Linear`` weight with Xavier-normal (``reinit_linear``) and
      scores with those weights; the trained model keeps its own initialisation;
    * ``samples_per_class`` class-balanced samples (CIFAR-10: 10) are scored, the first met of each
      class, **ordered by class** (all of class 0, then class 1, ...) and split into ``num_chunks``
      parts at ``floor(i N / num_chunks)`` (official: 2 halves, classes 0-4 and 5-9 for CIFAR-10).
      With BN in train mode the chunks' batch statistics depend on which samples share a chunk, so
      the order matters on BN networks; ordered this way the scores equal the official code's;
    * the temperature ``T = 200`` divides the logits in *both* passes;
    * BN is in train mode.

The sign is the paper's and the official GraSP code's. Early versions of the SynFlow repository's
GraSP (before commit e329c2e) used the inverted sign; that variant is not reproduced here.

Here ``g`` and ``Hg`` are those of the *mean* loss over all scored samples, however they are chunked
(the official code sums the two halves' mean losses, a constant factor of 2 that does not change the
ranking).

Count and ties: the official code removes the weights whose ``-theta*Hg`` is *strictly* above the
``int(N (1 - d))``-th largest, i.e. keeps one weight more than asked and every tie at the threshold.
prunekit keeps exactly ``round(d N)`` by index top-k; ``count_rule="official"`` (or ``official=True``)
uses the official rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core import inputs as inp
from ..core.batches import Batch, class_balanced
from ..core.outputs import OutputFn, logits_of
from ..distributed import mean_across_ranks_
from ..errors import ScoreError
from ..options import option
from .context import LossFn, ScoringContext, apply_masks_, second_order_attention
from .registry import Method, count_rule_option, official_option, register_method
from .snip import BN_MODES


@dataclass(frozen=True)
class GraspOptions:
    samples_per_class: int | None = option(
        10, "class-balanced samples per class (CIFAR-10: 10); None: use num_batches plain batches", min=1
    )
    num_batches: int = option(1, "plain batches scored when samples_per_class is None", min=1)
    temperature: float = option(200.0, "logits are divided by T in both passes", min=0.0, min_exclusive=True)
    reinit_linear: bool = option(True, "re-draw Linear weights with Xavier-normal in the scoring copy (official)")
    num_chunks: int = option(2, "parts the samples are split into (memory; BN batch statistics)", min=1)
    bn_mode: str = option("train", "train: batch statistics; eval: running statistics", choices=BN_MODES)
    count_rule: str = count_rule_option()
    official: bool = official_option()


def hessian_gradient_product(
    net: nn.Module,
    params: list[Tensor],
    chunks: list[Batch],
    loss_fn: LossFn,
    temperature: float = 1.0,
    output_fn: OutputFn = logits_of,
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """``(g, Hg)`` of the mean loss over all samples in ``chunks`` w.r.t. ``params``.

    The loss is ``loss_fn(output_fn(net(x)) / temperature, y)``, assumed to be a mean over the batch;
    chunks are weighted by their size so that the result does not depend on how the samples were
    chunked (except through BN batch statistics in train mode). A parameter the loss does not depend
    on gets ``None`` in both lists.
    """
    total = sum(inp.batch_size(x) for x, _ in chunks)

    def chunk_loss(x: inp.Inputs, y: Tensor) -> Tensor:
        return loss_fn(output_fn(inp.call(net, x)) / temperature, y) * (inp.batch_size(x) / total)

    g = [torch.zeros_like(p) for p in params]
    used: set[int] = set()
    for x, y in chunks:
        for i, (acc, gi) in enumerate(zip(g, torch.autograd.grad(chunk_loss(x, y), params, allow_unused=True))):
            if gi is not None:
                acc.add_(gi)
                used.add(i)
    mean_across_ranks_(g)  # under torch.distributed: g over every rank's samples, then H g likewise
    hg = [torch.zeros_like(p) for p in params]
    for x, y in chunks:
        gf = torch.autograd.grad(chunk_loss(x, y), params, create_graph=True, allow_unused=True)
        z = sum((gi * fi).sum() for gi, fi in zip(g, gf) if fi is not None)
        if not isinstance(z, Tensor) or not z.requires_grad:
            continue
        for acc, hi in zip(hg, torch.autograd.grad(z, params, allow_unused=True)):
            if hi is not None:
                acc.add_(hi)
    mean_across_ranks_(hg)
    return [t if i in used else None for i, t in enumerate(g)], [t if i in used else None for i, t in enumerate(hg)]


def _theta_hg(ctx: ScoringContext, opts: GraspOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    net = ctx.copy(opts.bn_mode)
    params = ctx.prunable(net)
    if opts.reinit_linear:
        for name, module in net.named_modules():
            if isinstance(module, nn.Linear) and f"{name}.weight" in params:
                ctx.xavier_normal_(module.weight)
    apply_masks_(params, masks)
    if opts.samples_per_class is None:
        batches = ctx.data.take(opts.num_batches)
        x = inp.concat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
    else:
        first_x, _ = ctx.data.peek()
        net.eval()  # probe the number of classes without batch statistics
        with torch.no_grad():
            logits = ctx.logits(inp.call(net, inp.select(first_x, slice(0, 1))))
        net.train(opts.bn_mode == "train")
        if logits.dim() < 2:
            raise ScoreError(f"grasp needs class logits of shape (batch, classes), got shape {tuple(logits.shape)}")
        x, y = class_balanced(ctx.data, opts.samples_per_class, logits.shape[-1])
    chunks = split_chunks(x, y, opts.num_chunks)
    names = list(params)
    with second_order_attention():
        _, hg = hessian_gradient_product(net, list(params.values()), chunks, ctx.loss_fn, opts.temperature, ctx.output_fn)
    ctx.warn_unused([n for n, h in zip(names, hg) if h is None])
    return {n: p.detach() * (torch.zeros_like(p) if h is None else h) for (n, p), h in zip(params.items(), hg)}


def split_chunks(x: inp.Inputs, y: Tensor, num_chunks: int) -> list[Batch]:
    """``num_chunks`` consecutive parts, cut at ``floor(i N / num_chunks)`` like the official halves
    (``[:N//2]``, ``[N//2:]``); empty parts are dropped."""
    n = inp.batch_size(x)
    bounds = [i * n // num_chunks for i in range(num_chunks + 1)]
    return [(inp.select(x, slice(a, b)), y[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]


def grasp_scores(ctx: ScoringContext, opts: GraspOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    return _theta_hg(ctx, opts, masks)


def grasp_abs_scores(ctx: ScoringContext, opts: GraspOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    return {n: s.abs() for n, s in _theta_hg(ctx, opts, masks).items()}


register_method(
    Method(
        "grasp",
        "GraSP: keep the largest theta*Hg (remove those whose removal most reduces gradient flow)",
        GraspOptions,
        grasp_scores,
        needs_data=True,
        reference="Wang, Zhang & Grosse, GraSP, ICLR 2020",
        official={"count_rule": "official"},
        official_rule="grasp",
    )
)
register_method(
    Method(
        "grasp_abs",
        "|GraSP|: keep the largest |theta*Hg| (gradient-norm preservation)",
        GraspOptions,
        grasp_abs_scores,
        needs_data=True,
        reference="Lubana & Dick, ICLR 2021; Frankle et al., ICLR 2021",
        official={"count_rule": "official"},
        official_rule="grasp",
    )
)
