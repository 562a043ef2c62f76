"""The fused stacked forward: N networks as one plain network over ``N x C`` channels, no vmap.

The members' activations live side by side in the channel dimension, ``[B, N*C, H, W]`` (member n
owns channels ``n*C .. (n+1)*C``), where every per-channel operation is already per member:

* a convolution becomes one convolution with ``N`` times the groups, over the stacked weight
  ``[N, C_out, C_in/g, k, k]`` seen as ``[N*C_out, ...]`` (a view: no copy);
* a BatchNorm becomes one BatchNorm over ``N*C`` channels: per member and channel statistics, the
  running statistics updated in place through views of the stacked ``[N, C]`` buffers;
* a Linear on ``[B, N*F]`` becomes a grouped 1x1 convolution with ``N`` groups (flattening
  ``[B, N*C, H, W]`` keeps each member's features contiguous and in the member's own order);
* residual additions, ReLU-like activations, dropout, pooling and ``flatten(1)`` act per channel
  or per feature and run as they are.

So one fused step issues the kernels of one plain model's step (plus a copy of the input into this
layout and a view of the output back), where ``torch.func.vmap``'s batching rules add per-op
reshapes and split BatchNorm's affine into separate multiplies. The model is traced with
``torch.fx``; a graph holding anything outside the operations above (or whose fused output does not
equal the vmap path's on a probe batch, checked when the stacked model is built) uses vmap instead.
"""

from __future__ import annotations

import copy
import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .model import StackedModel

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_FUNCTIONS = {
    operator.add, operator.iadd, torch.add, torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.tanh, torch.sigmoid,
    F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten,
}
_METHODS = {"relu", "relu_", "add", "add_", "size", "view", "reshape", "flatten", "sigmoid", "tanh"}


class FusionError(Exception):
    """The model holds an operation the fused path does not handle (the vmap path is used)."""


class _Member(nn.Module):
    """A fused layer: reads its stacked parameters and buffers from the owner at every call (so that
    ``.to(device)`` on the owner, which replaces buffers, is always seen)."""

    def __init__(self, owner: StackedModel, prefix: str):
        super().__init__()
        self.__dict__["owner"] = owner
        self.prefix = prefix

    def param(self, name: str) -> Tensor | None:
        owner = self.__dict__["owner"]
        i = owner.param_index.get(self.prefix + name)
        return None if i is None else owner.stacked[i]

    def buffer(self, name: str) -> Tensor | None:
        owner = self.__dict__["owner"]
        i = owner.buffer_index.get(self.prefix + name)
        return None if i is None else getattr(owner, f"_buffer_{i}")


class FusedConv(_Member):
    def __init__(self, owner: StackedModel, prefix: str, conv: nn.Conv1d | nn.Conv2d):
        super().__init__(owner, prefix)
        if conv.padding_mode != "zeros":
            raise FusionError(f"{prefix}: padding_mode {conv.padding_mode!r}")
        self.fn = F.conv1d if isinstance(conv, nn.Conv1d) else F.conv2d
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        w = self.param("weight")
        assert w is not None
        b = self.param("bias")
        return self.fn(x, w.flatten(0, 1), None if b is None else b.flatten(), self.stride, self.padding, self.dilation, self.groups * w.shape[0])


class FusedLinear(_Member):
    def forward(self, x: Tensor) -> Tensor:
        w = self.param("weight")
        assert w is not None
        if x.dim() != 2:
            raise FusionError(f"{self.prefix}: Linear on a {x.dim()}-d input")
        n, out_f, in_f = w.shape
        b = self.param("bias")
        y = F.conv1d(x.unsqueeze(-1), w.reshape(n * out_f, in_f, 1), None if b is None else b.flatten(), groups=n)
        return y.squeeze(-1)


class FusedBatchNorm(_Member):
    def __init__(self, owner: StackedModel, prefix: str, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__(owner, prefix)
        if bn.momentum is None:
            raise FusionError(f"{prefix}: BatchNorm with cumulative averaging (momentum=None)")
        self.momentum, self.eps = bn.momentum, bn.eps

    def forward(self, x: Tensor) -> Tensor:
        owner = self.__dict__["owner"]
        w, b = self.param("weight"), self.param("bias")
        mean, var, tracked = self.buffer("running_mean"), self.buffer("running_var"), self.buffer("num_batches_tracked")
        use_batch = owner.training or mean is None
        if owner.training and tracked is not None:
            tracked.add_(1)
        return F.batch_norm(
            x, None if mean is None else mean.view(-1), None if var is None else var.view(-1),
            None if w is None else w.flatten(), None if b is None else b.flatten(), use_batch, self.momentum, self.eps,
        )


def _check_node(node: Any, modules: dict[str, nn.Module]) -> None:
    if node.op in ("placeholder", "output"):
        return
    if node.op == "get_attr":
        raise FusionError(f"direct parameter access {node.target}")
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d) + _ELEMENTWISE_MODULES):
            return
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return
        raise FusionError(f"module {node.target} ({type(m).__name__})")
    if node.op == "call_function":
        if node.target not in _FUNCTIONS:
            raise FusionError(f"function {getattr(node.target, '__name__', node.target)}")
        if node.target is torch.flatten and (node.args[1:2] != (1,) or len(node.args) > 2 or node.kwargs):
            raise FusionError("flatten other than flatten(x, 1)")
        return
    if node.op == "call_method":
        if node.target not in _METHODS:
            raise FusionError(f"method .{node.target}()")
        if node.target == "size" and node.args[1:] != (0,):
            raise FusionError("size() of a dimension other than the batch")
        if node.target in ("view", "reshape"):
            shape = node.args[1:]
            first: Any = shape[0] if shape else None
            batch = getattr(first, "op", None) == "call_method" and first.target == "size" and first.args[1:] == (0,)
            if not (len(shape) == 2 and shape[1] == -1 and batch):
                raise FusionError(f".{node.target}{tuple(shape)}: only (x.size(0), -1)")
        if node.target == "flatten" and node.args[1:2] != (1,):
            raise FusionError("flatten other than flatten(1)")
        return
    raise FusionError(f"node {node.op}")


def build_fused(owner: StackedModel, template: nn.Module) -> torch.fx.GraphModule:
    """The fused network of ``owner``'s members (raises :class:`FusionError` when it cannot be built)."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(template))
    except Exception as exc:  # data-dependent control flow and the like
        raise FusionError(f"not traceable by torch.fx ({type(exc).__name__})") from None
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        _check_node(node, modules)
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = modules[node.target]
        prefix = f"{node.target}."
        fused: nn.Module | None = None
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            fused = FusedConv(owner, prefix, m)
        elif isinstance(m, nn.Linear):
            fused = FusedLinear(owner, prefix)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            fused = FusedBatchNorm(owner, prefix, m)
        if fused is not None:
            parent, _, name = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, name, fused)
    used = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for name, m in gm.named_modules():
        if name in used and any(True for _ in m.parameters(recurse=False)):
            raise FusionError(f"module {name} keeps parameters of its own")
    return gm


def to_fused_layout(x: Tensor, n: int, shared: bool) -> Tensor:
    """``[N, B, C, ...]`` (or ``[B, C, ...]`` fed to all) -> ``[B, N*C, ...]``."""
    if shared:
        return x.unsqueeze(1).expand(x.shape[0], n, *x.shape[1:]).reshape(x.shape[0], n * x.shape[1], *x.shape[2:])
    return x.transpose(0, 1).reshape(x.shape[1], n * x.shape[2], *x.shape[3:])


def from_fused_layout(y: Tensor, n: int) -> Tensor:
    """``[B, N*K]`` -> ``[N, B, K]`` (a view)."""
    if y.dim() != 2:
        raise FusionError(f"the fused network returned a {y.dim()}-d output")
    return y.view(y.shape[0], n, -1).transpose(0, 1)
