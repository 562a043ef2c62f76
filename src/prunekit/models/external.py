"""Models from outside the zoo, by name: ``package.module:builder`` (any importable callable returning
an ``nn.Module``), ``timm:NAME`` and ``torchvision:NAME`` (when those are installed).

A builder is called with the run's ``model_kwargs``, plus ``num_classes`` (and ``in_chans`` /
``in_channels``, ``input_shape``) where its signature takes them; timm and torchvision models are
built without pretrained weights, with the dataset's classes and channels. These models keep their
own initialisation (``init="builder"``): what the user brings is what is pruned.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError


def _import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{module} cannot be imported ({type(exc).__name__}: {exc}); {extra}") from None


def _accepts(fn: Callable[..., Any]) -> set[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"num_classes"}
    return {p.name for p in params}


def builder_factory(name: str) -> tuple[Callable[..., nn.Module], str]:
    """``(factory(num_classes, input_shape, **kwargs) -> nn.Module, summary)`` of an external model name.

    Raises:
        ConfigError: a malformed name, a package that is not installed (naming what to install), a
            builder that does not exist or is not callable.
    """
    source, _, target = name.partition(":")
    if not source or not target:
        raise ConfigError(f"model {name!r}: a model from outside the zoo is package.module:builder, timm:NAME or torchvision:NAME")
    if source == "timm":
        timm = _import("timm", "install it (pip install timm) to use timm:NAME models")

        def from_timm(num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> nn.Module:
            return timm.create_model(target, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **kwargs)

        return from_timm, f"timm's {target} (no pretrained weights)"
    if source == "torchvision":
        tv = _import("torchvision.models", "install torchvision to use torchvision:NAME models")

        def from_torchvision(num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> nn.Module:
            return tv.get_model(target, weights=None, num_classes=num_classes, **kwargs)

        return from_torchvision, f"torchvision's {target} (no pretrained weights)"
    module = _import(source, f"model {name!r} names module {source!r}: check the name and that it is importable (PYTHONPATH)")
    fn = getattr(module, target, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"model {name!r}: module {source!r} has no callable {target!r}")
    takes = _accepts(fn)

    def from_builder(num_classes: int, input_shape: Sequence[int], **kwargs: Any) -> nn.Module:
        extra: dict[str, Any] = {}
        if "num_classes" in takes:
            extra["num_classes"] = num_classes
        for key in ("in_chans", "in_channels"):
            if key in takes:
                extra[key] = input_shape[0]
        if "input_shape" in takes:
            extra["input_shape"] = tuple(input_shape)
        model = fn(**{**extra, **kwargs})
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model builder {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return from_builder, f"{source}.{target}(...)"
