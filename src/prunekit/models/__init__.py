"""The model zoo: the architectures pruning-at-initialization papers evaluate on."""

from . import lenet, resnet, vgg  # noqa: F401  (registration side effects)
from .init import BN_GAMMA_INITS, INITS, initialize
from .registry import ModelSpec, create, get_model_spec, is_zoo_model, list_models, register_model

__all__ = ["BN_GAMMA_INITS", "INITS", "ModelSpec", "create", "get_model_spec", "initialize", "is_zoo_model", "list_models", "register_model"]
