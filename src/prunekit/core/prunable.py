"""Which parameters of a model are prunable.

The default rule, shared by SNIP, GraSP, SynFlow, FORCE and ProsPr's official code: the ``weight`` of
every convolution (``Conv1d/2d/3d`` and their transposed forms) and every ``Linear`` layer, the first
and last layer included; in transformers also the attention projections that are not ``Linear``
modules: ``nn.MultiheadAttention``'s ``in_proj_weight`` (or ``q/k/v_proj_weight``) and the ``Conv1D``
projections of Hugging Face's GPT-2 family (a transposed ``Linear``). Biases, normalisation layers and
embeddings are never pruned by default; ``exclude="*in_proj_weight"`` keeps attention dense.
The rule can be replaced (``include``) or narrowed (``exclude``) with glob patterns on parameter names
as printed by ``model.named_parameters()``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError
from .parametrized import mask_parametrization, named_weights

PRUNABLE_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


def _as_patterns(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    patterns = list(value)
    if not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{what} must be a glob pattern or a list of them, got {value!r}")
    return patterns


ATTENTION_PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's projections): a Linear with its weight stored transposed."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def default_prunable_names(model: nn.Module) -> list[str]:
    """Names of the parameters the default rule prunes, in ``named_parameters()`` order."""
    chosen: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if (isinstance(module, PRUNABLE_MODULE_TYPES) or _is_hf_conv1d(module)) and (
            isinstance(getattr(module, "weight", None), nn.Parameter) or mask_parametrization(module, "weight") is not None
        ):
            chosen.add(f"{prefix}weight")
        if isinstance(module, nn.MultiheadAttention):
            chosen.update(f"{prefix}{n}" for n in ATTENTION_PROJECTIONS if isinstance(getattr(module, n, None), nn.Parameter))
    return [name for name in named_weights(model) if name in chosen]


def _shown_names(names: Sequence[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def prunable_parameters(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, nn.Parameter]:
    """Return the prunable parameters of ``model`` as an ordered ``{name: parameter}`` dict.

    Args:
        model: any ``nn.Module``.
        include: glob patterns (``fnmatch``) over parameter names; when given they *replace* the
            default rule (e.g. ``["*.weight"]`` or ``["encoder.*.linear1.weight"]``).
        exclude: glob patterns removed from the selection (e.g. ``"fc.weight"`` to keep the
            classifier dense, as open_lth does for LeNet and VGG).

    Returns:
        ``{name: parameter}`` in ``model.named_parameters()`` order.

    Raises:
        ConfigError: a pattern matches no parameter (most likely a typo), a selected parameter is not
            a floating-point tensor with data (lazy modules must be run once first), or nothing is
            left to prune.
    """
    include_p = _as_patterns(include, "include")
    exclude_p = _as_patterns(exclude, "exclude")
    params = named_weights(model)  # a weight masked by Masks.apply under its plain name
    buffers = {b for b, _ in model.named_buffers()}
    torch_pruned = [n.removesuffix("_orig") for n in params if n.endswith("_orig") and n.removesuffix("_orig") + "_mask" in buffers]
    if torch_pruned:  # its weight is no parameter any more: it would be skipped, its mask ignored
        raise ConfigError(
            f"{_shown_names(torch_pruned)} of {type(model).__name__} were pruned with torch.nn.utils.prune (<name>_orig + <name>_mask): "
            "read those masks with prunekit.Masks.from_torch_prune(model), then call torch.nn.utils.prune.remove(module, 'weight') "
            "on each before pruning with prunekit (it would otherwise skip them)"
        )
    all_names = list(params)
    for pattern in include_p + exclude_p:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in all_names):
            raise ConfigError(
                f"pattern {pattern!r} matches no parameter of {type(model).__name__}; "
                f"parameters are: {', '.join(all_names[:20])}{' ...' if len(all_names) > 20 else ''}"
            )
    if include_p:
        names = [n for n in all_names if any(fnmatch.fnmatchcase(n, p) for p in include_p)]
    else:
        names = default_prunable_names(model)
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude_p)]
    if not names:
        raise ConfigError(
            f"{type(model).__name__} has no prunable parameters: the default rule prunes the weights of "
            "Conv*d and Linear modules; pass include=[...] glob patterns to choose parameters by name"
        )
    for name in names:
        p = params[name]
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ConfigError(f"parameter {name!r} is uninitialised (lazy module): run one forward pass before pruning")
        if not p.is_floating_point():
            raise ConfigError(f"parameter {name!r} has dtype {p.dtype}; only floating-point parameters can be pruned")
    return {n: params[n] for n in names}
