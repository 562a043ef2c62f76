"""GraSP: gradient signal preservation (Wang, Zhang & Grosse, ICLR 2020), and |GraSP|.

``S(-theta) = -theta * (H g)`` with ``H`` the Hessian and ``g`` the gradient of the loss (both with respect
to the prunable weights). GraSP removes the weights with the *largest* ``S``, i.e. it keeps the largest
``theta * Hg``: that is the score returned here (higher = keep). ``grasp_abs`` scores ``|theta * Hg|``
(gradient-norm preservation, Lubana & Dick, ICLR 2021; discussed by Frankle et al., ICLR 2021).

As in the official code (``pruner/GraSP.py``):
    * the scoring copy re-initialises every ``Linear`` weight with Xavier-normal (``reinit_linear``) and
      scores with those weights; the trained model keeps its own initialisation;
    * ``samples_per_class`` class-balanced samples (CIFAR-10: 10) are scored, split into ``num_chunks``
      parts (official: 2 halves, which matters only for BN batch statistics and memory);
    * the temperature ``T = 200`` divides the logits in *both* passes;
    * BN is in train mode.

The sign is the paper's and the official GraSP code's. Early versions of the SynFlow repository's
GraSP (before commit e329c2e) used the inverted sign; that variant is not reproduced here.

Here ``g`` and ``Hg`` are those of the *mean* loss over all scored samples, however they are chunked
(the official code sums the two halves' mean losses, a constant factor of 2 that does not change the
ranking).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..batches import Batch, class_balanced
from ..options import option
from .context import LossFn, ScoringContext, apply_masks_
from .registry import Method, register_method
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


def hessian_gradient_product(
    net: nn.Module, params: list[Tensor], chunks: list[Batch], loss_fn: LossFn, temperature: float = 1.0
) -> tuple[list[Tensor], list[Tensor]]:
    """``(g, Hg)`` of the mean loss over all samples in ``chunks`` w.r.t. ``params``.

    The loss is ``loss_fn(net(x) / temperature, y)``, assumed to be a mean over the batch; chunks are
    weighted by their size so that the result does not depend on how the samples were chunked
    (except through BN batch statistics in train mode).
    """
    total = sum(int(x.shape[0]) for x, _ in chunks)

    def chunk_loss(x: Tensor, y: Tensor) -> Tensor:
        out = net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return loss_fn(out / temperature, y) * (x.shape[0] / total)

    g = [torch.zeros_like(p) for p in params]
    for x, y in chunks:
        for acc, gi in zip(g, torch.autograd.grad(chunk_loss(x, y), params, allow_unused=True)):
            if gi is not None:
                acc.add_(gi)
    hg = [torch.zeros_like(p) for p in params]
    for x, y in chunks:
        gf = torch.autograd.grad(chunk_loss(x, y), params, create_graph=True, allow_unused=True)
        z = sum((gi * fi).sum() for gi, fi in zip(g, gf) if fi is not None)
        if not isinstance(z, Tensor) or not z.requires_grad:
            continue
        for acc, hi in zip(hg, torch.autograd.grad(z, params, allow_unused=True)):
            if hi is not None:
                acc.add_(hi)
    return g, hg


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
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
    else:
        first_x, _ = ctx.data.peek()
        net.eval()  # probe the number of classes without batch statistics
        with torch.no_grad():
            out = net(first_x[:1])
        net.train(opts.bn_mode == "train")
        num_classes = (out[0] if isinstance(out, (tuple, list)) else out).shape[-1]
        x, y = class_balanced(ctx.data, opts.samples_per_class, num_classes)
    chunks = list(zip(x.tensor_split(min(opts.num_chunks, len(x))), y.tensor_split(min(opts.num_chunks, len(y)))))
    _, hg = hessian_gradient_product(net, list(params.values()), chunks, ctx.loss_fn, opts.temperature)
    return {n: p.detach() * h for (n, p), h in zip(params.items(), hg)}


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
    )
)
