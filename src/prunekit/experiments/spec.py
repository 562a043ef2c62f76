"""Requests and their resolution: what a user asks for (a run, a sweep), turned once into typed runs.

:class:`RunSpec` is a request as the command line, a sweep file or the API states it; its fields'
help texts and defaults are what ``prunekit run``'s flags show. :func:`resolve` validates every
value once and builds the typed run of the right kind (:class:`TrainingRun`, :class:`ImpRun`,
:class:`StructuredRun`); :func:`from_config` rebuilds one from its stored JSON form. These two are
the only places that choose a run kind. A :class:`SweepSpec` is a grid of requests; a sweep file is
its TOML form.

A run's key is the hash of its resolved JSON form (every default filled in), so the same request
always maps to the same key, and changing any setting that matters gives a new run. Where the data
lives and which device trains are not part of the key; the training precision the device gives a
run is (bf16 runs only: fp32 runs keep the keys they always had).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core.allocation import ALLOCATIONS, check_density
from ..data import get_info
from ..errors import ConfigError, unknown
from ..imp import ImpOptions
from ..methods import get_method, list_methods
from ..models import get_model_spec
from ..options import as_dict, build, option, required
from ..structured import TRIGGERS, StructuredOptions, check_structured, parse_budget, parse_structured
from ..training import TrainConfig, get_recipe
from ..training.config import MAX_EPOCHS
from ..training.recipes import Recipe, default_recipe
from .db import DEFAULT_LEASE
from .kinds import DENSE, IMP, ImpRun, Run, StructuredRun, TrainingRun

ABLATIONS = {
    "shuffle": "shuffle each layer's mask at random (keeps every layer's density)",
    "reinit": "train the masked network from a fresh random initialisation",
    "invert": "keep the lowest-scoring weights instead of the highest",
}
DEFAULT_SPARSITY = 0.9  # `prunekit run` and `prunekit prune` when neither sparsity nor density is given
DEFAULT_BUDGET = "macs=0.5"


def known_methods() -> list[str]:
    return [DENSE, *list_methods(), IMP]


def method_options_class(method: str) -> type | None:
    """The options dataclass of ``method`` (None for dense)."""
    if method == DENSE:
        return None
    if method == IMP:
        return ImpOptions
    return get_method(method).options


def build_method_options(method: str, values: Mapping[str, Any], for_run: bool = False) -> Any:
    """The validated options of ``method`` (``official=True`` expanded for PaI methods; None for dense);
    ``for_run``: completed as a new run records them (a scorer file read and its checksum kept)."""
    if method == DENSE:
        if values:
            raise ConfigError(f"the dense baseline has no options, got {', '.join(values)}")
        return None
    if method == IMP:
        return build(ImpOptions, dict(values), f"method {method!r}")
    spec = get_method(method)
    return spec.options_for_run(values) if for_run else spec.build_options(values)


@dataclass(frozen=True)
class RunSpec:
    """One run as requested (:func:`resolve` fills in every default and validates every value)."""

    model: str = required("network: a zoo model (prunekit models), or package.module:builder, timm:NAME, torchvision:NAME")
    dataset: str = required("dataset name (prunekit datasets)")
    method: str | None = option(None, "dense, a pruning method (prunekit methods) or imp; dense when structured= is given")
    sparsity: float | None = option(None, f"fraction of prunable weights removed, in (0, 1) (default {DEFAULT_SPARSITY})")
    seed: int = option(0, "seed of initialisation, data order, scoring batches and masks", min=0)
    recipe: str | None = option(None, "training recipe (prunekit recipes; default: the one written for the model and dataset)")
    epochs: int | None = option(None, "shorten or lengthen the recipe (its milestones scale)", min=1, max=MAX_EPOCHS)
    ablation: str | None = option(None, "sanity check of the masks: shuffle, reinit or invert", choices=tuple(ABLATIONS))
    allocation: str | None = option(None, "how the kept weights are spread over layers: global, layerwise or erk (default: the method's)",
                                    choices=tuple(ALLOCATIONS))
    method_options: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "the method's options"})
    train: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "training options overriding the recipe's"})
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "keyword arguments of the model's builder"})
    scoring_batch_size: int | None = option(None, "batch size of the scoring batches (default: the training batch size)", min=1)
    structured: str | None = option(None, "early structured pruning of a dense run: TRIGGER[:NAME=VALUE,...] with TRIGGER one of "
                                    + ", ".join(TRIGGERS))
    budget: str | None = option(None, "structured budget: macs=F, params=F or latency=F (training-step time on the device), "
                                f"the fraction kept (default {DEFAULT_BUDGET})")
    density: float | None = option(None, "fraction of prunable weights kept (instead of sparsity)")


def _check_sparsity(method: str, spec: RunSpec) -> float:
    if spec.sparsity is not None and spec.density is not None:
        raise ConfigError("give sparsity or density, not both")
    if method == DENSE:
        if spec.density is not None or spec.sparsity not in (None, 0, 0.0):
            raise ConfigError(f"the dense baseline prunes nothing: sparsity/density do not apply to it (got {spec.sparsity or spec.density!r})")
        return 0.0
    sparsity = DEFAULT_SPARSITY if spec.sparsity is None else spec.sparsity
    if spec.density is not None:
        sparsity = 1.0 - check_density(spec.density)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity):
        raise ConfigError(f"sparsity must be a number in (0, 1), got {sparsity!r}")
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"sparsity must be in (0, 1) for method {method!r}, got {sparsity!r}")
    return float(sparsity)


def _prunable_count(model: str, dataset: str, num_classes: int | None, model_kwargs: Mapping[str, Any]) -> int | None:
    """Prunable weights of a zoo model on a dataset, counted on the meta device (no memory, no data)."""
    import torch

    from ..core.prunable import prunable_parameters
    from ..models import create

    shape = (1, 28, 28) if dataset in ("mnist", "fashion-mnist") else (3, 32, 32)
    try:
        with torch.device("meta"):
            net = create(model, num_classes or 10, shape, seed=0, **dict(model_kwargs))
        return sum(p.numel() for p in prunable_parameters(net).values())
    except ConfigError:
        raise
    except Exception:  # a model from outside the zoo that cannot be built on the meta device: prune() checks it
        return None


def _recipe(spec: RunSpec, dataset: str) -> Recipe:
    return default_recipe(spec.model, dataset) if spec.recipe is None else get_recipe(spec.recipe)


def resolve(spec: RunSpec, device: Any = None) -> Run:
    """The typed run ``spec`` asks for, every default filled in and every value validated.

    Args:
        device: the device that will train it (default: CUDA when available, else the CPU): the
            training precision the recipe's ``amp`` resolves to there is part of the run.

    Raises:
        ConfigError: any unknown name or invalid value, naming it.
    """
    from ..training.precision import check_compile, resolve_precision
    from ..training.trainer import default_device

    method = spec.method if spec.method is not None else (DENSE if spec.structured is not None else None)
    if method is None:
        raise ConfigError("a run needs a method (dense, a pruning method or imp), or structured= for early structured pruning")
    if method not in known_methods():
        raise unknown("method", method, known_methods())
    model_spec = get_model_spec(spec.model)
    info = get_info(spec.dataset)
    recipe = _recipe(spec, info.name)
    sparsity = _check_sparsity(method, spec)
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed <= 2**63 - 1:
        raise ConfigError(f"seed must be an integer in [0, 2**63 - 1], got {spec.seed!r}")
    if spec.ablation is not None:
        if spec.ablation not in ABLATIONS:
            raise unknown("ablation", spec.ablation, ABLATIONS)
        if method in (DENSE, IMP):
            raise ConfigError(f"ablations apply to pruning-at-initialization methods, not {method!r}")
    options = build_method_options(method, spec.method_options, for_run=True)
    if not isinstance(spec.train, Mapping):
        raise ConfigError(f"train must be a table of training options, got {spec.train!r}")
    train_values = {**as_dict(recipe.config_for(spec.model)), **dict(spec.train)}
    if spec.epochs is not None:
        train_values["epochs"] = spec.epochs
    train = build(TrainConfig, {k: tuple(v) if isinstance(v, list) else v for k, v in train_values.items()}, "train")
    scoring_bs = spec.scoring_batch_size or train.batch_size
    if isinstance(scoring_bs, bool) or not isinstance(scoring_bs, int) or scoring_bs < 1:
        raise ConfigError(f"scoring batch size must be a positive integer, got {scoring_bs!r}")
    if not isinstance(spec.model_kwargs, Mapping):
        raise ConfigError(f"model_kwargs must be a table of keyword arguments, got {spec.model_kwargs!r}")
    model_kwargs = {**recipe.model_kwargs.get(spec.model, {}), **dict(spec.model_kwargs)}
    if method != DENSE and 1.0 - sparsity < 1e-3:  # only extreme sparsities can keep nothing of a zoo model
        from ..core.pruning import check_keeps_some

        count = _prunable_count(spec.model, info.name, info.num_classes, model_kwargs)
        if count is not None:
            check_keeps_some(count, 1.0 - sparsity)
    target = default_device() if device is None else device
    precision = resolve_precision(train.amp, train.channels_last, target, notice=False)
    if train.compile:  # refused here, before a sweep claims or writes anything, where torch.compile cannot run
        check_compile(target)
    common: dict[str, Any] = dict(
        model=spec.model, dataset=info.name, seed=spec.seed, recipe=recipe.name, train=train, model_kwargs=MappingProxyType(model_kwargs),
        # a zoo model is initialised as its recipe's paper did; a model from outside keeps its builder's initialisation
        init=recipe.init if model_spec.init != "builder" else "builder", bn_gamma=recipe.bn_gamma, headline=recipe.headline,
        scoring_batch_size=scoring_bs, precision=precision.dtype,
    )
    if spec.structured is not None:
        if method != DENSE or spec.ablation is not None:
            raise ConfigError(f"structured pruning trains a dense network: use method 'dense' with it, not {method!r}")
        if spec.allocation is not None:
            raise ConfigError("allocation does not apply to structured pruning")
        trigger, structured = parse_structured(spec.structured)
        if structured.prune_at is not None and structured.prune_at >= train.epochs:
            raise ConfigError(f"prune_at ({structured.prune_at}) must be below the number of epochs ({train.epochs})")
        return StructuredRun(**common, trigger=trigger, budget=parse_budget(spec.budget or DEFAULT_BUDGET), options=structured)
    if spec.budget is not None:
        raise ConfigError("budget= applies to structured runs; pass structured= too (e.g. 'epi')")
    if method == IMP:
        if spec.allocation is not None:
            raise ConfigError(f"allocation does not apply to {method!r} (IMP takes allocation as an option)")
        if options.rewind_epoch >= train.epochs:
            raise ConfigError(f"rewind_epoch ({options.rewind_epoch}) must be below the number of epochs ({train.epochs})")
        return ImpRun(**common, sparsity=sparsity, options=options)
    allocation = None
    if method != DENSE:
        allocation = get_method(method).check_allocation(spec.allocation or get_method(method).allocation)
    elif spec.allocation is not None:
        raise ConfigError("allocation does not apply to the dense baseline")
    return TrainingRun(**common, method=method, sparsity=sparsity, options=options, allocation=allocation, ablation=spec.ablation)


def from_config(config: Mapping[str, Any]) -> Run:
    """The typed run of a stored configuration (a results-database row's ``config``, a ``config.json``).

    Raises:
        ConfigError: the configuration is not one prunekit wrote (a missing or unknown field), or it
            does not round-trip.
    """
    try:
        train = build(TrainConfig, {k: tuple(v) if isinstance(v, list) else v for k, v in config["train"].items()}, "train")
        common: dict[str, Any] = dict(
            model=config["model"], dataset=config["dataset"], seed=config["seed"], recipe=config["recipe"], train=train,
            model_kwargs=MappingProxyType(dict(config["model_kwargs"])), init=config["init"], bn_gamma=config["bn_gamma"],
            headline=config["headline"], scoring_batch_size=config["scoring_batch_size"], precision=config.get("precision", "fp32"),
        )
        method, values = config["method"], config["method_options"]
        run: Run
        if config.get("structured") is not None:
            s = config["structured"]
            options = check_structured(s["trigger"], build(StructuredOptions, s["options"], f"structured trigger {s['trigger']!r}"))
            run = StructuredRun(**common, trigger=s["trigger"], budget=parse_budget(s["budget"]), options=options)
        elif method == IMP:
            run = ImpRun(**common, sparsity=config["sparsity"], options=build(ImpOptions, values, "method 'imp'"))
        else:
            run = TrainingRun(**common, method=method, sparsity=config["sparsity"], options=build_method_options(method, values),
                              allocation=config["allocation"], ablation=config["ablation"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"not a prunekit run configuration (missing or bad field {exc})") from None
    if run.config != dict(config):
        raise ConfigError("the stored configuration does not round-trip (written by another prunekit version?)")
    return run


# -- sweeps --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """A grid of runs: models x methods x sparsities x seeds (x ablations), plus dense baselines, plus
    early structured pruning: models x structured triggers x budgets x seeds."""

    models: tuple[str, ...] = required("models, comma-separated")
    dataset: str = required("dataset name (prunekit datasets)")
    methods: tuple[str, ...] = option((), "pruning methods, comma-separated, or all")
    sparsities: tuple[float, ...] = option((), "sparsities, comma-separated, e.g. 0.9,0.98,0.995")
    seeds: tuple[int, ...] = option((0,), "seeds, comma-separated")
    recipe: str | None = option(None, "training recipe (default: the one written for each model and the dataset)")
    epochs: int | None = option(None, "shorten or lengthen the recipe (its milestones scale)", min=1, max=MAX_EPOCHS)
    dense: bool = option(True, "a dense baseline per model and seed")
    ablations: tuple[str, ...] = option((), "sanity checks of the masks, comma-separated: " + ", ".join(ABLATIONS))
    allocation: str | None = option(None, "global, layerwise or erk (default: each method's)", choices=tuple(ALLOCATIONS))
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, metadata={"help": "options per method"})
    train: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "training options overriding the recipe's"})
    model_kwargs: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "keyword arguments of the models' builders"})
    scoring_batch_size: int | None = option(None, "batch size of the scoring batches (default: the training batch size)", min=1)
    data_dir: str | None = option(None, "where the dataset lives")
    structured: tuple[str, ...] = option((), "early structured pruning specs, separated by ';' (e.g. 'epi;epoch:prune_at=5')", sep=";")
    budgets: tuple[str, ...] = option((DEFAULT_BUDGET,), "structured budgets, comma-separated, e.g. macs=0.5,macs=0.3")
    lease: float = option(DEFAULT_LEASE, "seconds without a heartbeat after which a run held by a process on another host or "
                          "in another PID namespace is taken over", min=10.0)
    _resolved: dict[str, list[Run]] = field(default_factory=dict, compare=False, repr=False)

    def resolved(self, device: Any = None) -> list[Run]:
        """Every run of the grid, resolved once per device (dense baselines first)."""
        from ..training.trainer import default_device

        name = str(default_device() if device is None else device)
        if name not in self._resolved:
            self._resolved[name] = [resolve(r, device) for r in self.requests()]
        return self._resolved[name]

    def requests(self) -> list[RunSpec]:
        """Every run of the grid as a request (dense baselines first)."""
        for m in self.method_options:
            if m not in self.methods:
                raise ConfigError(f"options are given for method {m!r}, which is not in the sweep's methods")
        out: list[RunSpec] = []
        common: dict[str, Any] = dict(recipe=self.recipe, epochs=self.epochs, train=self.train, scoring_batch_size=self.scoring_batch_size,
                                      model_kwargs=self.model_kwargs)
        for model in self.models:
            if self.dense:
                out.extend(RunSpec(model, self.dataset, DENSE, seed=seed, **common) for seed in self.seeds)
            for method, sparsity, seed, ablation in itertools.product(self.methods, self.sparsities, self.seeds, (None, *self.ablations)):
                if method == DENSE or (ablation is not None and method == IMP):
                    continue
                out.append(RunSpec(model, self.dataset, method, sparsity, seed=seed, ablation=ablation,
                                   allocation=None if method == IMP else self.allocation,
                                   method_options=self.method_options.get(method, {}), **common))
            for spec, budget, seed in itertools.product(self.structured, self.budgets, self.seeds):
                out.append(RunSpec(model, self.dataset, DENSE, seed=seed, structured=spec, budget=budget, **common))
        return out


_SWEEP_KEYS = {f.name for f in fields(SweepSpec)} - {"method_options", "_resolved"}  # options come from [options.*]
_LIST_KEYS = {"models", "methods", "sparsities", "seeds", "ablations", "structured", "budgets"}
_LIST_TYPES: dict[str, Any] = {
    "models": str, "methods": str, "sparsities": (int, float), "seeds": int, "ablations": str, "structured": str, "budgets": str,
}
_SCALAR_TYPES: dict[str, Any] = {
    "dataset": str, "recipe": str, "epochs": int, "dense": bool, "allocation": str, "scoring_batch_size": int, "data_dir": str,
    "lease": (int, float),
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", (int, float): "a number"}


def sweep_from_mapping(values: Mapping[str, Any], where: str = "sweep config", device: Any = None) -> SweepSpec:
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

    Every run of the grid is resolved here (for ``device``), once: a mistake anywhere is an error
    before any run starts, and the sweep trains the runs resolved here.

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
    required_keys = ("models", "dataset") if values.get("structured") or values.get("dense") is True else ("models", "dataset", "methods", "sparsities")
    for key in required_keys:
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
    for key in _LIST_KEYS & values.keys():
        repeated = sorted({str(v) for v in values[key] if list(values[key]).count(v) > 1})
        if repeated:
            raise ConfigError(f"{key!r} in {where} lists {', '.join(repeated)} more than once: each run would be asked for twice")
    if "epochs" in values and isinstance(values["epochs"], int) and not isinstance(values["epochs"], bool) and not 1 <= values["epochs"] <= MAX_EPOCHS:
        raise ConfigError(f"'epochs' in {where} must be in [1, {MAX_EPOCHS:,}], got {values['epochs']!r}")
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
    spec.resolved(device)  # validates every run before any work starts
    return spec


def load_sweep_file(path: str | Path, device: Any = None) -> SweepSpec:
    """Read a TOML sweep file and validate it in full (every run resolved for ``device``)."""
    return sweep_from_mapping(read_sweep_file(path), where=str(path), device=device)


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """A sweep file's values, as TOML gives them (validated by :func:`sweep_from_mapping`)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (a TOML sweep file is UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def with_overrides(spec: SweepSpec, **overrides: Any) -> SweepSpec:
    """A copy of ``spec`` with the non-None ``overrides`` replaced (resolved again when used)."""
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None}, _resolved={})
