"""What every run kind shares: the typed description, its JSON form and key, and the context it runs in.

A run is a frozen dataclass: the fields of :class:`Run` (network, data, recipe, training, seed) and
those of its kind (a method and its typed options, IMP's options, a structured trigger and budget).
Its JSON form (:attr:`Run.config`, the results database's ``config`` and the run folder's
``config.json``) and its key (the hash of that form, the options that are not keyed at their
defaults) are derived here, in one place, from the typed fields; the layout is the one prunekit
has always written, so every recorded run keeps its key. How a kind is carried out is its :meth:`Run.execute`; the lifecycle around it (claim,
heartbeat, record) is :mod:`prunekit.experiments.lifecycle`'s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.masks import Masks
from ...data import Dataset, load_dataset, scoring_batches
from ...distributed import rank
from ...errors import ConfigError
from ...files import atomic_write_json
from ...models import create
from ...options import as_dict, key_dict, unkeyed_at_default
from ...training import Callback, TrainConfig, TrainResult
from ...training.core import split_dataset
from ...training.precision import BF16, FP32, Precision, native_bf16

logger = logging.getLogger("prunekit")

DENSE = "dense"
IMP = "imp"


def run_key(run: Run | Mapping[str, Any]) -> str:
    """A stable 16-hex-digit key of a run: the hash of its JSON form, with the training options that
    are not keyed (``amp``, ``channels_last``: the run keys the precision they resolve to) at their
    defaults, as every key recorded before they took effect on the CPU had them."""
    if isinstance(run, Run):
        return run.key
    keyed = {**run, "train": unkeyed_at_default(TrainConfig, run["train"])}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


class DatasetCache:
    """Datasets loaded once per process and shared by the runs of a sweep."""

    def __init__(self, data_dir: str | None = None):
        self.data_dir = data_dir
        self._cache: dict[str, Dataset] = {}

    def get(self, name: str) -> Dataset:
        if name not in self._cache:
            self._cache[name] = load_dataset(name, self.data_dir)
        return self._cache[name]


@dataclass
class RunContext:
    """Where and how a run is carried out (not part of what it is)."""

    run_dir: Path
    datasets: DatasetCache
    device: torch.device
    epoch_callbacks: Callable[[int], list[Callback]] = field(default=lambda phase: [])  # phase (IMP round) -> callbacks
    progress: bool | None = None
    guard: Callable[[], None] = field(default=lambda: None)  # called before the run writes a file: raises if the claim is gone
    events: list[str] = field(default_factory=list)  # environment events of the run (damaged files set aside)


@dataclass
class Executed:
    """What executing a run produced, before it is recorded."""

    model: nn.Module
    masks: Masks | None
    result: TrainResult
    extra: dict[str, Any]
    train_seconds: float | None = None  # IMP: only the rounds this run trained


@dataclass(frozen=True, kw_only=True)
class Run:
    """The fields every run has, resolved and validated (build one with :func:`prunekit.experiments.resolve`)."""

    model: str
    dataset: str
    seed: int
    recipe: str
    train: TrainConfig
    model_kwargs: Mapping[str, Any]
    init: str
    bn_gamma: str
    headline: str
    scoring_batch_size: int
    precision: str = FP32  # what train.amp resolved to on the training device: fp32 or bf16
    sparsity: float = 0.0  # the fraction of prunable weights removed (0: a dense network)

    kind: ClassVar[str] = ""
    data_parallel: ClassVar[bool] = False  # whether --nproc may train it

    # -- what the kind says about itself ----------------------------------------------------------
    @property
    def method(self) -> str:
        raise NotImplementedError

    def _kind_config(self) -> dict[str, Any]:
        """The kind's fields in the JSON layout: method, sparsity, ablation, allocation, method_options (+ extras)."""
        raise NotImplementedError

    def _execute(self, ctx: RunContext) -> Executed:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """``method @ sparsity seed s`` for messages."""
        return f"{self.method} @ {self.sparsity:.4g} seed {self.seed}"

    @property
    def group(self) -> str | None:
        """Runs with the same group can train stacked as one network (``None``: never)."""
        return None

    @property
    def variant(self) -> list[str]:
        """What sets this run apart from its method's defaults: ``name=value`` of every option that
        differs (the rows of a report: ``force [count_rule=official]``)."""
        options = getattr(self, "options", None)
        if options is None:
            return []
        defaults = as_dict(type(options)())
        return [f"{k}={v}" for k, v in sorted(as_dict(options).items()) if defaults.get(k) != v]

    # -- derived in one place ---------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The JSON form: the row's ``config`` in the results database, ``config.json`` in the run folder
        (the training options as asked for, ``amp`` and ``channels_last`` included: :func:`from_config`
        rebuilds the same run from it)."""
        out = {
            "model": self.model,
            "dataset": self.dataset,
            "seed": self.seed,
            "recipe": self.recipe,
            "train": key_dict(self.train, requested=True),
            "model_kwargs": dict(self.model_kwargs),
            "init": self.init,
            "bn_gamma": self.bn_gamma,
            "scoring_batch_size": self.scoring_batch_size,
            "headline": self.headline,
            **self._kind_config(),
        }
        if self.precision != FP32:  # present only for bf16 runs: every fp32 run keeps the key it had before
            out["precision"] = self.precision
        return out

    @functools.cached_property
    def key(self) -> str:
        """A stable 16-hex-digit key: :func:`run_key` of :attr:`config`."""
        return run_key(self.config)

    def training_precision(self, device: torch.device | str) -> Precision:
        """How this run trains on ``device``: its keyed precision (bf16 even where it would be emulated,
        with a notice: the key says bf16) and the memory format its recipe asks for there."""
        device = torch.device(device)
        if self.precision == BF16 and not native_bf16(device)[0]:
            logger.warning("run %s was resolved for bf16 training; %s emulates bf16 (slow)", self.key, device)
        return Precision(self.precision, self.train.channels_last and device.type in ("cuda", "cpu"))

    def start(self, ctx: RunContext) -> None:
        """The run's folder, with its ``config.json`` (data-parallel: rank 0 writes files)."""
        if rank() == 0:
            ctx.guard()
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(ctx.run_dir / "config.json", self.config, indent=1, sort_keys=True)

    def execute(self, ctx: RunContext) -> Executed:
        """Carry the run out in ``ctx``."""
        self.start(ctx)
        return self._execute(ctx)

    def check_data(self, ds: Dataset) -> None:
        """Mistakes only the data can show, found before anything is written: a hold-out or subset
        that does not fit the training set, a batch larger than it.

        Raises:
            ConfigError: naming the value and the size of the data.
        """
        n = len(ds.train)
        holdout = self.train.holdout
        left = n
        if holdout is not None:
            count = round(holdout * n) if isinstance(holdout, float) else holdout
            if not 0 < count < n:
                raise ConfigError(f"val_size={self.train.val_size:g} does not fit {self.dataset}'s {n:,} training images: "
                                  f"hold out a count in [1, {n - 1:,}] or a fraction in (0, 1)")
            left = n - count
        subset = self.train.train_subset
        if subset is not None and subset > left:
            raise ConfigError(f"train_subset={subset:,} is more than the {left:,} training images of {self.dataset} left after the "
                              "validation hold-out")
        if min(left, subset or left) < 2:
            raise ConfigError(f"{self.dataset} leaves {min(left, subset or left)} training image(s) to train on")

    # -- shared by the kinds ----------------------------------------------------------------------
    def make_model(self, ds: Dataset, device: torch.device, seed: int | None = None) -> nn.Module:
        """The run's network, initialised as its recipe says (``seed`` defaults to the run's)."""
        return create(
            self.model, ds.num_classes, ds.input_shape, init=self.init, bn_gamma=self.bn_gamma,
            seed=self.seed if seed is None else seed, **dict(self.model_kwargs),
        ).to(device)

    def scoring_data(self, ds: Dataset, device: torch.device, num_batches: int | None = None) -> Any:
        """The run's scoring batches: from the training part of its split (never validation data)."""
        train_part = split_dataset(ds.train, self.train, self.seed)[0]
        return scoring_batches(
            train_part, batch_size=self.scoring_batch_size, mean=ds.info.mean, std=ds.info.std, device=device, seed=self.seed,
            num_batches=num_batches,
        )
