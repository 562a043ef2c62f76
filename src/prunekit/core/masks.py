"""The :class:`Masks` object: a validated, read-only ``{param_name: bool tensor}`` mapping.

A mask says which weights of a model are kept (``True``) and which are pruned (``False``). It is
checked against a model before use (names and shapes), applied so that pruned weights stay exactly
zero through training, reported per layer (nominal and effective density), saved to and loaded from a
plain tensor file, and exported to the layout of ``torch.nn.utils.prune``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import MaskError
from .layer_report import MaskReport
from .parametrized import MaskParametrization, mask_parametrization, named_weights, owner, parametrization_list


def _as_bool_mask(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise MaskError(f"mask {name!r} must be a tensor, got {type(value).__name__}")
    t = value.detach()
    if t.dtype != torch.bool:
        if t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
            raise MaskError(f"mask {name!r} must contain only 0 and 1 (or be a bool tensor)")
        t = t != 0
    return t.to("cpu", copy=True)


class Masks(Mapping[str, Tensor]):
    """A read-only mapping ``{param_name: bool tensor}`` (``True`` = kept), with metadata.

    Build one with :func:`prunekit.prune`, :meth:`Masks.ones` or from a dict of tensors. The tensors
    live on the CPU; :meth:`apply` moves them to the model's device. Treat the tensors as read-only.

    Args:
        masks: ``{param_name: tensor}``; bool tensors, or tensors of 0s and 1s.
        meta: JSON-serialisable metadata (method, options, seed, versions, input shape, ...).

    Raises:
        MaskError: a value is not a tensor or holds values other than 0/1, or the mapping is empty.
    """

    def __init__(self, masks: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None):
        if not isinstance(masks, Mapping) or not masks:
            raise MaskError("masks must be a non-empty mapping {parameter name: bool tensor}")
        self._masks: dict[str, Tensor] = {str(k): _as_bool_mask(str(k), v) for k, v in masks.items()}
        meta = dict(meta or {})
        try:
            self._meta_json = json.dumps(meta, sort_keys=True, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise MaskError(f"mask metadata must be JSON-serialisable: {exc}") from None
        self._device_cache: dict[tuple[Any, ...], list[Tensor]] = {}

    # -- mapping -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return list(self.keys()) == list(other.keys()) and all(
            isinstance(other[k], Tensor) and torch.equal(v, other[k].to("cpu", torch.bool)) for k, v in self.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        method = self.meta.get("method")
        return f"Masks({len(self)} tensors, sparsity={self.sparsity:.4%}{', method=' + repr(method) if method else ''})"

    # -- properties ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata (method, options, seed, versions, input shape, ...)."""
        return json.loads(self._meta_json)

    @property
    def size(self) -> int:
        """Number of prunable weights the masks cover."""
        return sum(m.numel() for m in self._masks.values())

    @property
    def kept(self) -> int:
        """Number of kept weights."""
        return sum(int(m.sum()) for m in self._masks.values())

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept."""
        return self.kept / self.size

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return 1.0 - self.density

    def layer_densities(self) -> dict[str, float]:
        """``{param_name: kept fraction}``."""
        return {n: float(m.float().mean()) for n, m in self._masks.items()}

    @classmethod
    def ones(
        cls,
        model: nn.Module,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
    ) -> Masks:
        """Dense masks (everything kept) over the prunable parameters of ``model``."""
        from .prunable import prunable_parameters

        params = prunable_parameters(model, include, exclude)
        return cls({n: torch.ones(p.shape, dtype=torch.bool) for n, p in params.items()})

    @classmethod
    def from_model(cls, model: nn.Module, names: Sequence[str] | None = None) -> Masks:
        """Masks that keep the nonzero entries of ``model``'s parameters (all prunable ones by default)."""
        from .prunable import prunable_parameters

        params = named_weights(model)
        names = list(names) if names is not None else list(prunable_parameters(model))
        return cls({n: params[n].detach() != 0 for n in names})

    # -- model interaction --------------------------------------------------------------------
    def check(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Check that every mask names a parameter of ``model`` with the same shape.

        Returns:
            ``{name: parameter}`` of the masked parameters, in mask order.

        Raises:
            MaskError: listing every missing name and every shape mismatch.
        """
        params = named_weights(model)
        problems = []
        for name, mask in self._masks.items():
            if name not in params:
                problems.append(f"{name!r} is not a parameter of the model")
            elif tuple(params[name].shape) != tuple(mask.shape):
                problems.append(f"{name!r} has shape {tuple(params[name].shape)} in the model but {tuple(mask.shape)} in the mask")
        if problems:
            shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            raise MaskError(f"masks do not match {type(model).__name__}: {shown}")
        return {n: params[n] for n in self._masks}

    def _on(self, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
        key = (str(device), dtype)
        if key not in self._device_cache:
            self._device_cache[key] = [m.to(device=device, dtype=dtype) for m in self._masks.values()]
        return self._device_cache[key]

    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights of ``model`` and keep them zero, in the model itself.

        Each masked weight becomes a ``torch.nn.utils.parametrize`` parametrization,
        ``weight = original * mask`` (:class:`MaskParametrization`), with the pruned entries of
        ``original`` set to 0. The mask is part of the model: it survives ``copy.deepcopy``,
        ``torch.compile``, ``state_dict`` save and load (keys ``<module>.parametrizations.weight.original``
        and ``...weight.0.mask``) and DDP, and no optimizer (momentum, weight decay, Adam's state built
        before) can make a pruned weight nonzero, since the forward pass multiplies it by 0. Applying
        again replaces the mask. :meth:`remove` turns the weights back into plain parameters.

        Returns:
            ``model`` (modified in place).

        Raises:
            MaskError: the masks do not match the model; the model is left unchanged.
        """
        from torch.nn.utils import parametrize

        params = self.check(model)
        with torch.no_grad():
            for (name, p), m in zip(params.items(), self._masks.values()):
                module, attr = owner(model, name)
                keep = m.to(device=p.device, dtype=p.dtype)
                p.masked_fill_(~m.to(p.device), 0.0)
                existing = mask_parametrization(module, attr)
                if existing is not None:
                    existing.mask.copy_(keep)
                else:
                    parametrize.register_parametrization(module, attr, MaskParametrization(keep), unsafe=True)
        return model

    def remove(self, model: nn.Module) -> nn.Module:
        """Undo :meth:`apply`: each masked weight is a plain parameter again (pruned entries stay 0
        until trained). Parametrizations other than prunekit's are left alone."""
        from torch.nn.utils import parametrize

        self.check(model)
        for name in self._masks:
            module, attr = owner(model, name)
            if mask_parametrization(module, attr) is None:
                continue
            if len(parametrization_list(module, attr)) > 1:
                raise MaskError(
                    f"{name!r} has other parametrizations stacked with prunekit's mask; remove them first "
                    "(torch.nn.utils.parametrize.remove_parametrizations)"
                )
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
        return model

    def bind(self, model: nn.Module) -> Callable[[], None]:
        """A zero-argument function that re-zeroes the pruned weights of ``model`` (for training loops).

        The parameters and device masks are looked up once; each call is one fused multiply per
        (device, dtype) group, so it is cheap enough to run after every optimizer step.
        """
        params = list(self.check(model).values())
        groups: dict[tuple[Any, ...], tuple[list[Tensor], list[Tensor]]] = {}
        for i, p in enumerate(params):
            ps, ms = groups.setdefault((p.device, p.dtype), ([], []))
            ps.append(p)
            # same strides as the parameter (e.g. channels-last on CUDA) keep the fused multiply on its fast path
            ms.append(torch.empty_like(p, requires_grad=False).copy_(self._on(p.device, p.dtype)[i]))

        def enforce() -> None:
            with torch.no_grad():
                for ps, ms in groups.values():
                    torch._foreach_mul_(ps, ms)

        return enforce

    def enforce(self, model: nn.Module) -> None:
        """Set the pruned weights of ``model`` to exactly 0 again."""
        self.bind(model)()

    def is_applied(self, model: nn.Module) -> bool:
        """Whether every pruned weight of ``model`` is exactly zero (as the forward pass sees it)."""
        self.check(model)
        for name, m in self._masks.items():
            module, attr = owner(model, name)
            w = getattr(module, attr).detach()
            if not bool((w[~m.to(w.device)] == 0).all()):
                return False
        return True

    def report(
        self, model: nn.Module | None = None, input_shape: Sequence[int] | None = None, example_inputs: Any = None
    ) -> MaskReport:
        """Per-layer size, kept count, density and effective density.

        Effective density counts kept weights that still lie on an input-to-output path (see
        :mod:`prunekit.core.connectivity`); it needs the model and the shape of one input sample
        (taken from the masks' metadata when they came from :func:`prunekit.prune` with data).
        A layer with no kept weight is flagged and a ``UserWarning`` is issued.

        Args:
            model: the model the masks belong to; without it, effective density is not computed.
            input_shape: shape of one input sample (no batch dimension).
            example_inputs: instead, one batch of inputs (a tensor, tuple or dict; token ids welcome).
        """
        from .layer_report import build_report

        if model is not None:
            self.check(model)
        return build_report(self._masks, self.meta, model, input_shape, example_inputs)

    def to_torch_prune(self, model: nn.Module) -> nn.Module:
        """Re-express the masks in ``torch.nn.utils.prune``'s layout (``weight_orig`` + ``weight_mask``).

        prunekit's parametrizations from :meth:`apply` on the same weights are removed first. Returns ``model``.
        """
        from torch.nn.utils import prune as torch_prune

        params = self.check(model)
        self.remove(model)
        for (name, p), m in zip(params.items(), self._masks.values()):
            module, attr = owner(model, name)
            torch_prune.custom_from_mask(module, attr, m.to(p.device))
        return model

    @classmethod
    def from_torch_prune(cls, model: nn.Module) -> Masks:
        """Read the masks of a model pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``).

        Keys are the pruned parameters' names (``fc1.weight``), which is what they are called again
        after ``torch.nn.utils.prune.remove``; the model is not modified.

        Raises:
            MaskError: the model holds no ``torch.nn.utils.prune`` mask.
        """
        found: dict[str, Tensor] = {}
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for buf_name, buf in module.named_buffers(recurse=False):
                attr = buf_name.removesuffix("_mask")
                if buf_name.endswith("_mask") and isinstance(getattr(module, f"{attr}_orig", None), nn.Parameter):
                    found[f"{prefix}{attr}"] = buf.detach().cpu()
        if not found:
            raise MaskError(f"{type(model).__name__} holds no torch.nn.utils.prune masks (no <name>_orig / <name>_mask pair)")
        return cls(found, {"source": "torch.nn.utils.prune", "model": type(model).__name__})

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the masks to ``path`` atomically (bit-packed tensors, metadata, checksum).

        The file is a ``torch.save`` of plain tensors, lists and strings (no pickled classes), readable
        with ``torch.load(path, weights_only=True)``; the format is described in :mod:`prunekit.core.mask_file`.
        """
        from .mask_file import write_masks

        return write_masks(path, self._masks, self._meta_json)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module | None = None) -> Masks:
        """Read masks written by :meth:`save`; with ``model``, also check they match it.

        Raises:
            MaskFileError: the file is missing, corrupt, truncated or not a prunekit mask file.
            MaskError: ``model`` is given and the masks do not match it.
        """
        from .mask_file import read_masks

        masks, meta = read_masks(path)
        result = cls(masks, meta)
        if model is not None:
            result.check(model)
        return result


def _json_default(value: object) -> object:
    if isinstance(value, (torch.Size, tuple, set)):
        return list(value)
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
