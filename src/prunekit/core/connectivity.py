"""Effective density: which kept weights still lie on a path from the input to the output.

A kept weight whose input unit receives nothing from the network input, or whose output unit reaches
no output, is dead weight: it cannot influence the prediction (Vysogorets & Kempe, JMLR 2023). At
extreme sparsity global rankings disconnect units, so nominal and effective density differ.

How it is computed: on a float64 copy of the model in eval mode, every kept weight is set to a positive
value (``1/fan_in``), every pruned weight to 0, biases to 0, other parameters to ``|theta|``;
normalisation layers become identities and max-pooling becomes average-pooling (so that every input
of a window counts). The input is all ones. Every activation is then non-negative and every path from
input to output contributes a strictly positive amount to ``R = sum(f(1))`` with no cancellation, so
``dR/dw > 0`` exactly for the weights on at least one input-to-output path. This is exact for
feed-forward networks built from convolutions, linear layers, ReLU-like activations, pooling, residual
additions and concatenations; for exotic operations (a learned gate that can be exactly zero, functional
max-pooling) it is a conservative estimate.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from . import inputs as inp
from .outputs import logits_of
from .parametrized import without_masks

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
_MAX_TO_AVG = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
_ADAPTIVE = {
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d,
}


def _identity_output(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
    return args[0]


def _linearised_child(module: nn.Module) -> nn.Module | None:
    if isinstance(module, _NORMS):
        # an identity by a hook, not a replacement: the parent may read the norm's attributes (eps)
        module.register_forward_hook(_identity_output)
        return None
    kind: Any = type(module)
    if kind in _MAX_TO_AVG and module.dilation in (1, (1,), (1, 1), (1, 1, 1)):
        return _MAX_TO_AVG[kind](module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if kind in _ADAPTIVE:
        return _ADAPTIVE[kind](module.output_size)  # type: ignore[arg-type]
    return None


def _linearise(net: nn.Module) -> None:
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            replacement = _linearised_child(child)
            if replacement is not None:
                setattr(parent, child_name, replacement)


def effective_masks(
    model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int] | None = None, *, example_inputs: Any = None,
) -> dict[str, Tensor]:
    """Kept weights that lie on at least one input-to-output path.

    Args:
        model: the model the masks belong to (not modified).
        masks: ``{param_name: bool tensor}``.
        input_shape: shape of one input sample, without the batch dimension.
        example_inputs: instead of ``input_shape``, one batch of inputs (a tensor, tuple or dict):
            floating-point tensors are replaced by ones, integer ones (token ids) kept, and the
            embeddings emit ones (see :func:`prunekit.core.inputs.embeddings_emit_ones`).

    Returns:
        ``{param_name: bool tensor}`` (CPU), a subset of ``masks``.
    """
    net = without_masks(copy.deepcopy(model))
    _linearise(net)
    net = net.double().eval()
    params = dict(net.named_parameters())
    device = next(iter(params.values())).device
    with torch.no_grad():
        for name, p in params.items():
            p.requires_grad_(name in masks)
            if name in masks:
                fan_in = max(1, p[0].numel())
                p.copy_(masks[name].to(device=device, dtype=p.dtype) / fan_in)
            elif "bias" in name.rsplit(".", 1)[-1]:
                p.zero_()
            else:
                p.abs_()
    if example_inputs is not None:
        example = inp.map_tensors(inp.select(example_inputs, slice(0, 1)), lambda t: t.to(device))
        x = inp.all_ones(example, torch.float64)
        if inp.has_integer_inputs(example):
            inp.embeddings_emit_ones(net)
    elif input_shape is not None:
        x = torch.ones(1, *input_shape, dtype=torch.float64, device=device)
    else:
        raise ConfigError("effective density needs input_shape= or example_inputs=")
    out = logits_of(inp.call(net, x))
    names = list(masks)
    grads = torch.autograd.grad(out.sum(), [params[n] for n in names], allow_unused=True)
    result = {}
    for name, g in zip(names, grads):
        alive = torch.zeros_like(masks[name], dtype=torch.bool) if g is None else (g > 0).cpu()
        result[name] = masks[name].cpu() & alive
    return result
