"""Channel importances: one small registered function per criterion, like the unstructured scores.

Each takes a :class:`~prunekit.structured.graph.ChannelGraph` and returns one importance vector per
channel group (higher = keep). Scores are Torch-Pruning's group importances, *summed* over every
coupled layer of a group and not normalised: a channel of a residual stream that feeds seven
convolutions carries the weight of all seven, as it carries their cost, so that "importance per
unit of budget" compares channels across groups on one scale (averaging or normalising per group
instead makes the widest-reaching groups look cheap to remove and empties them first).

* ``l1``, ``l2``: the filter magnitude (L1 / L2 norm of each channel's weights in every coupled layer);
* ``bn_scale``: ``|gamma|`` of the BatchNorm layers of the group (Network Slimming; Early-Bird);
* ``taylor``: first-order Taylor, ``|sum w * dL/dw|`` per channel (Molchanov et al., 2019; EPI's
  gradient family), on gradients accumulated over several batches (``.grad`` of the model's
  parameters, which :func:`~prunekit.structured.plan_channels` fills from ``data``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry
from .graph import ChannelGraph, _tp


@dataclass(frozen=True)
class ChannelImportance:
    """A registered channel-importance criterion."""

    name: str
    summary: str
    needs_gradients: bool
    make: Callable[[], Callable]  # -> Torch-Pruning importance object (callable on a group)


_IMPORTANCES: Registry[ChannelImportance] = Registry("importance")


def register_importance(imp: ChannelImportance) -> ChannelImportance:
    """Add a channel importance (names are unique)."""
    return _IMPORTANCES.register(imp)


def get_importance(name: str) -> ChannelImportance:
    """The channel importance called ``name`` (an error listing the valid ones otherwise)."""
    return _IMPORTANCES.get(name)


def list_importances() -> list[str]:
    """Names of the channel importances."""
    return _IMPORTANCES.names()


def group_importances(graph: ChannelGraph, name: str) -> list[Tensor]:
    """One importance vector per group of ``graph`` (length = the group's channels; higher = keep).

    Raises:
        ConfigError: a gradient criterion without gradients, or ``bn_scale`` on a group with no BatchNorm.
    """
    imp = get_importance(name)
    if imp.needs_gradients:
        missing = [n for n, p in graph.model.named_parameters() if p.requires_grad and p.grad is None]
        if missing:
            raise ConfigError(f"importance {name!r} needs gradients: pass data= (the parameters have no .grad, e.g. {missing[0]!r})")
    scorer = imp.make()
    out = []
    for i, g in enumerate(graph.groups):
        tp_group = graph.tp_group(i, range(g.size))
        scores = scorer(tp_group)
        if scores is None or scores.numel() != g.size:
            if name == "bn_scale":
                raise ConfigError(f"importance 'bn_scale' needs a BatchNorm in every pruned group; {g.name!r} has none")
            raise ConfigError(f"importance {name!r} gave no score for the channels of {g.name!r}")
        out.append(scores.detach().double().cpu())
    return out


def _magnitude(p: int) -> Callable:
    tp = _tp()
    return tp.importance.GroupMagnitudeImportance(p=p, group_reduction="sum", normalizer=None)


register_importance(ChannelImportance("l1", "L1 norm of each channel's weights in every coupled layer", False, lambda: _magnitude(1)))
register_importance(ChannelImportance("l2", "L2 norm of each channel's weights in every coupled layer", False, lambda: _magnitude(2)))
register_importance(
    ChannelImportance("bn_scale", "|gamma| of the group's BatchNorm layers (Network Slimming, Early-Bird)", False,
                      lambda: _tp().importance.BNScaleImportance(group_reduction="sum", normalizer=None))
)
register_importance(
    ChannelImportance("taylor", "first-order Taylor |w * dL/dw| per channel, gradients accumulated over batches", True,
                      lambda: _tp().importance.GroupTaylorImportance(group_reduction="sum", normalizer=None,
                                                                      target_types=[nn.modules.conv._ConvNd, nn.Linear,
                                                                                    nn.modules.batchnorm._BatchNorm]))
)
