"""Model inputs: one tensor, a tuple of tensors, or a mapping of named tensors.

A batch is ``(inputs, targets)``. ``inputs`` is what the model is called with: a tensor is passed as
``model(x)``, a tuple or list as ``model(*x)``, a mapping (``input_ids``, ``attention_mask``, ...) as
``model(**x)``. Every method, the scoring stream and the reports go through the functions here, so
the same batch works everywhere. Entries that are not tensors (``None``, flags) are passed through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import DataError

Inputs = Any  # Tensor | tuple | list | Mapping[str, Any]


def is_inputs(x: object) -> bool:
    """Whether ``x`` is a tensor, or a tuple/list/mapping holding at least one tensor."""
    return isinstance(x, Tensor) or any(isinstance(t, Tensor) for t in _leaves(x))


def _leaves(x: object) -> list[object]:
    if isinstance(x, Mapping):
        return list(x.values())
    if isinstance(x, (tuple, list)):
        return list(x)
    return [x]


def tensors(x: Inputs) -> list[Tensor]:
    """The tensors of ``x`` (itself, or its entries that are tensors), in order."""
    if isinstance(x, Tensor):
        return [x]
    return [t for t in _leaves(x) if isinstance(t, Tensor)]


def as_args(x: Inputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of the model call for ``x``."""
    if isinstance(x, Mapping):
        return (), dict(x)
    if isinstance(x, (tuple, list)):
        return tuple(x), {}
    return (x,), {}


def call(net: nn.Module, x: Inputs) -> Any:
    """``net(x)``, ``net(*x)`` or ``net(**x)``."""
    args, kwargs = as_args(x)
    return net(*args, **kwargs)


def map_tensors(x: Inputs, fn: Callable[[Tensor], Tensor]) -> Inputs:
    """``x`` with ``fn`` applied to every tensor (same structure; other entries unchanged)."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: fn(v) if isinstance(v, Tensor) else v for k, v in x.items()}
    return type(x)(fn(v) if isinstance(v, Tensor) else v for v in x) if isinstance(x, (tuple, list)) else x


def batch_size(x: Inputs) -> int:
    """The batch size: the first dimension of the first tensor (every tensor must agree)."""
    ts = [t for t in tensors(x) if t.dim() > 0]
    if not ts:
        raise DataError(f"batch inputs hold no tensor with a batch dimension ({describe(x)})")
    n = int(ts[0].shape[0])
    if any(int(t.shape[0]) != n for t in ts):
        raise DataError(f"the tensors of one batch's inputs disagree in batch size: {describe(x)}")
    return n


def select(x: Inputs, index: slice | Tensor | Sequence[int]) -> Inputs:
    """The samples ``index`` of ``x`` (every batched tensor indexed along its first dimension)."""
    return map_tensors(x, lambda t: t[index] if t.dim() > 0 else t)


def concat(parts: Sequence[Inputs]) -> Inputs:
    """The samples of ``parts`` in one batch (all of the same structure)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(list(parts))
    if isinstance(first, Mapping):
        return {k: torch.cat([p[k] for p in parts]) if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in first.items()}
    return type(first)(
        torch.cat([p[i] for p in parts]) if isinstance(v, Tensor) and v.dim() > 0 else v for i, v in enumerate(first)
    )


def sample_shape(x: Inputs) -> tuple[int, ...] | None:
    """The shape of one sample when ``x`` is one tensor (what ``input_shape`` means); else None."""
    return tuple(x.shape[1:]) if isinstance(x, Tensor) else None


def describe(x: Inputs) -> str:
    """Shapes and dtypes for messages: ``(128, 1, 28, 28) float32`` or ``{input_ids: (8, 16) int64, ...}``."""

    def one(t: object) -> str:
        return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" if isinstance(t, Tensor) else type(t).__name__

    if isinstance(x, Tensor):
        return one(x)
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k}: {one(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(one(v) for v in x) + ")"
    return type(x).__name__


def all_ones(example: Inputs, dtype: torch.dtype) -> Inputs:
    """The all-ones input of path-norm methods (SynFlow, effective density), shaped like ``example``.

    Floating-point tensors become ones of ``dtype``; integer tensors (token ids, attention masks)
    keep their values, since a token id cannot be "one": the all-ones signal enters through the
    embedding layers instead (:func:`embeddings_emit_ones`).
    """
    return map_tensors(example, lambda t: torch.ones_like(t, dtype=dtype) if t.is_floating_point() else t)


def has_integer_inputs(example: Inputs) -> bool:
    return any(not t.is_floating_point() and not t.is_complex() for t in tensors(example))


def embeddings_emit_ones(net: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Make every ``nn.Embedding`` of ``net`` act on an all-ones one-hot input.

    An embedding lookup is a linear map of the one-hot token, ``E^T onehot``; on the all-ones vector
    it gives the column sums of ``E``, which each position then receives. With SynFlow's ``|theta|``
    weights this is the embedding's contribution to the path norm, and gradients reach ``E`` as for
    any other layer. Returns the hook handles (call ``.remove()`` on each to undo).
    """

    def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
        assert isinstance(module, nn.Embedding)
        return module.weight.sum(0).expand_as(out)

    return [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Embedding)]
