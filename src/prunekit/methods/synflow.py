"""SynFlow: iterative synaptic flow pruning, data-free (Tanaka et al., NeurIPS 2020).

Every floating-point tensor of a copy of the model (weights, biases, BN affine parameters *and* BN
running statistics) is replaced by its absolute value, BN runs in eval mode, and an all-ones input of
shape ``[1, *input_shape]`` gives ``R = sum(f(1))`` - for a bias-free ReLU chain ``1^T (prod |W_l|) 1``,
the total "synaptic flow" over all paths. The score is ``|theta * dR/dtheta|``. The network is pruned
over ``num_steps = 100`` steps of an exponential schedule, re-scoring the pruned network each time;
pruned weights score 0 and never come back.

Deviation from the official code, by choice: the official code (HEAD) computes in float32 (float64
was added and then commented out). The path product of a deep network without BN (a 19-layer VGG,
ResNet-50) overflows float32, so the computation here is float64 by default (``float64=True``), on a
copy. Only the shape of one input is read from ``data``; pass ``input_shape`` to run without data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..allocation import SCHEDULES
from ..errors import ConfigError
from ..options import option
from .context import ScoringContext
from .registry import Method, register_method
from .snip import BN_MODES


@dataclass(frozen=True)
class SynflowOptions:
    num_steps: int = option(100, "pruning steps (official: 100; 1 gives one-shot SynFlow)", min=1)
    schedule: str = option("exponential", "density schedule over the steps", choices=tuple(SCHEDULES))
    bn_mode: str = option("eval", "BN mode while scoring (official: eval)", choices=BN_MODES)
    float64: bool = option(True, "compute in float64 (official HEAD: float32, which overflows on deep nets)")
    input_shape: tuple[int, ...] | None = option(None, "shape of one input sample; default: read from one batch of data")


def _prepare(ctx: ScoringContext, opts: SynflowOptions) -> tuple:
    shape = opts.input_shape or ctx.input_shape
    if shape is None:
        raise ConfigError("synflow needs the input shape: pass input_shape=(C, H, W) or data= (only its shape is read)")
    net = ctx.copy(opts.bn_mode, dtype=torch.float64 if opts.float64 else None)
    with torch.no_grad():
        for t in net.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.data.abs_()
    params = ctx.prunable(net)
    abs_weights = {n: p.detach().clone() for n, p in params.items()}
    dtype = next(iter(params.values())).dtype
    ones = torch.ones((1, *shape), dtype=dtype, device=ctx.device)
    return net, params, abs_weights, ones


def synflow_scores(ctx: ScoringContext, opts: SynflowOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if "synflow" not in ctx.cache:
        ctx.cache["synflow"] = _prepare(ctx, opts)
    net, params, abs_weights, ones = ctx.cache["synflow"]
    with torch.no_grad():
        for name, p in params.items():
            w = abs_weights[name]
            p.copy_(w if masks is None else w * masks[name].to(device=w.device, dtype=w.dtype))
    out = net(ones)
    if isinstance(out, (tuple, list)):
        out = out[0]
    grads = torch.autograd.grad(out.sum(), list(params.values()), allow_unused=True)
    return {
        name: torch.zeros_like(p) if g is None else (p.detach() * g).abs() for (name, p), g in zip(params.items(), grads)
    }


register_method(
    Method(
        "synflow",
        "SynFlow: data-free path-norm scores |theta * dR/dtheta|, 100 steps, float64",
        SynflowOptions,
        synflow_scores,
        needs_data=False,
        monotone=True,
        reference="Tanaka, Kunin, Yamins & Ganguli, SynFlow, NeurIPS 2020",
    )
)
