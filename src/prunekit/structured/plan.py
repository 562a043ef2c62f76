"""The dominant sub-network under a budget: which channels a structured pruner would keep now.

:func:`plan_channels` scores every channel group (:mod:`.importance`) and runs a deterministic greedy
knapsack: starting from the full network, it removes the channel with the lowest importance per unit
of budget it frees (MACs or parameters, recomputed as channels go), one at a time, until the network
fits the budget, never taking a group below ``min_keep`` of its channels (and never below one). The result, a :class:`ChannelPlan`, is
the channels kept per group (and per layer), with MACs and parameters before and after; the model is
not modified. :func:`~prunekit.structured.remove_channels` applies a plan physically.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batches import BatchStream
from ..core.outputs import logits_of
from ..errors import ConfigError
from ..methods.context import default_loss, model_device, model_dtype
from ..training.precision import Precision
from .graph import ChannelGraph, call, parse_budget
from .importance import get_importance, group_importances
from .latency import LatencyModel


@dataclass(frozen=True)
class ChannelPlan:
    """Channels to keep, per coupled group; JSON-serialisable through :meth:`to_dict`.

    Attributes:
        groups: each group's name (its root layer) in the model's run order.
        sizes: each group's channels at full width.
        kept: the kept channel indices of each group (sorted).
        layers: output channels kept per convolution / linear layer.
        budget: ``(kind, fraction)``, e.g. ``("macs", 0.5)``.
        importance: the criterion that ranked the channels.
        macs_before, macs_after, params_before, params_after: per-sample MACs (convolutions,
            linear layers, attention) and parameter counts at full width and after pruning.
        example_inputs: the input batch the model was traced with (kept in memory, not in
            :meth:`to_dict`): :func:`~prunekit.structured.remove_channels` reuses it.
    """

    groups: tuple[str, ...]
    sizes: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]
    layers: Mapping[str, int]
    budget: tuple[str, float]
    importance: str
    macs_before: float
    macs_after: float
    params_before: float
    params_after: float
    example_inputs: Any = field(default=None, compare=False, repr=False)
    step_seconds_before: float | None = None  # a latency plan's estimated training step, full and pruned
    step_seconds_after: float | None = None

    @property
    def counts(self) -> list[int]:
        """Channels kept in each group: the sub-network's architecture (what EPI compares)."""
        return [len(k) for k in self.kept]

    def removed(self, index: int) -> list[int]:
        keep = set(self.kept[index])
        return [i for i in range(self.sizes[index]) if i not in keep]

    @property
    def mask(self) -> Tensor:
        """A bool vector over every channel of every group (kept = True), for Hamming distances."""
        parts = []
        for size, kept in zip(self.sizes, self.kept):
            m = torch.zeros(size, dtype=torch.bool)
            m[list(kept)] = True
            parts.append(m)
        return torch.cat(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups), "sizes": list(self.sizes), "kept": [list(k) for k in self.kept],
            "layers": dict(self.layers), "budget": [self.budget[0], self.budget[1]], "importance": self.importance,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "params_before": self.params_before, "params_after": self.params_after,
            **({} if self.step_seconds_before is None else
               {"step_seconds_before": self.step_seconds_before, "step_seconds_after": self.step_seconds_after}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChannelPlan:
        return cls(
            tuple(d["groups"]), tuple(d["sizes"]), tuple(tuple(k) for k in d["kept"]), dict(d["layers"]),
            (d["budget"][0], float(d["budget"][1])), d["importance"], float(d["macs_before"]), float(d["macs_after"]),
            float(d["params_before"]), float(d["params_after"]), None, d.get("step_seconds_before"), d.get("step_seconds_after"),
        )

    def __str__(self) -> str:
        kind, frac = self.budget
        lines = [f"channel plan ({self.importance}, {kind} <= {frac:g}): MACs {self.macs_before:,.0f} -> {self.macs_after:,.0f} "
                 f"({self.macs_after / self.macs_before:.1%}), parameters {self.params_before:,.0f} -> {self.params_after:,.0f} "
                 f"({self.params_after / self.params_before:.1%})"]
        if self.step_seconds_before and self.step_seconds_after is not None:
            lines[0] += (f", training step {1000 * self.step_seconds_before:.1f} -> {1000 * self.step_seconds_after:.1f} ms "
                         f"({self.step_seconds_after / self.step_seconds_before:.1%}, estimated)")
        for name, size, kept in zip(self.groups, self.sizes, self.kept):
            lines.append(f"  {name}: {len(kept)}/{size}")
        return "\n".join(lines)


def example_inputs_of(data: Iterable | None, example_inputs: Any, model: nn.Module) -> Any:
    """One input for tracing: ``example_inputs`` as given, or the first sample of ``data``."""
    if example_inputs is not None:
        return example_inputs
    if data is None:
        raise ConfigError("structured pruning traces the model: pass example_inputs= (one input batch) or data=")
    x, _ = BatchStream(data, model_device(model), model_dtype(model)).peek()
    return x[:1]


def accumulate_gradients(model: nn.Module, data: Iterable, batches: int, loss_fn: Any = None) -> None:
    """Fill ``.grad`` of ``model`` with the sum of ``batches`` batches' mean-loss gradients (train mode)."""
    stream = BatchStream(data, model_device(model), model_dtype(model))
    model.zero_grad(set_to_none=True)
    model.train()
    for x, y in stream.take(batches):
        (loss_fn or default_loss)(logits_of(call(model, x)), y).backward()


def plan_channels(
    model: nn.Module,
    budget: str | Mapping[str, float] = "macs=0.5",
    importance: str = "l1",
    data: Iterable | None = None,
    *,
    example_inputs: Any = None,
    ignore: Sequence[str] = (),
    min_keep: float = 0.1,
    taylor_batches: int = 4,
    graph: ChannelGraph | None = None,
    scores: Sequence[Tensor] | None = None,
    batch_size: int = 128,
    precision: Precision | None = None,
    latency: LatencyModel | None = None,
) -> ChannelPlan:
    """The dominant sub-network of ``model`` under ``budget``; the model is not modified.

    Args:
        model: any ``nn.Module`` Torch-Pruning can trace.
        budget: ``"macs=F"``, ``"params=F"`` or ``"latency=F"``: the fraction of MACs, parameters or
            training-step time kept (:mod:`prunekit.structured.latency`: measured on the model's
            device at ``batch_size`` and ``precision``, cached; groups kept at the measured widths).
        importance: a name from :func:`~prunekit.structured.list_importances`.
        data: batches of ``(inputs, targets)``: the example input for tracing, and the gradients
            of ``taylor`` (summed over ``taylor_batches`` batches, on a copy).
        example_inputs: one input batch for tracing (instead of ``data``).
        ignore: module names never pruned (the classifier never is).
        min_keep: every group keeps at least ``max(1, ceil(min_keep * size))`` channels: a layer is
            never removed, and (by default) never thinned below a tenth, which a MACs budget would
            otherwise do to the high-resolution early layers first.
        graph, scores: an already built graph of ``model`` and its group importances (used by
            :class:`~prunekit.structured.EarlyPruning`, which scores as training goes).
        batch_size, precision: the training step a latency budget is timed at (default precision:
            fp32, contiguous).
        latency: an already built latency model of ``graph`` (instead of measuring one).

    Raises:
        ConfigError: a bad budget, importance or option; a model Torch-Pruning cannot trace; a budget
            that cannot be met without emptying a group.
    """
    kind, fraction = parse_budget(budget)
    imp = get_importance(importance)
    check_min_keep(min_keep)
    if graph is None:
        work = copy.deepcopy(model)
        graph = ChannelGraph(work, example_inputs_of(data, example_inputs, work), ignore)
    if kind == "latency":
        attach_latency(graph, model, batch_size, precision, latency)
    if scores is None:
        if imp.needs_gradients:
            if data is None:
                raise ConfigError(f"importance {importance!r} needs data= to compute gradients")
            accumulate_gradients(graph.model, data, taylor_batches)
        scores = group_importances(graph, importance)
    return _knapsack(graph, [s.double() for s in scores], kind, fraction, min_keep, importance)


def attach_latency(graph: ChannelGraph, model: nn.Module, batch_size: int, precision: Precision | None,
                   latency: LatencyModel | None = None) -> LatencyModel:
    """Give ``graph`` its latency model (measured on the model's device unless given), and keep its
    groups at the widths the table holds (each group's unit becomes its grid step)."""
    from .latency import measured_model, step_of

    for group in graph.groups:
        group.unit = step_of(group.size, group.unit)
    if latency is None:
        device = model_device(model)
        if device.type == "meta":
            raise ConfigError("a latency budget is timed on the device the model trains on; this model is on the meta device")
        precision = precision or Precision()
        latency = measured_model(graph, graph.model, graph.example_inputs, batch_size, precision, device)
    graph.latency = latency
    return latency


def check_min_keep(min_keep: float) -> float:
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, float)) or not 0.0 <= min_keep < 1.0:
        raise ConfigError(f"min_keep must be a fraction in [0, 1) (0: at least one channel per group), got {min_keep!r}")
    return float(min_keep)


def _floors(graph: ChannelGraph, min_keep: float, kind: str = "macs") -> list[int]:
    """The fewest channels each group may keep: ``max(1, ceil(min_keep * size))``, rounded up to the
    group's unit (a multiple of its attention heads); under a latency budget, up to the narrowest
    width the plan may keep there (:meth:`~prunekit.structured.latency.LatencyModel.widths`)."""
    floors = [max(g.unit, math.ceil(math.ceil(min_keep * g.size) / g.unit) * g.unit) for g in graph.groups]
    if kind == "latency":
        floors = [min(w for w in widths if w >= f) for widths, f in zip(graph.latency.widths(), floors)]
    return floors


def check_budget(graph: ChannelGraph, kind: str, fraction: float, min_keep: float) -> None:
    """Refuse a budget that no plan can meet without taking a group below ``min_keep`` (before training).

    Raises:
        ConfigError: naming the smallest share of ``kind`` the network can keep.
    """
    full = graph.full_counts
    least = graph.cost(kind, _floors(graph, min_keep, kind)) / graph.cost(kind, full)
    if fraction < least:
        raise ConfigError(
            f"budget {kind}={fraction:g} cannot be met without emptying layers: keeping at least max(1, {min_keep:g} x size) "
            f"channels per group, the network keeps {least:.2%} of its {kind}; ask for at least {kind}={math.ceil(least * 1e4) / 1e4:g} "
            "or a lower min_keep"
        )


def _knapsack(graph: ChannelGraph, scores: list[Tensor], kind: str, fraction: float, min_keep: float, importance: str) -> ChannelPlan:
    """Remove, one step at a time, the step of channels with the lowest importance per unit of budget
    it frees, until the network fits. A step takes a group to its next narrower width: one channel
    less, or a group's attention heads' width less; under a latency budget, the next width the
    measured table makes faster (slower widths are stepped over). A step that frees nothing now (a
    measured time flat between two widths) is taken only when no step frees anything, the least
    important first: it opens the way to the next width's saving."""
    check_budget(graph, kind, fraction, min_keep)
    full = graph.full_counts
    counts = list(full)
    floor = _floors(graph, min_keep, kind)
    allowed = graph.latency.widths() if kind == "latency" else None
    before = graph.cost(kind, full)
    target = fraction * before
    # channels of each group from least to most important (ties: lower index first)
    values: list[list[float]] = [s.tolist() for s in scores]
    order = [sorted(range(len(v)), key=lambda i, v=v: (v[i], i)) for v in values]  # type: ignore[misc]
    removed: list[list[int]] = [[] for _ in full]
    touching: list[list[int]] = [[] for _ in full]
    for i, layer in enumerate(graph.layers):
        for g in {layer.in_group, layer.out_group} - {None}:
            touching[g].append(i)  # type: ignore[index]
    neighbours = [{h for i in touching[g] for h in (graph.layers[i].in_group, graph.layers[i].out_group) if h is not None}
                  for g in range(len(full))]

    def cost_at(i: int, c: list[int]) -> float:
        if kind == "latency":
            return float(graph.latency.layer_time(i, c))
        return graph.layers[i].macs_at(c) if kind == "macs" else graph.layers[i].params_at(c)

    def group_cost(g: int, width: int) -> float:
        """The cost of the layers group ``g`` feeds or reads with ``g`` at ``width``, the others as they are now."""
        now, counts[g] = counts[g], width
        total = sum(cost_at(i, counts) for i in touching[g])
        counts[g] = now
        return total

    targets: list[int | None] = [None] * len(full)
    gains = [0.0] * len(full)

    def refresh(g: int) -> None:
        """Group ``g``'s next width and what stepping to it frees. No next width where the group can go
        no further: at its floor (the width below a floor is never costed: a latency table has no time
        for it) or, under a latency budget, where no narrower kept-able width costs less than the
        current one with the neighbours' widths as they are now (the widest that does is the next step)."""
        now = group_cost(g, counts[g])
        candidates = [counts[g] - graph.groups[g].unit] if allowed is None else [w for w in allowed[g] if w < counts[g]]
        targets[g], gains[g] = None, 0.0
        for w in candidates:
            if w < floor[g]:
                break
            after = group_cost(g, w)
            if allowed is None or after < now:
                freed = float(graph.groups[g].norm_params * (counts[g] - w)) if kind == "params" else 0.0
                targets[g], gains[g] = w, freed + now - after
                return

    def next_step(g: int) -> list[int]:
        return order[g][len(removed[g]) : len(removed[g]) + counts[g] - targets[g]]  # type: ignore[operator]

    for g in range(len(full)):
        refresh(g)
    current = before
    while current > target:
        best: tuple[float, float, int, int] | None = None
        for g in range(len(full)):
            if targets[g] is None or gains[g] < 0:
                continue
            step = next_step(g)
            importance_ = sum(values[g][c] for c in step)
            key = (0.0, importance_ / gains[g], g, step[0]) if gains[g] > 0 else (1.0, importance_, g, step[0])
            if best is None or key < best:
                best = key
        if best is None:
            least = graph.cost(kind, floor)
            if least <= target:  # a latency plan where no narrower width is faster than the widths reached
                raise ConfigError(
                    f"budget {kind}={fraction:g} cannot be met: the plan reached {current / before:.2%} of the step, and no group "
                    "has a narrower width that the measured table makes faster from there; ask for a larger fraction"
                )
            raise ConfigError(
                f"budget {kind}={fraction:g} cannot be met without emptying layers: keeping at least "
                f"max(1, {min_keep:g} x size) channels per group, the network keeps {least / before:.2%} of its {kind}"
            )
        _, _, g, _ = best
        step = next_step(g)
        removed[g].extend(step)
        counts[g] -= len(step)
        current = graph.cost(kind, counts)
        for h in neighbours[g] | {g}:
            refresh(h)
    kept = tuple(tuple(sorted(set(range(n)) - set(r))) for n, r in zip(full, removed))
    layer_out = {layer.name: layer.out_channels if layer.out_group is None else counts[layer.out_group] for layer in graph.layers}
    return ChannelPlan(
        tuple(g.name for g in graph.groups), tuple(full), kept, layer_out, (kind, fraction), importance,
        graph.macs(full), graph.macs(counts), graph.params(full), graph.params(counts), graph.example_inputs,
        *((graph.cost("latency", full), graph.cost("latency", counts)) if kind == "latency" else (None, None)),
    )
