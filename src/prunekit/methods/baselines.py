"""Baselines: random (uniform per layer), random with ERK layer densities, magnitude at init."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .context import ScoringContext
from .registry import Method, register_method


@dataclass(frozen=True)
class NoOptions:
    """This method has no options."""


def random_scores(ctx: ScoringContext, opts: NoOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """i.i.d. N(0, 1) scores, drawn on the CPU from the seeded generator (same masks on any device)."""
    shapes = {n: p.shape for n, p in ctx.original().items()}
    return {n: torch.randn(s, generator=ctx.generator, dtype=torch.float64) for n, s in shapes.items()}


def magnitude_scores(ctx: ScoringContext, opts: NoOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """``|theta|`` of the weights as they are (at initialization for pruning at init)."""
    return {n: w.abs() for n, w in ctx.original().items()}


register_method(
    Method(
        "random",
        "random scores; every layer keeps the same fraction of its weights (exact counts)",
        NoOptions,
        random_scores,
        needs_data=False,
        allocation="layerwise",
        reference="uniform random pruning (SynFlow's Rand ranks N(0,1) scores globally: the same in expectation)",
    )
)
register_method(
    Method(
        "random_erk",
        "random scores with Erdos-Renyi-Kernel layer densities",
        NoOptions,
        random_scores,
        needs_data=False,
        allocation="erk",
        reference="Liu et al., ICLR 2022; Evci et al., ICML 2020 (RigL)",
    )
)
register_method(
    Method(
        "magnitude",
        "|theta| of the initial weights, ranked globally",
        NoOptions,
        magnitude_scores,
        needs_data=False,
        reference="magnitude at initialization (Frankle et al., ICLR 2021)",
    )
)
