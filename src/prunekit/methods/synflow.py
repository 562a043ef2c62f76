"""SynFlow: iterative synaptic flow pruning, data-free (Tanaka et al., NeurIPS 2020).

Every floating-point tensor of a copy of the model (weights, biases, BN affine parameters *and* BN
running statistics) is replaced by its absolute value, BN runs in eval mode, and an all-ones input of
shape ``[1, *input_shape]`` gives ``R = sum(f(1))`` - for a bias-free ReLU chain ``1^T (prod |W_l|) 1``,
the total "synaptic flow" over all paths. The score is ``|theta * dR/dtheta|``. The network is pruned
over ``num_steps = 100`` steps of an exponential schedule, re-scoring the pruned network each time;
pruned weights score 0 and never come back.

R is the sum of the logits the call's ``output_fn`` finds in the output (the same tensor every
method reads; by default the first element of a tuple), so a model returning ``(aux, logits)`` needs
``output_fn=``. A prunable weight that does not reach those logits scores 0 and a warning names it.

Deviations from the official code (ganguli-lab/Synaptic-Flow), by choice; ``official=True``
reproduces both:
    * **Precision.** The official code (HEAD) computes in float32 (float64 was added and then
      commented out). prunekit computes in float64 (``float64=True``), on a copy, because the path
      sum overflows float32 on deep residual networks. Measured with
      ``benchmarks/synflow_precision.py`` (2026-11-27, zoo initialisation, CIFAR and ImageNet input
      sizes): ResNet-56, ResNet-110 and ResNet-50 give infinite scores in float32 (with BN in eval
      mode at initialisation every residual block adds its branch to the identity path, so the sum
      grows about geometrically with depth); ResNet-20 peaks at 3e24 and the VGGs without BN at
      3e13-1.6e28, below float32's 3.4e38, and there float32 ranks like float64 (Spearman >= 1 - 3e-10).
      float64 costs about 2x on the CPU and more on GPUs with slow float64.
    * **Count and ties.** The official code prunes ``int((1 - d) N)`` weights and every tie at the
      threshold (``score <= t`` is pruned), and skips a step that would prune fewer than one weight.
      prunekit keeps exactly ``round(d N)`` by index top-k; ``count_rule="official"`` uses the
      official rule. Over 100 rounds a one-weight difference early leaves masks overlapping 86-93 %:
      compare per-layer allocations and accuracy, not mask identity.

Only the structure, shapes and dtypes of one batch are read from ``data``; pass ``input_shape`` or
``example_inputs=`` to run without data. Inputs may be a tensor, a tuple or a dict: floating-point
tensors become ones; integer ones (token ids, attention masks) keep their values, and every
``nn.Embedding`` then outputs the column sums of its ``|E|`` at each position (the lookup of an
all-ones one-hot vector), so a language model is scored by the same path sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import inputs as inp
from ..core.allocation import SCHEDULES
from ..errors import ConfigError
from ..options import option
from .context import ScoringContext
from .registry import Method, count_rule_option, official_option, register_method
from .snip import BN_MODES


@dataclass(frozen=True)
class SynflowOptions:
    num_steps: int = option(100, "pruning steps (official: 100; 1 gives one-shot SynFlow)", min=1)
    schedule: str = option("exponential", "density schedule over the steps", choices=tuple(SCHEDULES))
    bn_mode: str = option("eval", "BN mode while scoring (official: eval)", choices=BN_MODES)
    float64: bool = option(True, "compute in float64 (official HEAD: float32)")
    input_shape: tuple[int, ...] | None = option(None, "shape of one input sample; default: read from one batch of data")
    count_rule: str = count_rule_option()
    official: bool = official_option()


def _prepare(ctx: ScoringContext, opts: SynflowOptions) -> tuple:
    if opts.input_shape is None and ctx.example is None:
        raise ConfigError(
            "synflow needs the model's input: pass input_shape=(C, H, W), example_inputs= (one batch of inputs) "
            "or data= (only the shapes and dtypes of one batch are read)"
        )
    net = ctx.copy(opts.bn_mode, dtype=torch.float64 if opts.float64 else None)
    with torch.no_grad():
        for t in net.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.data.abs_()
    params = ctx.prunable(net)
    abs_weights = {n: p.detach().clone() for n, p in params.items()}
    dtype = next(iter(params.values())).dtype
    if opts.input_shape is not None:
        ones: inp.Inputs = torch.ones((1, *opts.input_shape), dtype=dtype, device=ctx.device)
    else:
        ones = inp.all_ones(ctx.example, dtype)
        if inp.has_integer_inputs(ctx.example):
            inp.embeddings_emit_ones(net)  # token ids: the all-ones signal enters through the embeddings
    return net, params, abs_weights, ones


def synflow_scores(ctx: ScoringContext, opts: SynflowOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if "synflow" not in ctx.cache:
        ctx.cache["synflow"] = _prepare(ctx, opts)
    net, params, abs_weights, ones = ctx.cache["synflow"]
    with torch.no_grad():
        for name, p in params.items():
            w = abs_weights[name]
            if masks is None:
                p.copy_(w)
            else:
                torch.mul(w, masks[name], out=p)  # bool masks promote in the multiply: no converted copy
    out = ctx.logits(inp.call(net, ones))
    grads = torch.autograd.grad(out.sum(), list(params.values()), allow_unused=True)
    if "synflow_warned" not in ctx.cache:
        ctx.cache["synflow_warned"] = True
        ctx.warn_unused([n for n, g in zip(params, grads) if g is None])
    return {name: torch.zeros_like(p) if g is None else torch.mul(p.detach(), g).abs_() for (name, p), g in zip(params.items(), grads)}


register_method(
    Method(
        "synflow",
        "SynFlow: data-free path-norm scores |theta * dR/dtheta|, 100 steps, float64",
        SynflowOptions,
        synflow_scores,
        needs_data=False,
        monotone=True,
        reference="Tanaka, Kunin, Yamins & Ganguli, SynFlow, NeurIPS 2020",
        official={"count_rule": "official", "float64": False},
        official_rule="synflow",
    )
)
