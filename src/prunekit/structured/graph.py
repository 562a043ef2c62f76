"""Channel groups of a model and what they cost: the dependency graph (Torch-Pruning) and an exact
MACs/parameter model of every convolution and linear layer as a function of the channels kept.

Channels coupled by a residual addition, a BatchNorm, a depthwise convolution or a flatten -> Linear
form one *group* and are scored and removed together; Torch-Pruning's ``DependencyGraph`` finds them
on any module it can trace. The classifier (the last convolution or linear layer that runs, whose
outputs are the model's outputs) is never pruned.

MACs are counted as convolutions and linear layers count them (``out_h * out_w * c_out * c_in /
groups * k_h * k_w``, ``in * out``); parameters are every parameter of the model. Both are exact
functions of the kept channel counts, which is what the budget is checked against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("structured pruning needs Torch-Pruning: pip install torch-pruning") from None
    return torch_pruning


@dataclass
class Layer:
    """One convolution or linear layer: its channel groups and its cost per unit of channels."""

    name: str
    in_group: int | None  # index of the group its input channels belong to (None: fixed)
    out_group: int | None  # index of the group its output channels belong to (None: fixed)
    in_channels: int
    out_channels: int
    depthwise: bool
    macs: float  # at full width
    weight_params: int  # weight entries at full width
    per_out_params: int  # other parameters per output channel (bias)

    def macs_at(self, counts: Sequence[int]) -> float:
        cin = self.in_channels if self.in_group is None else counts[self.in_group]
        cout = self.out_channels if self.out_group is None else counts[self.out_group]
        if self.depthwise:
            return self.macs * cout / self.out_channels
        return self.macs * (cin / self.in_channels) * (cout / self.out_channels)

    def params_at(self, counts: Sequence[int]) -> float:
        cin = self.in_channels if self.in_group is None else counts[self.in_group]
        cout = self.out_channels if self.out_group is None else counts[self.out_group]
        if self.depthwise:
            return self.weight_params * cout / self.out_channels + self.per_out_params * cout
        return self.weight_params * (cin / self.in_channels) * (cout / self.out_channels) + self.per_out_params * cout


@dataclass
class ChannelGroup:
    """Channels pruned together: the root layer's output channels and everything coupled to them."""

    name: str  # the root layer's module name
    size: int
    layers: list[str] = field(default_factory=list)  # conv/linear layers whose outputs are these channels
    norm_params: int = 0  # per-channel parameters of the group's normalisation layers (BN weight + bias)
    unit: int = 1  # channels are kept in multiples of this (the heads of an attention the group feeds)


class ChannelGraph:
    """The prunable channel groups of ``model`` and its cost model.

    Args:
        model: traced as it is (not modified).
        example_inputs: one batch the model's forward accepts (a tensor, tuple or dict).
        ignore: module names never pruned (the classifier is always added).

    Raises:
        ConfigError: the model cannot be traced (the message names the layer where tracing failed).
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ignore: Sequence[str] = ()):
        tp = _tp()
        self.model = model
        self.example_inputs = example_inputs
        modules = dict(model.named_modules())
        attention: dict[str, tuple[int, int]] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}  # per layer: its input's shape per sample
        self.normalised: set[str] = set()  # layers whose output a BatchNorm normalises next
        self.latency: Any = None  # a LatencyModel, where a latency budget is planned
        order, shapes = _run_order(model, example_inputs, attention, self.input_shapes, self.normalised)
        if not order:
            raise ConfigError(f"{type(model).__name__} has no convolution or linear layer to prune")
        self.classifier = order[-1]
        ignored = {self.classifier, *ignore}
        for name in ignore:
            if name not in modules:
                raise ConfigError(f"ignore= names {name!r}, which is not a module of {type(model).__name__}")
        try:
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        except Exception as exc:
            raise ConfigError(
                f"Torch-Pruning cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
                "pass ignore=[...] for the layers it cannot handle"
            ) from None
        tp_groups = self.dg.get_all_groups(ignored_layers=[modules[n] for n in ignored], root_module_types=PRUNABLE_TYPES)
        self.groups: list[ChannelGroup] = []
        self._tp_roots: list[nn.Module] = []
        out_group: dict[str, int] = {}
        in_group: dict[str, int] = {}
        attention_group: dict[str, int] = {}
        fn = tp.pruner.function
        out_fns = {fn.prune_conv_out_channels, fn.prune_linear_out_channels, fn.prune_depthwise_conv_out_channels}
        in_fns = {fn.prune_conv_in_channels, fn.prune_linear_in_channels, fn.prune_depthwise_conv_in_channels}
        names = {m: n for n, m in modules.items()}
        for g in tp_groups:
            root = g[0].dep.target.module
            index = len(self.groups)
            group = ChannelGroup(names[root], len(g[0].idxs))
            for dep, _ in g:
                target = dep.target.module
                if not isinstance(target, nn.Module) or target not in names:
                    continue
                tname = names[target]
                if isinstance(target, PRUNABLE_TYPES):
                    if dep.handler in out_fns:
                        out_group[tname] = index
                        group.layers.append(tname)
                    if dep.handler in in_fns or (dep.handler in out_fns and _is_depthwise(target)):
                        in_group[tname] = index
                elif isinstance(target, nn.modules.batchnorm._BatchNorm) and target.affine:
                    group.norm_params += 2
                elif isinstance(target, nn.MultiheadAttention):
                    attention_group[tname] = index  # its embedding channels (in and out) are the group's
                    group.unit = math.lcm(group.unit, target.num_heads)  # every head keeps the same width
            self.groups.append(group)
            self._tp_roots.append(root)
        if not self.groups:
            raise ConfigError(f"{type(model).__name__} has no channel group that can be pruned (only the classifier?)")
        self.layers: list[Layer] = []
        for name in order:
            m = modules[name]
            w = m.weight
            if isinstance(m, nn.Linear):
                cin, cout, macs = m.in_features, m.out_features, float(m.in_features * m.out_features) * shapes[name]
                depthwise = False
            else:
                cin, cout = m.in_channels, m.out_channels
                macs = float(w.numel()) * shapes[name]
                depthwise = _is_depthwise(m)
            ig = in_group.get(name)
            if isinstance(m, nn.Linear) and ig is not None and self.groups[ig].size != cin:
                # flatten -> Linear: each channel of the group feeds in_features / size inputs
                cin_units = self.groups[ig].size
                layer = Layer(name, ig, out_group.get(name), cin_units, cout, False, macs, w.numel(), 0 if m.bias is None else 1)
            else:
                layer = Layer(name, ig, out_group.get(name), cin, cout, depthwise, macs, w.numel(), 0 if m.bias is None else 1)
            self.layers.append(layer)
        for name, (lq, lk) in attention.items():  # projections scale with the kept channels in and out, products with them once
            m = modules[name]
            e, g = m.embed_dim, attention_group.get(name)
            proj, products = attention_macs(m, lq, lk)
            weights = sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))
            biases = sum(p.numel() for n, p in m.named_parameters() if n.endswith("bias"))
            self.layers.append(Layer(f"{name}.projections", g, g, e, e, False, proj, weights, biases // e))
            self.layers.append(Layer(f"{name}.attention", g, g, e, e, True, products, 0, 0))
        full = [g.size for g in self.groups]
        other: float = sum(p.numel() for p in model.parameters())
        other -= sum(layer.params_at(full) for layer in self.layers)
        other -= sum(g.norm_params * g.size for g in self.groups)
        self._fixed_params = other  # parameters no group touches (e.g. a classifier's bias)

    @property
    def full_counts(self) -> list[int]:
        return [g.size for g in self.groups]

    def macs(self, counts: Sequence[int]) -> float:
        """Convolution + linear MACs per sample with ``counts`` channels kept in each group."""
        return sum(layer.macs_at(counts) for layer in self.layers)

    def params(self, counts: Sequence[int]) -> float:
        """Parameters of the model with ``counts`` channels kept in each group."""
        return self._fixed_params + sum(layer.params_at(counts) for layer in self.layers) + sum(
            g.norm_params * c for g, c in zip(self.groups, counts)
        )

    def cost(self, kind: str, counts: Sequence[int]) -> float:
        if kind == "latency":
            if self.latency is None:
                raise ConfigError("a latency budget needs the graph's latency model (plan_channels builds it)")
            return float(self.latency.step_time(counts))
        return self.macs(counts) if kind == "macs" else self.params(counts)

    def tp_group(self, index: int, idxs: Sequence[int]) -> Any:
        """Torch-Pruning's group of group ``index`` restricted to channels ``idxs``."""
        tp = _tp()
        root = self._tp_roots[index]
        handler = tp.pruner.function.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.pruner.function.prune_conv_out_channels
        return self.dg.get_pruning_group(root, handler, list(idxs))


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _attention_lengths(module: nn.MultiheadAttention, inputs: tuple[Any, ...]) -> tuple[int, int]:
    """Query and key sequence lengths of one call of ``module`` (batch-first or not; unbatched too)."""
    query, key = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
    axis = 1 if (module.batch_first and query.dim() == 3) else 0
    return int(query.shape[axis]), int(key.shape[axis])


def attention_macs(module: nn.MultiheadAttention, lq: int, lk: int) -> tuple[float, float]:
    """``(projection MACs, attention-product MACs)`` per sample of one ``nn.MultiheadAttention`` call:
    the q, k, v and output projections, and ``Q K^T`` plus ``A V`` (``2 Lq Lk E`` over all heads)."""
    e = module.embed_dim
    return float(lq * e * e + lk * module.kdim * e + lk * module.vdim * e + lq * e * e), float(2 * lq * lk * e)


def _run_order(
    model: nn.Module, example_inputs: Any, attention: dict[str, tuple[int, int]] | None = None,
    inputs: dict[str, tuple[int, ...]] | None = None, normalised: set[str] | None = None,
) -> tuple[list[str], dict[str, float]]:
    """Conv/linear layers in the order they run, and each one's output positions per sample; with
    ``attention``, also every ``nn.MultiheadAttention``'s query and key lengths; with ``inputs``, each
    layer's input shape per sample; with ``normalised``, the layers a BatchNorm runs on right after."""
    order: list[str] = []
    positions: dict[str, float] = {}
    handles = []
    last: list[nn.Module | None] = [None]
    if normalised is not None:
        names_of = {m: n for n, m in model.named_modules()}
        for m in names_of:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                def after(module: nn.Module, args: Any, output: Any) -> None:
                    prev = last[0]
                    if isinstance(prev, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and prev.out_channels == module.num_features:
                        normalised.add(names_of[prev])
                    last[0] = module

                handles.append(m.register_forward_hook(after))
    if attention is not None:
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention):
                def record_attention(module: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
                    if name not in attention:
                        attention[name] = _attention_lengths(module, inputs)  # type: ignore[arg-type]

                handles.append(m.register_forward_hook(record_attention))

    def hook(name: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            last[0] = module
            if name not in positions and isinstance(output, Tensor):
                batch = output.shape[0] if output.dim() > 1 else 1
                channels = output.shape[1] if not isinstance(module, nn.Linear) else output.shape[-1]
                positions[name] = output.numel() / batch / channels
                order.append(name)
                if inputs is not None and args and isinstance(args[0], Tensor):
                    inputs[name] = tuple(args[0].shape[1:]) if args[0].dim() > 1 else tuple(args[0].shape)

        return record

    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE_TYPES):
            handles.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order, positions


def call(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)`` for a tensor, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a mapping."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def count_macs_params(model: nn.Module, example_inputs: Any) -> tuple[float, int]:
    """Measured MACs per sample (convolutions, linear layers, and ``nn.MultiheadAttention``'s
    projections and attention products) and parameter count of ``model`` (any width)."""
    attention: dict[str, tuple[int, int]] = {}
    _, positions = _run_order(model, example_inputs, attention)
    modules = dict(model.named_modules())
    macs = 0.0
    for name, pos in positions.items():
        m = modules[name]
        if any(name.startswith(a + ".") for a in attention):
            continue  # an attention's out_proj: counted with its attention (its forward does not call the module)
        macs += (m.in_features * m.out_features if isinstance(m, nn.Linear) else m.weight.numel()) * pos
    for name, (lq, lk) in attention.items():
        macs += sum(attention_macs(modules[name], lq, lk))
    return macs, sum(p.numel() for p in model.parameters())


BUDGET_KINDS = {
    "macs": "multiply-accumulates per sample",
    "params": "parameters",
    "latency": "training-step time on the device it trains on (a measured latency table)",
}


class Budget(NamedTuple):
    """What a structured plan keeps: ``fraction`` of the network's ``kind`` (``str``: ``"macs=0.5"``)."""

    kind: str
    fraction: float

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"


def parse_budget(budget: str | Budget | Mapping[str, float]) -> Budget:
    """``"macs=0.5"`` / ``"params=0.3"`` / ``{"macs": 0.5}`` -> :class:`Budget` (validated once)."""
    if isinstance(budget, Budget):
        return budget
    items: list[tuple[str, Any]]
    if isinstance(budget, Mapping):
        items = list(budget.items())
    elif isinstance(budget, str) and "=" in budget:
        key, _, value = budget.partition("=")
        try:
            items = [(key.strip(), float(value))]
        except ValueError:
            raise ConfigError(f"budget {budget!r}: the fraction after '=' must be a number") from None
    else:
        raise ConfigError(f"budget must be {' or '.join(k + '=F' for k in BUDGET_KINDS)} (F: the fraction kept, in (0, 1)), got {budget!r}")
    if len(items) != 1 or items[0][0] not in BUDGET_KINDS:
        raise ConfigError(f"budget must name one of {', '.join(BUDGET_KINDS)}; got {budget!r}")
    kind, value = items[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ConfigError(f"budget fraction must be in (0, 1) (the share of {kind} kept), got {value!r}")
    return Budget(kind, float(value))
