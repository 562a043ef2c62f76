"""A budget in time: the training-step time of a channel plan, estimated from a measured latency table.

MACs are not where the time goes on every device (on a CPU, a 30 %-MACs ResNet-20 trains 1.1-1.4x
faster, not 3x). ``budget="latency=F"`` keeps ``F`` of the full network's *training-step time*
(forward, backward and optimizer step, at the run's batch size, precision and memory format, on the
device it trains on), in the manner of hardware-aware latency pruning (Shen et al., HALP, NeurIPS 2022):

* every convolution and linear layer is a *unit* (with the BatchNorm that normalises its output),
  timed alone, forward + backward + SGD step, for a grid of input and output widths: each group's
  widths are the multiples of its step (a group of 64 channels: 8, 16, ..., 64); the planner keeps
  groups at grid widths (those the table makes faster: below);
* the table is measured once per device, precision, memory format, batch size and layer shape, and
  cached on disk (``$PRUNEKIT_CACHE/latency``, keyed by the device, the torch version and the
  threads: another machine or torch measures again);
* the step of a network of widths ``c`` is estimated as ``fixed + sum_l T_l(c_in, c_out)``, where
  ``fixed`` (the loss, additions, pooling, the optimizer's loop, the framework) is calibrated once:
  the full network's measured step minus the sum of its units at full width;
* a narrower layer is not always a faster one: on the CPU with bf16 + channels-last and two threads,
  PyTorch's BatchNorm runs 3-10x slower at widths that are not a multiple of 16 (a 12-channel
  BatchNorm of a 32x32 map: 18.8 ms against 3.6 ms at 16 channels; benchmarks/RESULTS.md). A width
  is therefore *kept-able* only where its group costs less than at every wider kept-able width
  (:meth:`LatencyModel.widths`); the planner steps from one such width to the next, over the slow
  ones, and the estimate is the measured table itself.

The knapsack of :func:`~prunekit.structured.plan_channels` then buys time, not MACs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..files import atomic_write_json
from ..training.precision import Precision

FORMAT = 1
GRID_POINTS = 8  # widths per group: the multiples of size / 8


@dataclass(frozen=True)
class Unit:
    """One timed layer: a convolution or linear layer (with the BatchNorm after it), its input shape."""

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    depthwise: bool
    spatial: tuple[int, ...]  # input positions per sample (H, W), or the token dims of a linear layer
    bias: bool
    norm: bool

    def key(self) -> str:
        return json.dumps([self.kind, self.in_channels, self.out_channels, self.kernel, self.stride, self.padding, self.depthwise,
                           self.spatial, self.bias, self.norm])


def grid(size: int, unit: int = 1) -> list[int]:
    """The widths a group of ``size`` channels is timed (and kept) at: multiples of its step."""
    step = max(unit, math.ceil(size / GRID_POINTS / unit) * unit)
    widths = list(range(step, size + 1, step))
    return widths if widths and widths[-1] == size else [*widths, size]


def step_of(size: int, unit: int = 1) -> int:
    widths = grid(size, unit)
    return widths[0]


def device_key(device: torch.device, precision: Precision, batch_size: int) -> str:
    """What a latency table is valid for: the device, torch, threads, precision, memory format, batch."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()} {_cpu_model()}, {torch.get_num_threads()} threads"
    return json.dumps([FORMAT, device.type, where, torch.__version__, precision.dtype, precision.memory_format, batch_size])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cache_path(key: str) -> Path:
    root = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")) / "latency"
    return root / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")


class LatencyTable:
    """Measured unit times (seconds) of one device key, ``{unit key: {"cin,cout": seconds}}``, on disk."""

    def __init__(self, key: str, path: Path | None = None):
        self.key = key
        self.path = path or cache_path(key)
        self.times: dict[str, dict[str, float]] = {}
        if self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
            except (OSError, ValueError):
                stored = None
            if isinstance(stored, dict) and stored.get("key") == key:  # another device or torch: measured again
                self.times = {k: dict(v) for k, v in stored.get("times", {}).items()}

    def get(self, unit: Unit, cin: int, cout: int) -> float | None:
        return self.times.get(unit.key(), {}).get(f"{cin},{cout}")

    def put(self, unit: Unit, cin: int, cout: int, seconds: float) -> None:
        self.times.setdefault(unit.key(), {})[f"{cin},{cout}"] = seconds

    def save(self) -> None:
        atomic_write_json(self.path, {"key": self.key, "times": self.times}, indent=0)


def time_unit(unit: Unit, cin: int, cout: int, batch_size: int, precision: Precision, device: torch.device,
              repeats: int = 15, warmup: int = 3) -> float:
    """Median seconds of one training step of ``unit`` at widths ``(cin, cout)``: forward, backward
    (to its input and weights) and an SGD step with momentum."""
    torch.manual_seed(0)
    if unit.kind == "conv":
        groups = cin if unit.depthwise else 1
        cout = cin if unit.depthwise else cout
        conv = nn.Conv2d(cin, cout, unit.kernel, unit.stride, unit.padding, groups=groups, bias=unit.bias)  # type: ignore[arg-type]
        layers: list[nn.Module] = [conv]
        if unit.norm:
            layers.append(nn.BatchNorm2d(cout))
        net = nn.Sequential(*layers).to(device)
        x = torch.randn(batch_size, cin, *unit.spatial, device=device)
        if precision.channels_last:
            net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            x = x.contiguous(memory_format=torch.channels_last)
    else:
        net = nn.Sequential(nn.Linear(cin, cout, bias=unit.bias)).to(device)
        x = torch.randn(batch_size, *unit.spatial, cin, device=device)
    x.requires_grad_(True)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    with precision.autocast(device):
        grad = torch.ones_like(F.relu(net(x)))

    def step() -> None:
        with precision.autocast(device):
            y = F.relu(net(x))
        y.backward(grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        x.grad = None

    return median_seconds(step, device, repeats, warmup)


def median_seconds(step: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall-clock seconds of ``step()`` over ``repeats`` calls after ``warmup`` untimed ones
    (the device synchronised around each call)."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class LatencyModel:
    """The step-time estimate of a channel graph: ``fixed + sum of its units at the kept widths``.

    Args:
        units: one per layer of the graph (None: a layer that is not timed, e.g. an attention's
            pseudo-layer: refused where a latency budget is asked for).
        unit_time: ``(layer index, cin, cout) -> seconds``, from a :class:`LatencyTable` or a test's
            own numbers, defined at every width of each group's grid (its multiples of ``group.unit``).
        fixed: seconds of a step outside the units.
    """

    def __init__(self, graph: Any, unit_time: Callable[[int, int, int], float], fixed: float):
        self.graph = graph
        self.unit_time = unit_time
        self.fixed = fixed
        self._widths: list[list[int]] | None = None

    def layer_time(self, index: int, counts: Sequence[int]) -> float:
        return self.unit_time(index, *_widths_at(self.graph.layers[index], counts))

    def step_time(self, counts: Sequence[int]) -> float:
        return self.fixed + sum(self.layer_time(i, counts) for i in range(len(self.graph.layers)))

    def group_time(self, g: int, width: int) -> float:
        """The time of the layers group ``g`` feeds or reads, at ``width`` with every other group full."""
        counts = list(self.graph.full_counts)
        counts[g] = width
        return sum(self.layer_time(i, counts) for i, layer in enumerate(self.graph.layers) if g in (layer.in_group, layer.out_group))

    def widths(self) -> list[list[int]]:
        """Each group's widths a plan may keep, widest first: the full width, then every grid width at
        which the group costs less than at each wider one kept. A width at which the measured table
        is slower than at a wider width (a kernel's bad width, or noise) is never kept: removing
        channels down to it would cost time, and the planner steps over it to the next faster width."""
        if self._widths is None:
            out = []
            for g, group in enumerate(self.graph.groups):
                kept, best = [group.size], self.group_time(g, group.size)
                for w in sorted(grid(group.size, group.unit), reverse=True)[1:]:
                    t = self.group_time(g, w)
                    if t < best:
                        kept.append(w)
                        best = t
                out.append(kept)
            self._widths = out
        return self._widths


def units_of(graph: Any) -> list[Unit]:
    """The timed unit of every layer of ``graph`` (its shape, and the BatchNorm after it).

    Raises:
        ConfigError: a layer the latency model cannot time (an attention: use ``macs=``).
    """
    modules = dict(graph.model.named_modules())
    out = []
    for layer in graph.layers:
        m = modules.get(layer.name)
        if m is None or not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise ConfigError(f"a latency budget times convolutions (2-D) and linear layers; {layer.name} of {type(graph.model).__name__} "
                              "is neither (an attention or a 1-D/3-D convolution): use a macs= or params= budget for this model")
        spatial = graph.input_shapes[layer.name]
        bn = layer.name in graph.normalised
        if isinstance(m, nn.Conv2d):
            out.append(Unit("conv", m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride), tuple(m.padding),  # type: ignore[arg-type]
                            layer.depthwise, tuple(spatial[1:]), m.bias is not None, bn))
        else:
            out.append(Unit("linear", m.in_features, m.out_features, (), (), (), False, tuple(spatial[:-1]), m.bias is not None, False))
    return out


def measured_model(graph: Any, model: nn.Module, example_inputs: Any, batch_size: int, precision: Precision,
                   device: torch.device, progress: Callable[[str], None] | None = None) -> LatencyModel:
    """The latency model of ``graph`` on ``device``: units timed (or read from the cache) at every
    grid width, ``fixed`` calibrated on the full network's measured step."""
    units = units_of(graph)
    table = LatencyTable(device_key(device, precision, batch_size))
    widths = [grid(g.size, g.unit) for g in graph.groups]
    todo = []
    for unit, layer in zip(units, graph.layers):
        ins = [layer.in_channels] if layer.in_group is None else widths[layer.in_group]
        outs = [layer.out_channels] if layer.out_group is None else widths[layer.out_group]
        for cin in ins:
            for cout in outs:
                cout_ = cin if unit.depthwise else cout
                if table.get(unit, cin, cout_) is None:
                    todo.append((unit, cin, cout_))
    for i, (unit, cin, cout) in enumerate(dict.fromkeys(todo)):
        if progress is not None and i % 50 == 0:
            progress(f"latency table: {i}/{len(set(todo))} layer widths timed")
        table.put(unit, cin, cout, time_unit(unit, cin, cout, batch_size, precision, device))
    if todo:
        table.save()

    def unit_time(index: int, cin: int, cout: int) -> float:
        t = table.get(units[index], cin, cin if units[index].depthwise else cout)
        if t is None:
            raise ConfigError(f"no latency measured for {graph.layers[index].name} at widths ({cin}, {cout})")
        return t

    full_step = time_network(model, example_inputs, batch_size, precision, device)
    units_full = sum(unit_time(i, *_widths_at(graph.layers[i], graph.full_counts)) for i in range(len(graph.layers)))
    return LatencyModel(graph, unit_time, max(0.0, full_step - units_full))


def _widths_at(layer: Any, counts: Sequence[int]) -> tuple[int, int]:
    cin = layer.in_channels if layer.in_group is None else counts[layer.in_group]
    cout = layer.out_channels if layer.out_group is None else counts[layer.out_group]
    return cin, cout


def time_network(model: nn.Module, example_inputs: Tensor, batch_size: int, precision: Precision, device: torch.device,
                 repeats: int = 15, warmup: int = 3) -> float:
    """Median seconds of one training step of ``model`` (a copy) at ``batch_size``: forward,
    cross-entropy on its logits, backward, SGD with momentum."""
    return median_seconds(training_step(model, example_inputs, batch_size, precision, device), device, repeats, warmup)


def timed_copy(model: nn.Module, example_inputs: Tensor, batch_size: int, precision: Precision,
               device: torch.device) -> tuple[nn.Module, Tensor]:
    """A copy of ``model`` on ``device`` and a batch of ``batch_size`` (the example repeated, plus
    noise), both in ``precision``'s memory format: what a step is timed on."""
    import copy

    net = copy.deepcopy(model).to(device)
    x = example_inputs[:1].to(device).expand(batch_size, *example_inputs.shape[1:]).contiguous()
    x = x + 0.01 * torch.randn_like(x)
    if precision.channels_last and x.dim() == 4:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    return net, x


def training_step(model: nn.Module, example_inputs: Tensor, batch_size: int, precision: Precision,
                  device: torch.device) -> Callable[[], None]:
    """One training step of a copy of ``model`` at ``batch_size``, as a function to time: forward,
    cross-entropy on its logits, backward, SGD with momentum (inputs: the example plus noise)."""
    net, x = timed_copy(model, example_inputs, batch_size, precision, device)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    with torch.no_grad(), precision.autocast(device):
        classes = net(x[:2]).shape[-1]
    y = torch.randint(0, classes, (batch_size,), device=device, generator=torch.Generator(device=device).manual_seed(0))

    def step() -> None:
        with precision.autocast(device):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step
