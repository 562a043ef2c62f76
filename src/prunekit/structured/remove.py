"""Physical channel removal: a new, smaller model (Torch-Pruning), and the optimizer state of the
surviving channels carried across, so that training continues as if the removed channels had never
existed (momentum and Adam moments of the kept weights are kept, in the same places).

How the state is carried: the same plan is applied to an *index model*, a float64 copy whose every
parameter holds the flat position of each of its entries; after pruning, each of its parameters
says, for every surviving entry, where that entry was. Every per-entry optimizer state tensor is
gathered through that map. This works for any layout Torch-Pruning produces (residual groups,
flatten -> Linear, depthwise convolutions) without knowing which dimensions it cut.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .graph import ChannelGraph
from .plan import ChannelPlan


def _apply(model: nn.Module, plan: ChannelPlan, example_inputs: Any) -> nn.Module:
    graph = ChannelGraph(model, example_inputs)
    names = [g.name for g in graph.groups]
    if names != list(plan.groups) or graph.full_counts != list(plan.sizes):
        raise ConfigError(
            "the channel plan was made for another architecture "
            f"(groups {list(plan.groups)[:4]}... of sizes {list(plan.sizes)[:4]}..., the model has {names[:4]}... of {graph.full_counts[:4]}...)"
        )
    for i in range(len(graph.groups)):
        removed = plan.removed(i)
        if removed:
            graph.tp_group(i, removed).prune()
    return model


def remove_channels(model: nn.Module, plan: ChannelPlan, example_inputs: Any = None) -> nn.Module:
    """A new model with the channels of ``plan`` physically removed (``model`` is not modified).

    Args:
        model: the full-width model the plan was made for.
        plan: from :func:`~prunekit.structured.plan_channels`.
        example_inputs: one input batch (for tracing); default: the one the plan was made with
            (a plan read from a file has none: pass it then).

    Returns:
        A smaller copy: it computes what ``model`` computes with the removed channels' outputs
        zeroed (exactly, with BN in eval mode), in fewer operations.
    """
    example_inputs = example_inputs if example_inputs is not None else plan.example_inputs
    if example_inputs is None:
        raise ConfigError("remove_channels needs example_inputs= (one input batch): this plan was read from a file, not made from data")
    was_training = model.training
    smaller = _apply(copy.deepcopy(model).eval(), plan, example_inputs)
    return smaller.train(was_training)


def _index_maps(model: nn.Module, plan: ChannelPlan, example_inputs: Any) -> dict[str, torch.Tensor]:
    """For every parameter name: the flat positions, in the full-width parameter, of the entries that survive."""
    shadow = copy.deepcopy(model).to(torch.float64).eval()
    with torch.no_grad():
        for p in shadow.parameters():
            p.copy_(torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape))
    inputs = example_inputs.to(torch.float64) if isinstance(example_inputs, torch.Tensor) and example_inputs.is_floating_point() else example_inputs
    _apply(shadow, plan, inputs)
    return {n: p.detach().round().long().flatten() for n, p in shadow.named_parameters()}


def remove_channels_and_carry(
    model: nn.Module, optimizer: torch.optim.Optimizer, plan: ChannelPlan, example_inputs: Any
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """:func:`remove_channels`, plus a new optimizer of the same kind and hyper-parameters whose state
    (momentum buffers, Adam moments, step counts) is the old state of the surviving entries.

    Raises:
        ConfigError: the optimizer does not hold exactly the model's parameters.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    if any(id(p) not in names for group in optimizer.param_groups for p in group["params"]):
        raise ConfigError("the optimizer holds parameters that are not the model's; pass the model's own optimizer")
    maps = _index_maps(model, plan, example_inputs)
    smaller = remove_channels(model, plan, example_inputs)
    new_params = dict(smaller.named_parameters())
    groups = []
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        groups.append({**settings, "params": [new_params[names[id(p)]] for p in group["params"]]})
    new_opt = type(optimizer)(groups)  # type: ignore[call-arg]  # torch optimizers take (params, **defaults)
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            name = names[id(p)]
            q = new_params[name]
            idx = maps[name].to(p.device)
            carried = {}
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    carried[key] = value.flatten().index_select(0, idx).view(q.shape).clone()
                else:
                    carried[key] = copy.deepcopy(value)
            new_opt.state[q] = carried
    return smaller, new_opt
