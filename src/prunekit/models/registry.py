"""Model registry: ``create(name, num_classes, input_shape)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, unknown
from ..registry import Registry
from .init import BN_GAMMA_INITS, INITS, initialize


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    factory: Callable[..., nn.Module]  # factory(num_classes, input_shape, **kwargs)
    init: str = "kaiming_normal"
    reference: str = ""


_MODELS: Registry[ModelSpec] = Registry("model")


def register_model(spec: ModelSpec) -> ModelSpec:
    return _MODELS.register(spec)


def list_models() -> list[str]:
    """Names of the zoo's models, in registration order."""
    return _MODELS.names()


def get_model_spec(name: str) -> ModelSpec:
    """A zoo model by name, or a model from outside the zoo: ``package.module:builder``,
    ``timm:NAME``, ``torchvision:NAME`` (:mod:`prunekit.models.external`), initialised by its builder."""
    if isinstance(name, str) and ":" in name:
        from .external import builder_factory

        factory, summary = builder_factory(name)
        return ModelSpec(name, summary, factory, init="builder")
    return _MODELS.get(name)


def is_zoo_model(name: str) -> bool:
    return name in _MODELS


def create(
    name: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    *,
    init: str | None = None,
    bn_gamma: str = "ones",
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model of the zoo, initialised as in the papers.

    Args:
        name: one of :func:`list_models`.
        num_classes: outputs of the classifier.
        input_shape: ``(C, H, W)`` of one input (channels and size come from the dataset).
        init: weight initialisation (see :data:`prunekit.models.init.INITS`); default: the model's
            (``"builder"`` for a model from outside the zoo: its own).
        bn_gamma: BatchNorm scale init, ``"ones"`` or ``"uniform"`` (U[0, 1], open_lth).
        seed: seed the initialisation (the global RNG is left as it was); None uses the global RNG.
        **kwargs: model-specific (``width`` for ResNets, ``shortcut="A"|"B"``).

    Raises:
        ConfigError: unknown model, init or argument.
    """
    spec = get_model_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input_shape must be (channels, height, width), got {tuple(input_shape)!r}")
    init = init or spec.init
    if init not in INITS:
        raise unknown("init", init, INITS)
    if bn_gamma not in BN_GAMMA_INITS:
        raise unknown("bn_gamma init", bn_gamma, BN_GAMMA_INITS)

    def build() -> nn.Module:
        try:
            model = spec.factory(num_classes, shape, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"bad arguments for model {name!r}: {exc}") from None
        initialize(model, init, bn_gamma)
        return model

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def flat_features(features: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of features ``features`` produces for one input of ``input_shape`` (for the first Linear)."""
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())
