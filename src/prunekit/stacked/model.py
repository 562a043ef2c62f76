"""N networks of one architecture as one: stacked parameters, a fused or a vmapped forward.

Two paths compute the same thing, and :class:`StackedModel` picks one itself:

* **fused** (:mod:`prunekit.stacked.fused`): the members side by side in the channel dimension, one
  grouped convolution per convolution, one BatchNorm over ``N x C`` channels, a grouped 1x1
  convolution per Linear: the kernels of one plain model per step. For networks built from
  convolutions, BatchNorm, Linear, residual additions, activations, pooling and flatten (every
  zoo model but ProsPr's ResNet with zero-padding shortcuts);
* **vmap**: ``torch.func.vmap`` over ``functional_call`` runs every member on its own inputs with its
  own parameters and buffers, for any architecture (channel padding, custom ops), at the cost of the
  batching rules' extra reshapes and a split BatchNorm affine.

The fused path is checked once, at the first forward, against the vmap path on a float64 probe of
two members (outputs in train and eval mode and gradients); any difference or unsupported operation
selects vmap, and ``path`` / ``fallback_reason`` say which and why.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .fused import FusionError, build_fused, from_fused_layout, to_fused_layout


class StackedModel(nn.Module):
    """Members ``models`` (same architecture) fused for training together.

    ``forward(x)`` takes ``[N, B, ...]`` (one batch per member) or, with ``shared=True``, ``[B, ...]``
    fed to every member, and returns ``[N, B, ...]`` outputs. Parameters are ``[N, ...]`` tensors in
    the members' ``named_parameters()`` order, so an optimizer over :meth:`parameters` updates each
    member exactly as it would update that member alone (SGD, Adam and AdamW act elementwise).

    Raises:
        ValueError: the members do not share one architecture (names, shapes, dtypes).
    """

    def __init__(self, models: Sequence[nn.Module], fused: bool | None = None):
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
        self.param_index = {n: i for i, n in enumerate(self.param_names)}
        self.buffer_index = {n: i for i, n in enumerate(self.buffer_names)}
        self.want_fused = fused  # None: fused when it checks out, True: fused or an error, False: vmap
        self.path: str | None = None if fused is not False else "vmap"
        self.fallback_reason: str | None = None if fused is not False else "asked for vmap"
        self.__dict__["fused_net"] = None
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
        if self.path is None:
            self._choose_path(x, shared)
        if self.path == "fused":
            return from_fused_layout(self.__dict__["fused_net"](to_fused_layout(x, self.n, shared)), self.n)
        return self.vmap_forward(x, shared)

    def vmap_forward(self, x: Tensor, shared: bool = False) -> Any:
        """The forward through ``torch.func.vmap`` (any architecture)."""

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], xi: Tensor) -> Any:
            return functional_call(self._template, (params, buffers), (xi,))

        return vmap(one, in_dims=(0, 0, None if shared else 0), randomness="different")(self._param_dict(), self._buffer_dict(), x)

    def _choose_path(self, x: Tensor, shared: bool) -> None:
        try:
            self.__dict__["fused_net"] = build_fused(self, self._template)
            _probe(self, x, shared)
            self.path = "fused"
        except Exception as exc:
            if self.want_fused:
                raise FusionError(f"the fused stacked path cannot run this model: {exc}") from exc
            self.__dict__["fused_net"] = None
            self.path, self.fallback_reason = "vmap", f"{type(exc).__name__}: {exc}"

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


def _probe(stacked: StackedModel, x: Tensor, shared: bool) -> None:
    """Compare the fused path with vmap on a float64 CPU copy of two members (outputs in train and
    eval mode, gradients of the outputs' sum); raise :class:`FusionError` on any difference."""
    members = []
    for i in (0, min(1, stacked.n - 1)):
        m = copy.deepcopy(stacked._template).to_empty(device="cpu")
        m.load_state_dict({k: v.detach().to("cpu") for k, v in stacked.member_state_dict(i).items()})
        members.append(m.double())
    probe = StackedModel(members, fused=True)
    probe.__dict__["fused_net"] = build_fused(probe, probe._template)
    probe.path = "fused"
    g = torch.Generator().manual_seed(0)
    shape = (2, *x.shape[1:]) if shared else (2, 2, *x.shape[2:])
    xp = torch.randn(shape, generator=g, dtype=torch.float64) if x.is_floating_point() else x[:2].to("cpu")
    with torch.random.fork_rng(devices=[]):
        for mode in (True, False):  # train mode first: both paths then update the running statistics alike
            probe.train(mode)
            torch.manual_seed(0)
            fused_out = probe(xp, shared=shared)
            torch.manual_seed(0)
            vmap_out = probe.vmap_forward(xp, shared=shared)
            if not isinstance(vmap_out, Tensor) or fused_out.shape != vmap_out.shape:
                raise FusionError("the fused output's shape differs from the vmap path's")
            if not torch.allclose(fused_out, vmap_out, rtol=1e-9, atol=1e-12):
                raise FusionError(f"the fused output differs from the vmap path's by {(fused_out - vmap_out).abs().max():.3g}")
            if mode:
                ga = torch.autograd.grad(fused_out.sum(), list(probe.stacked), allow_unused=True)
                gb = torch.autograd.grad(vmap_out.sum(), list(probe.stacked), allow_unused=True)
                for a, b in zip(ga, gb):
                    if (a is None) != (b is None) or (a is not None and b is not None and not torch.allclose(a, b, rtol=1e-9, atol=1e-12)):
                        raise FusionError("the fused gradients differ from the vmap path's")


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
