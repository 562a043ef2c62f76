"""Structured pruning early in training: channel importance on coupled groups, the dominant
sub-network under a MACs or parameter budget, physical channel removal, and the indicators that say
when to prune (EPI, Early-Bird).

    plan = prunekit.structured.plan_channels(model, budget="macs=0.5", importance="l1", data=batches)
    smaller = prunekit.structured.remove_channels(model, plan, example_inputs=x)
    fit(model, ds, cfg, callbacks=[prunekit.structured.EarlyPruning("macs=0.5", trigger="epi")])
"""

from .early import TRIGGERS, EarlyPruning, StructuredOptions, check_structured, parse_structured
from .graph import BUDGET_KINDS, Budget, ChannelGraph, count_macs_params, parse_budget
from .importance import ChannelImportance, get_importance, list_importances, register_importance
from .indicator import EPI_THRESHOLDS, EarlyBirdTracker, EPITracker, epi, hamming, psi
from .plan import ChannelPlan, plan_channels
from .remove import remove_channels, remove_channels_and_carry

__all__ = [
    "BUDGET_KINDS",
    "EPI_THRESHOLDS",
    "TRIGGERS",
    "Budget",
    "ChannelGraph",
    "ChannelImportance",
    "ChannelPlan",
    "EPITracker",
    "EarlyBirdTracker",
    "EarlyPruning",
    "StructuredOptions",
    "check_structured",
    "count_macs_params",
    "epi",
    "get_importance",
    "hamming",
    "list_importances",
    "parse_budget",
    "parse_structured",
    "plan_channels",
    "psi",
    "register_importance",
    "remove_channels",
    "remove_channels_and_carry",
]
