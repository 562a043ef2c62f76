"""N networks of one architecture as one: stacked parameters, a vmapped forward.

``torch.func.vmap`` over ``functional_call`` runs every member on its own inputs with its own
parameters and buffers; its batching rules turn each convolution into one grouped convolution and
each BatchNorm into one over ``N x C`` channels (per-member statistics), and apply any functional op
of the forward (residual adds, pooling, flatten, channel padding) per member. Nothing in the models
has to be rewritten, and every member computes exactly what it would alone.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap


class StackedModel(nn.Module):
    """Members ``models`` (same architecture) fused for training together.

    ``forward(x)`` takes ``[N, B, ...]`` (one batch per member) or, with ``shared=True``, ``[B, ...]``
    fed to every member, and returns ``[N, B, ...]`` outputs. Parameters are ``[N, ...]`` tensors in
    the members' ``named_parameters()`` order, so an optimizer over :meth:`parameters` updates each
    member exactly as it would update that member alone (SGD, Adam and AdamW act elementwise).

    Raises:
        ValueError: the members do not share one architecture (names, shapes, dtypes).
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if len(models) < 1:
            raise ValueError("need at least one model to stack")
        base = models[0]
        signature = [(n, tuple(t.shape), t.dtype) for n, t in base.state_dict().items()]
        for m in models[1:]:
            if type(m) is not type(base) or [(n, tuple(t.shape), t.dtype) for n, t in m.state_dict().items()] != signature:
                raise ValueError("stacked models must share one architecture (same parameter names, shapes and dtypes)")
        self.n = len(models)
        self.param_names = [n for n, _ in base.named_parameters()]
        self.buffer_names = [n for n, _ in base.named_buffers()]
        self.state_keys = list(base.state_dict().keys())
        if len(self.state_keys) != len(self.param_names) + len(self.buffer_names):
            raise ValueError("models with shared (tied) or unregistered state cannot be stacked")
        params, buffers = stack_module_state(list(models))
        requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
        self.stacked = nn.ParameterList(
            [nn.Parameter(params[n].detach().clone(), requires_grad=requires_grad[n]) for n in self.param_names]
        )
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"_buffer_{i}", buffers[name].clone())
        # the architecture only: kept out of the module tree so that .to(device) leaves it on "meta"
        self.__dict__["template"] = copy.deepcopy(base).to("meta")
        self.train(base.training)

    @property
    def _template(self) -> nn.Module:
        return self.__dict__["template"]

    def train(self, mode: bool = True) -> StackedModel:
        super().train(mode)
        self._template.train(mode)
        return self

    def _param_dict(self) -> dict[str, Tensor]:
        return dict(zip(self.param_names, self.stacked))

    def _buffer_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"_buffer_{i}") for i, name in enumerate(self.buffer_names)}

    def forward(self, x: Tensor, shared: bool = False) -> Any:
        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], xi: Tensor) -> Any:
            return functional_call(self._template, (params, buffers), (xi,))

        return vmap(one, in_dims=(0, 0, None if shared else 0), randomness="different")(self._param_dict(), self._buffer_dict(), x)

    def stacked_parameter(self, name: str) -> nn.Parameter:
        return self.stacked[self.param_names.index(name)]

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member ``i``'s state dict, loadable into the original architecture."""
        values = {**{n: p[i] for n, p in self._param_dict().items()}, **{n: b[i] for n, b in self._buffer_dict().items()}}
        return {k: values[k].detach().clone() for k in self.state_keys}

    def load_member_state_dict(self, i: int, state: dict[str, Tensor]) -> None:
        """Overwrite member ``i`` with ``state`` (a single model's state dict)."""
        with torch.no_grad():
            for n, p in self._param_dict().items():
                p[i].copy_(state[n])
            for n, b in self._buffer_dict().items():
                b[i].copy_(state[n])


def can_stack(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``model`` runs stacked: a forward and backward of two copies on a tiny batch.

    Returns:
        ``(True, "")`` or ``(False, reason)``.
    """
    try:
        copies = [copy.deepcopy(model).to(device).train() for _ in range(2)]
        stacked = StackedModel(copies).to(device)
        x = torch.randn(2, 2, *input_shape, device=device, dtype=next(model.parameters()).dtype)
        out = stacked(x)
        (out[0] if isinstance(out, (tuple, list)) else out).float().sum().backward()
        stacked.eval()
        with torch.no_grad():
            stacked(x[0], shared=True)
    except Exception as exc:  # any failure means: train this architecture one model at a time
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return True, ""
