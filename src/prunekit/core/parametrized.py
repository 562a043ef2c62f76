"""Masks kept inside a model: the ``torch.nn.utils.parametrize`` parametrization that
:meth:`prunekit.Masks.apply` registers (``weight = original * mask``), and how the rest of prunekit
reads a model that carries one (parameters under their plain names, scoring copies without it)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class MaskParametrization(nn.Module):
    """``weight = original * mask``: how :meth:`Masks.apply` keeps a mask inside a model
    (a ``torch.nn.utils.parametrize`` parametrization; ``mask`` is a buffer of the weight's dtype)."""

    mask: Tensor

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter ``name`` and the attribute's name in it."""
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def parametrization_list(module: nn.Module, attr: str) -> list[nn.Module]:
    """The parametrizations registered on ``module.<attr>``, in order (empty when none)."""
    holder: Any = getattr(module, "parametrizations", {})
    return list(holder[attr]) if attr in holder else []


def mask_parametrization(module: nn.Module, attr: str) -> MaskParametrization | None:
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(module, attr):
        return None
    found = [p for p in parametrization_list(module, attr) if isinstance(p, MaskParametrization)]
    return found[0] if found else None


def named_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``model.named_parameters()``, with a parametrized tensor under its plain name (``fc.weight``
    for ``fc.parametrizations.weight.original``), so masks address a model before and after
    :meth:`Masks.apply` by the same names."""
    renamed: dict[str, str] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for attr in getattr(module, "parametrizations", {}):
            renamed[f"{prefix}parametrizations.{attr}.original"] = f"{prefix}{attr}"
    return {renamed.get(n, n): p for n, p in model.named_parameters()}


def weight_values(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """The values the forward pass uses for ``names`` (a parametrized weight's computed value), detached."""
    return {n: getattr(*owner(model, n)).detach() for n in names}


def without_masks(model: nn.Module) -> nn.Module:
    """Remove prunekit's mask parametrizations from ``model`` in place (pruned weights stay 0): for
    scoring copies, whose parameters must have their plain names. Other parametrizations stay."""
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        for attr in list(getattr(module, "parametrizations", {}).keys()):
            plist = parametrization_list(module, attr)
            if len(plist) == 1 and isinstance(plist[0], MaskParametrization):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model
