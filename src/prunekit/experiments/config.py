"""Run and sweep configurations: what the user asks, resolved in full, with a key derived from it.

A run is identified by the hash of its *resolved* configuration (every default filled in: the
method's options, the recipe's training config after overrides, the model's init). The same request
always maps to the same key, so a rerun finds its finished result, and changing any setting that
matters gives a new run. Where the data lives and which device trains are not part of the key.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..allocation import ALLOCATIONS
from ..data import get_info
from ..errors import ConfigError, unknown
from ..methods import get_method
from ..models import get_model_spec
from ..options import as_dict, build, key_dict, option
from ..training import TrainConfig, get_recipe
from ..training.precision import BF16, FP32, Precision

ABLATIONS = {
    "shuffle": "shuffle each layer's mask at random (keeps every layer's density)",
    "reinit": "train the masked network from a fresh random initialisation",
    "invert": "keep the lowest-scoring weights instead of the highest",
}
DENSE = "dense"
logger = logging.getLogger("prunekit")
IMP = "imp"
DEFAULT_RECIPE = "lenet-fmnist"


@dataclass(frozen=True)
class ImpOptions:
    """Iterative magnitude pruning with rewinding (lottery tickets)."""

    fraction: float = option(0.2, "fraction of the remaining weights pruned per round (open_lth: 0.2)", min=0.0, max=0.99, min_exclusive=True)
    rewind_epoch: int = option(0, "rewind survivors to their value after this many epochs (0: to initialization)", min=0)
    allocation: str = option("global", "global magnitude ranking (open_lth) or layerwise", choices=("global", "layerwise"))
    schedule: str = option("fraction", "fraction: lottery tickets; num / pct: AutoSparse's IRP schedules", choices=("fraction", "num", "pct"),
                           since="0.2")
    rounds: int = option(20, "pruning rounds of the num / pct schedules", min=1, since="0.2")
    scorer: str = option("magnitude", "per-round ranking: magnitude or snip (|theta * g| of the current weights)",
                         choices=("magnitude", "snip"), since="0.2")
    prune_first: bool = option(False, "prune round 1 on the initial weights, no dense round (AutoSparse's IRP)", since="0.2")


def build_method_options(method: str, values: Mapping[str, Any]) -> Any:
    """The validated options of ``method`` (``official=True`` expanded for PaI methods)."""
    if method in (DENSE, IMP):
        return build(method_options_class(method), dict(values), f"method {method!r}")
    return get_method(method).build_options(values)


def method_options_class(method: str) -> type:
    if method == DENSE:
        return _NoOptions
    if method == IMP:
        return ImpOptions
    return get_method(method).options


@dataclass(frozen=True)
class _NoOptions:
    pass


def known_methods() -> list[str]:
    from ..methods import list_methods

    return [DENSE, *list_methods(), IMP]


@dataclass(frozen=True)
class RunSpec:
    """One run as requested. :func:`resolve` fills in every default."""

    model: str
    dataset: str
    method: str
    sparsity: float = 0.0
    seed: int = 0
    recipe: str = DEFAULT_RECIPE
    epochs: int | None = None
    ablation: str | None = None
    allocation: str | None = None
    method_options: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scoring_batch_size: int | None = None
    structured: str | None = None  # early structured pruning: "epi", "epoch:prune_at=3", ... (method dense)
    budget: str | None = None  # its budget, e.g. "macs=0.5"


def _check_sparsity(method: str, sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity):
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if method == DENSE:
        if sparsity != 0:
            raise ConfigError(f"the dense baseline has sparsity 0, got {sparsity!r}")
        return 0.0
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"sparsity must be in (0, 1) for method {method!r}, got {sparsity!r}")
    return float(sparsity)


@dataclass(frozen=True)
class ResolvedRun:
    """One run with every default filled in and validated: what is executed, stored and keyed.

    Built once per run by :func:`resolve` and passed down unchanged; :attr:`config` is its JSON form
    (the row's ``config`` in the results database, ``config.json`` in the run folder) and
    :attr:`key` the hash of that form.
    """

    model: str
    dataset: str
    method: str
    sparsity: float
    seed: int
    recipe: str
    ablation: str | None
    allocation: str | None
    method_options: Mapping[str, Any]
    train: TrainConfig
    model_kwargs: Mapping[str, Any]
    init: str
    bn_gamma: str
    scoring_batch_size: int
    headline: str
    structured: Mapping[str, Any] | None = None  # {"trigger", "budget", "options"} of early structured pruning
    precision: str = FP32  # what train.amp resolved to on the training device: fp32 or bf16

    @property
    def config(self) -> dict[str, Any]:
        """The JSON form (every field; ``train`` and the options as plain dicts)."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "method": self.method,
            "sparsity": self.sparsity,
            "seed": self.seed,
            "recipe": self.recipe,
            "ablation": self.ablation,
            "allocation": self.allocation,
            "method_options": dict(self.method_options),
            "train": key_dict(self.train),
            "model_kwargs": dict(self.model_kwargs),
            "init": self.init,
            "bn_gamma": self.bn_gamma,
            "scoring_batch_size": self.scoring_batch_size,
            "headline": self.headline,
            # present only for structured runs, so that every other run keeps its key
            **({} if self.structured is None else {"structured": dict(self.structured)}),
            # present only for bf16 runs: every fp32 run keeps the key it had before bf16 came to the CPU
            **({} if self.precision == FP32 else {"precision": self.precision}),
        }

    @functools.cached_property
    def key(self) -> str:
        """A stable 16-hex-digit key: the hash of :attr:`config`."""
        return run_key(self.config)

    @property
    def group(self) -> str | None:
        """Runs with the same group can train stacked as one network (``None``: never, e.g. IMP)."""
        if self.method == IMP or self.structured is not None:
            return None
        c = self.config
        return json.dumps({k: c.get(k) for k in ("model", "dataset", "recipe", "train", "model_kwargs", "init", "bn_gamma", "precision")},
                          sort_keys=True)

    def training_precision(self, device: Any) -> Precision:
        """How this run trains on ``device``: its keyed precision (bf16 runs so even where it would be
        emulated, with a notice: the key says bf16) and the memory format its recipe asks for there."""
        import torch

        from ..training.precision import native_bf16

        device = torch.device(device)
        if self.precision == BF16 and not native_bf16(device)[0]:
            logger.warning("run %s was resolved for bf16 training; %s emulates bf16 (slow)", self.key, device)
        return Precision(self.precision, self.train.channels_last and device.type in ("cuda", "cpu"))

    @property
    def pruned(self) -> bool:
        """Whether the run scores masks at initialisation (neither dense nor IMP)."""
        return self.method not in (DENSE, IMP)

    @property
    def label(self) -> str:
        """``method @ sparsity seed s (ablation)`` for messages."""
        head = f"{self.method} @ {self.sparsity:.4g} seed {self.seed}"
        if self.structured is not None:
            head = f"structured {structured_label(self.structured)} {self.structured['budget']} seed {self.seed}"
        return head + (f" ({self.ablation})" if self.ablation else "")


def structured_label(structured: Mapping[str, Any]) -> str:
    """``trigger`` or ``trigger:name=value,...`` with the options that differ from their defaults."""
    from ..options import as_dict
    from ..structured import StructuredOptions

    defaults = as_dict(StructuredOptions())
    diff = [f"{k}={v}" for k, v in structured["options"].items() if defaults.get(k) != v]
    return structured["trigger"] + (":" + ",".join(diff) if diff else "")


def _prunable_count(model: str, dataset: str, num_classes: int | None, model_kwargs: Mapping[str, Any]) -> int:
    """Prunable weights of a zoo model on a dataset, counted on the meta device (no memory, no data)."""
    import torch

    from ..data import get_info
    from ..models import create
    from ..prunable import prunable_parameters

    info = get_info(dataset)
    shape = (1, 28, 28) if info.name in ("mnist", "fashion-mnist") else (3, 32, 32)
    with torch.device("meta"):
        net = create(model, num_classes or 10, shape, seed=0, **dict(model_kwargs))
    return sum(p.numel() for p in prunable_parameters(net).values())


def resolve(spec: RunSpec, device: Any = None) -> ResolvedRun:
    """The complete configuration of a run, validated.

    Args:
        device: the device that will train it (default: CUDA when available, else the CPU): the
            training precision the recipe's ``amp`` resolves to there is part of the run.

    Raises:
        ConfigError: any unknown name or invalid value, naming it.
    """
    if spec.method not in known_methods():
        raise unknown("method", spec.method, known_methods())
    get_model_spec(spec.model)
    info = get_info(spec.dataset)
    recipe = get_recipe(spec.recipe)
    sparsity = _check_sparsity(spec.method, spec.sparsity)
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed <= 2**63 - 1:
        raise ConfigError(f"seed must be an integer in [0, 2**63 - 1], got {spec.seed!r}")
    if spec.ablation is not None:
        if spec.ablation not in ABLATIONS:
            raise unknown("ablation", spec.ablation, ABLATIONS)
        if spec.method in (DENSE, IMP):
            raise ConfigError(f"ablations apply to pruning-at-initialization methods, not {spec.method!r}")
    # options added after runs were first recorded stay out of the key while at their default
    method_opts = key_dict(build_method_options(spec.method, spec.method_options))
    train_values = {**as_dict(recipe.config_for(spec.model)), **dict(spec.train)}
    if spec.epochs is not None:
        train_values["epochs"] = spec.epochs
    train_cfg = build(TrainConfig, {k: tuple(v) if isinstance(v, list) else v for k, v in train_values.items()}, "train")
    if spec.method == IMP and method_opts["rewind_epoch"] >= train_cfg.epochs:
        raise ConfigError(f"rewind_epoch ({method_opts['rewind_epoch']}) must be below the number of epochs ({train_cfg.epochs})")
    allocation = None
    if spec.method not in (DENSE, IMP):
        allocation = spec.allocation or get_method(spec.method).allocation
        if allocation not in ALLOCATIONS:
            raise unknown("allocation", allocation, ALLOCATIONS)
    elif spec.allocation is not None:
        raise ConfigError(f"allocation does not apply to {spec.method!r} (IMP takes allocation as an option)")
    scoring_bs = spec.scoring_batch_size or train_cfg.batch_size
    if isinstance(scoring_bs, bool) or not isinstance(scoring_bs, int) or scoring_bs < 1:
        raise ConfigError(f"scoring batch size must be a positive integer, got {scoring_bs!r}")
    if not isinstance(spec.model_kwargs, Mapping):
        raise ConfigError(f"model_kwargs must be a table of keyword arguments, got {spec.model_kwargs!r}")
    model_kwargs = {**recipe.model_kwargs.get(spec.model, {}), **dict(spec.model_kwargs)}
    if spec.method != DENSE and 1.0 - sparsity < 1e-3:  # only extreme sparsities can keep nothing of a zoo model
        from ..pruning import check_keeps_some

        check_keeps_some(_prunable_count(spec.model, info.name, info.num_classes, model_kwargs), 1.0 - sparsity)
    structured = None
    if spec.structured is not None:
        from ..structured import parse_budget, parse_structured

        if spec.method != DENSE or spec.ablation is not None:
            raise ConfigError(f"structured pruning trains a dense network: use method 'dense' with it, not {spec.method!r}")
        trigger, options = parse_structured(spec.structured)
        kind, fraction = parse_budget(spec.budget or "macs=0.5")
        if options["prune_at"] is not None and options["prune_at"] >= train_cfg.epochs:
            raise ConfigError(f"prune_at ({options['prune_at']}) must be below the number of epochs ({train_cfg.epochs})")
        structured = MappingProxyType({"trigger": trigger, "budget": f"{kind}={fraction:g}", "options": options})
    elif spec.budget is not None:
        raise ConfigError("budget= applies to structured runs; pass structured= too (e.g. 'epi')")
    from ..training.precision import resolve_precision
    from ..training.trainer import default_device

    precision = resolve_precision(train_cfg.amp, train_cfg.channels_last, default_device() if device is None else device, notice=False)
    return ResolvedRun(
        precision=precision.dtype,
        model=spec.model,
        dataset=info.name,
        method=spec.method,
        sparsity=sparsity,
        seed=spec.seed,
        recipe=recipe.name,
        ablation=spec.ablation,
        allocation=allocation,
        method_options=MappingProxyType(method_opts),
        train=train_cfg,
        model_kwargs=MappingProxyType(model_kwargs),
        init=recipe.init,
        bn_gamma=recipe.bn_gamma,
        scoring_batch_size=scoring_bs,
        headline=recipe.headline,
        structured=structured,
    )


def resolve_config(config: Mapping[str, Any]) -> ResolvedRun:
    """The :class:`ResolvedRun` of a stored configuration (a results-database row's ``config``).

    Raises:
        ConfigError: the configuration is not one prunekit wrote (a missing or unknown field).
    """
    try:
        train = build(TrainConfig, {k: tuple(v) if isinstance(v, list) else v for k, v in config["train"].items()}, "train")
        run = ResolvedRun(
            model=config["model"], dataset=config["dataset"], method=config["method"], sparsity=config["sparsity"],
            seed=config["seed"], recipe=config["recipe"], ablation=config["ablation"], allocation=config["allocation"],
            method_options=MappingProxyType(dict(config["method_options"])), train=train,
            model_kwargs=MappingProxyType(dict(config["model_kwargs"])), init=config["init"], bn_gamma=config["bn_gamma"],
            scoring_batch_size=config["scoring_batch_size"], headline=config["headline"],
            structured=None if config.get("structured") is None else MappingProxyType(dict(config["structured"])),
            precision=config.get("precision", FP32),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"not a prunekit run configuration (missing or bad field {exc})") from None
    if run.config != dict(config):
        raise ConfigError("the stored configuration does not round-trip (written by another prunekit version?)")
    return run


def run_key(resolved: ResolvedRun | Mapping[str, Any]) -> str:
    """A stable 16-hex-digit key of a resolved run (or of its JSON form)."""
    if isinstance(resolved, ResolvedRun):
        return resolved.key
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


# -- sweeps --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """A grid of runs: models x methods x sparsities x seeds (x ablations), plus dense baselines, plus
    early structured pruning: models x structured triggers x budgets x seeds."""

    models: tuple[str, ...]
    dataset: str
    methods: tuple[str, ...] = ()
    sparsities: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0,)
    recipe: str = DEFAULT_RECIPE
    epochs: int | None = None
    dense: bool = True
    ablations: tuple[str, ...] = ()
    allocation: str | None = None
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scoring_batch_size: int | None = None
    data_dir: str | None = None
    structured: tuple[str, ...] = ()  # early structured pruning specs ("epi", "epoch:prune_at=5", ...)
    budgets: tuple[str, ...] = ("macs=0.5",)

    def resolved(self, device: Any = None) -> list[ResolvedRun]:
        """Every run of the grid, resolved once for ``device`` (dense baselines first)."""
        return [resolve(r, device) for r in self.runs()]

    def runs(self) -> list[RunSpec]:
        """Every run of the grid (dense baselines first), validated."""
        for m in self.method_options:
            if m not in self.methods:
                raise ConfigError(f"options are given for method {m!r}, which is not in the sweep's methods")
        out = []
        common: dict[str, Any] = dict(recipe=self.recipe, epochs=self.epochs, train=self.train, scoring_batch_size=self.scoring_batch_size)
        for model in self.models:
            if self.dense:
                for seed in self.seeds:
                    out.append(RunSpec(model, self.dataset, DENSE, 0.0, seed, model_kwargs=self.model_kwargs, **common))
            for method, sparsity, seed, ablation in itertools.product(self.methods, self.sparsities, self.seeds, (None, *self.ablations)):
                if method == DENSE:
                    continue
                if ablation is not None and method == IMP:
                    continue
                out.append(
                    RunSpec(
                        model, self.dataset, method, sparsity, seed, ablation=ablation,
                        allocation=None if method == IMP else self.allocation,
                        method_options=self.method_options.get(method, {}), model_kwargs=self.model_kwargs, **common,
                    )
                )
            for spec, budget, seed in itertools.product(self.structured, self.budgets, self.seeds):
                out.append(RunSpec(model, self.dataset, DENSE, 0.0, seed, model_kwargs=self.model_kwargs, structured=spec, budget=budget, **common))
        return out


_SWEEP_KEYS = {f.name for f in fields(SweepSpec)} - {"method_options"}  # options come from [options.*]
_LIST_KEYS = {"models", "methods", "sparsities", "seeds", "ablations", "structured", "budgets"}


_LIST_TYPES: dict[str, Any] = {
    "models": str, "methods": str, "sparsities": (int, float), "seeds": int, "ablations": str, "structured": str, "budgets": str,
}
_SCALAR_TYPES: dict[str, Any] = {
    "dataset": str, "recipe": str, "epochs": int, "dense": bool, "allocation": str, "scoring_batch_size": int, "data_dir": str,
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def sweep_from_mapping(values: Mapping[str, Any], where: str = "sweep config") -> SweepSpec:
    """Build and fully validate a :class:`SweepSpec` from a mapping (a parsed TOML file or CLI flags).

    Layout: the fields of :class:`SweepSpec` at the top level (``model`` is accepted for ``models``,
    a single value for any list), a ``[train]`` table of training overrides, an ``[options.<method>]``
    table of options per method::

        models = ["lenet5"]
        dataset = "fashion-mnist"
        methods = ["snip", "force"]
        sparsities = [0.9, 0.98]
        seeds = [0, 1, 2]
        recipe = "lenet-fmnist"
        [train]
        lr = 0.05
        [options.force]
        num_steps = 100

    Raises:
        ConfigError: an unknown key (named, with where it was found) or an invalid value, before any
            run starts.
    """
    values = dict(values)
    if "model" in values:
        values["models"] = values.pop("model")
    options = values.pop("options", {})
    for key in values:
        if key not in _SWEEP_KEYS:
            raise ConfigError(f"unknown key {key!r} in {where}; valid keys: {', '.join(sorted(_SWEEP_KEYS | {'model', 'options'}))}")
    # a grid of methods needs sparsities; a file of dense baselines (or structured runs) alone needs neither
    required = ("models", "dataset") if values.get("structured") or values.get("dense") is True else ("models", "dataset", "methods", "sparsities")
    for key in required:
        if key not in values:
            raise ConfigError(f"{where} needs {key!r}")
    for key in _LIST_KEYS & values.keys():
        v = values[key]
        values[key] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        kind = _LIST_TYPES[key]
        for item in values[key]:
            if isinstance(item, bool) or not isinstance(item, kind):
                wanted = "numbers" if kind == (int, float) else "integers" if kind is int else "names (strings)"
                raise ConfigError(f"{key!r} in {where} must be a list of {wanted}, got an item {item!r}")
    for key, kind in _SCALAR_TYPES.items():
        if key in values and values[key] is not None and (not isinstance(values[key], kind) or
                                                           (kind is not bool and isinstance(values[key], bool))):
            raise ConfigError(f"{key!r} in {where} must be {_TYPE_NAMES[kind]}, got {values[key]!r}")
    for key in ("models", "seeds"):
        if key in values and not values[key]:
            raise ConfigError(f"{key!r} in {where} is empty: a sweep needs at least one")
    if not values.get("methods") and not values.get("structured") and not values.get("dense", True):
        raise ConfigError(f"the sweep in {where} has nothing to run: no methods, no structured runs and no dense baseline")
    if values.get("methods") and not values.get("sparsities"):
        raise ConfigError(f"'sparsities' in {where} is empty: the methods need at least one")
    if "methods" in values and not values["methods"] and not values.get("structured") and values.get("dense") is not True:
        raise ConfigError(f"'methods' in {where} is empty: name at least one method (or 'dense = true' with methods for a baseline)")
    for name, table in [("options", options), ("train", values.get("train", {})), ("model_kwargs", values.get("model_kwargs", {}))]:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{name!r} in {where} must be a table")
    for method, table in options.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"[options.{method}] in {where} must be a table of options")
    values["method_options"] = {k: dict(v) for k, v in options.items()}
    spec = SweepSpec(**values)
    for run in spec.runs():
        resolve(run)  # validates every run before any work starts
    return spec


def load_sweep_file(path: str | Path) -> SweepSpec:
    """Read a TOML sweep file and validate it in full."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config {str(path)!r} does not exist")
    try:
        values = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (a TOML sweep file is UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return sweep_from_mapping(values, where=str(path))


def with_overrides(spec: SweepSpec, **overrides: Any) -> SweepSpec:
    """A copy of ``spec`` with the non-None ``overrides`` replaced."""
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})
