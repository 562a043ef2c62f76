"""The training loop: SGD/Adam on masked networks, with callbacks, exact resume and throughput."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import inputs as inp
from ..core.masks import Masks
from ..core.outputs import OutputFn, checked_output_fn
from ..data import Dataset, DeviceLoader
from ..data.loader import mix_seed
from ..distributed import check_replicas, decided_by_rank0, rank, world_size
from ..errors import ConfigError, DataError, PrunekitError, PrunekitWarning
from .callbacks import Callback, Checkpoint, Evaluate, ProgressBar
from .checkpoint import CheckpointError, load_checkpoint, previous, recover_checkpoint
from .config import TrainConfig
from .core import (
    check_resumable,
    checkpoint_state,
    drop_last_batch,
    epoch_metrics,
    make_optimizer,
    rng_state,
    set_lr,
    set_rng_state,
    split_dataset,
    stalled,
    train_epoch,
)
from .precision import Precision, check_compile, compiled, resolve_precision

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "TrainingStalled", "build_loaders", "default_device", "fit", "make_optimizer", "set_lr", "summarize"]


class TrainingDiverged(PrunekitError, RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingStalled(PrunekitError, RuntimeError):
    """The training loss never left chance level: the network did not learn (see ``training.core.stalled``)."""


@dataclass
class TrainResult:
    """What a training run produced. Accuracies are fractions in [0, 1]."""

    history: list[dict[str, Any]]
    final_test_acc: float | None
    best_test_acc: float | None
    best_test_epoch: int | None
    test_at_best_val: float | None = None
    best_val_epoch: int | None = None
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    epochs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(history: list[dict[str, Any]], train_seconds: float, images: int) -> TrainResult:
    """Final, best-epoch and best-validation-epoch accuracies from per-epoch metrics."""
    tests = [(h["test_acc"], h["epoch"]) for h in history if "test_acc" in h]
    vals = [(h["val_acc"], h["epoch"], h.get("test_acc")) for h in history if "val_acc" in h]
    best = max(tests, key=lambda t: (t[0], -t[1])) if tests else (None, None)
    best_val = max(vals, key=lambda t: (t[0], -t[1])) if vals else (None, None, None)
    return TrainResult(
        history=history,
        final_test_acc=tests[-1][0] if tests else None,
        best_test_acc=best[0],
        best_test_epoch=best[1],
        test_at_best_val=best_val[2],
        best_val_epoch=best_val[1],
        train_seconds=train_seconds,
        images_per_second=images / train_seconds if train_seconds > 0 else 0.0,
        epochs=len(history),
    )


class LoaderAdapter:
    """Any re-iterable of ``(inputs, targets)`` batches (a ``torch.utils.data.DataLoader``, a list)
    as the trainer's loader: batches moved to ``device`` (inputs a tensor, tuple or dict), and
    ``set_epoch`` passed on to a sampler that has one (``DistributedSampler``)."""

    def __init__(self, loader: Iterable, device: torch.device):
        if isinstance(loader, (Tensor, str, bytes, Iterator)) or not isinstance(loader, Iterable):
            raise ConfigError(
                f"train_loader must be re-iterable (a DataLoader or a list of batches), got {type(loader).__name__}"
            )
        try:
            self._len = len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(f"train_loader must have a length (batches per epoch), got {type(loader).__name__}") from None
        self.loader = loader
        self.device = device

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        holders: list[Any] = [self.loader, getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)]
        for holder in holders:
            if holder is not None and callable(getattr(holder, "set_epoch", None)):
                holder.set_epoch(epoch)
                return

    def __iter__(self) -> Iterator[tuple[Any, Tensor]]:
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not inp.is_inputs(batch[0]):
                raise DataError(f"each training batch must be (inputs, targets), got {type(batch).__name__}")
            x, y = batch[0], batch[1]
            yield inp.map_tensors(x, lambda t: t.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)


class Trainer:
    """Train ``model`` on ``train_loader`` with ``config``; keep ``masks`` applied after every step.

    ``train_loader`` is prunekit's :class:`~prunekit.data.DeviceLoader` or any re-iterable of
    ``(inputs, targets)`` batches with a length (a ``DataLoader``): inputs a tensor, a tuple
    (``model(*inputs)``) or a dict (``model(**inputs)``). The loss is ``loss_fn(output_fn(outputs),
    targets)``: cross-entropy on the logits by default (:mod:`prunekit.core.outputs` finds them in a
    tensor, tuple, dict or ``ModelOutput``); training accuracy is counted when the logits are
    ``(batch, classes)`` and the targets class indices.

    With a DeviceLoader the learning rate is a pure function of (epoch, step), the data order a pure
    function of (seed, epoch), and the checkpoint holds model, optimizer, RNG and history: a run
    resumed from the checkpoint of epoch ``e`` continues exactly as if it had never stopped (with a
    foreign loader, as exactly as that loader's order is a function of its epoch).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: DeviceLoader | Iterable,
        config: TrainConfig,
        *,
        masks: Masks | None = None,
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        output_fn: OutputFn | None = None,
        precision: Precision | None = None,
    ):
        self.model = model
        self.device = next(model.parameters()).device
        # what config.amp / channels_last resolve to on this device (the caller has put the model in its memory format)
        self.precision = precision or resolve_precision(config.amp, config.channels_last, self.device)
        if config.compile:
            check_compile(self.device)
        self.train_loader = train_loader if isinstance(train_loader, DeviceLoader) else LoaderAdapter(train_loader, self.device)
        if loss_fn is not None and not callable(loss_fn):
            raise ConfigError(f"loss_fn must be callable(logits, targets) -> loss, got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn or F.cross_entropy
        self.output_fn = checked_output_fn(output_fn)
        self.config = config
        self.callbacks = list(callbacks)
        self.seed = seed
        self.optimizer = make_optimizer(model.parameters(), config)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.images = 0
        self.masks: Masks | None = None
        self._enforce: Any = None
        self.classes: int | None = None  # the width of the logits, once a step has run
        self.stop: str | None = None  # set by a callback at the end of an epoch: why training ends there
        self.forward_model = self._forward(model)
        self.set_masks(masks)

    def _forward(self, model: nn.Module) -> nn.Module:
        """What the training step calls: ``model`` (data-parallel under torch.distributed), compiled
        when the config asks for it."""
        forward = self._data_parallel(model)
        return compiled(forward) if self.config.compile else forward

    @staticmethod
    def _data_parallel(model: nn.Module) -> nn.Module:
        """``model`` wrapped in DistributedDataParallel under torch.distributed (the forward and backward
        pass average the ranks' gradients); the Trainer keeps, checkpoints and masks the plain module."""
        if world_size() == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def set_masks(self, masks: Masks | None) -> None:
        """Use new masks from now on (zeroes the newly pruned weights at once)."""
        self.masks = masks
        self._enforce = None if masks is None else masks.bind(self.model)
        if self._enforce is not None:
            self._enforce()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return checkpoint_state(
            epoch=self.epoch, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), history=self.history,
            rng=rng_state(self.device), train_seconds=self.train_seconds, images=self.images, config=self.config,
            seed=self.seed, masks=self.masks, callbacks=[cb.state_dict() for cb in self.callbacks], precision=self.precision,
        )

    def replace_model(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Go on training ``model`` with ``optimizer`` (a structurally pruned model and its carried state)."""
        if self.masks is not None:
            raise ConfigError("a model with unstructured masks cannot be replaced by a structurally pruned one")
        self.model = self.precision.prepare(model.to(self.device))
        self.forward_model = self._forward(self.model)
        self.optimizer = optimizer

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resumable(state, self.config, self.seed, self.precision)
        for cb, cb_state in zip(self.callbacks, state.get("callbacks", [])):
            cb.on_load(self, cb_state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        self.images = int(state["images"])
        set_rng_state(state["rng"], self.device)
        if state.get("masks") is not None:
            self.set_masks(Masks(state["masks"], self.masks.meta if self.masks is not None else None))
        for cb, cb_state in zip(self.callbacks, state.get("callbacks", [])):
            cb.load_state_dict(cb_state)

    # -- loop ----------------------------------------------------------------------------------
    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _step(self, x: Any, y: Tensor) -> tuple[Tensor, Tensor, int]:
        with self.precision.autocast(self.device):
            out = self.output_fn(inp.call(self.forward_model, x))
            loss = self.loss_fn(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self._enforce is not None:
            self._enforce()
        if out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
            self.classes = out.shape[1]
            hits = (out.detach().argmax(1) == y).sum().reshape(1)
        else:
            hits = torch.zeros(1, dtype=torch.long, device=self.device)
        return loss.detach().reshape(1), hits, len(y)

    def fit(self) -> TrainResult:
        cfg = self.config
        steps = len(self.train_loader)
        self.model.train()
        self._call("on_fit_start")
        for epoch in range(self.epoch, cfg.epochs):
            if self.stop is not None:  # a resumed run that had already stopped there
                break
            self._call("on_epoch_start", epoch)
            self.train_loader.set_epoch(epoch)
            totals = train_epoch(
                self.train_loader, steps, self._step, self.optimizer, cfg, epoch, 1, self.device,
                lambda i: self._call("on_batch_end", i),
            )
            self.train_seconds += totals.seconds
            self.images += totals.samples
            if not math.isfinite(totals.loss[0]):
                raise TrainingDiverged(f"training loss became {totals.loss[0]} in epoch {epoch + 1}; lower the learning rate")
            metrics = epoch_metrics(epoch, totals)
            self.epoch = epoch + 1
            self.history.append(metrics)
            self._call("on_epoch_end", epoch, metrics)
            if self.stop is not None:
                break
        self._call("on_fit_end")
        result = summarize(self.history, self.train_seconds, self.images)
        result.extra.update(self.precision.as_dict())
        if cfg.compile:
            result.extra["compiled"] = True
        if self.stop is not None:
            result.extra["stopped"] = f"stopped after epoch {self.epoch} of {cfg.epochs}: {self.stop}"
        why = stalled(self.history, self.classes, len(self.train_loader))
        if why is not None:  # a result that is not one: said, and marked for whoever records it
            result.extra["stalled"] = why
            warnings.warn(f"training stalled: {why}", PrunekitWarning, stacklevel=2)
        return result


def _checkpoint_of_epoch(path: Path, epoch: int, device: torch.device) -> dict[str, Any]:
    """The checkpoint (``path`` or its previous one) that rank 0 chose, by its epoch."""
    for candidate in (path, previous(path)):
        if candidate.is_file():
            state = load_checkpoint(candidate, map_location=device)
            if state["epoch"] == epoch:
                return state
    raise CheckpointError(f"rank {rank()} cannot find the checkpoint of epoch {epoch} that rank 0 resumes from")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_loaders(
    dataset: Dataset, config: TrainConfig, device: torch.device, seed: int, dtype: torch.dtype = torch.float32,
    precision: Precision | None = None,
) -> tuple[DeviceLoader, dict[str, DeviceLoader]]:
    """The training loader and the evaluation loaders (``val`` if held out, ``test``), producing ``dtype``
    inputs in ``precision``'s memory format (default: what ``config`` resolves to on ``device``)."""
    info = dataset.info
    train, val = split_dataset(dataset.train, config, seed)
    precision = precision or resolve_precision(config.amp, config.channels_last, device, notice=False)
    channels_last = precision.channels_last
    augment = info.augment if config.augment is None else config.augment
    common: dict[str, Any] = dict(device=device, mean=info.mean, std=info.std, channels_last=channels_last, dtype=dtype)
    train_loader = DeviceLoader(
        train, config.batch_size, shuffle=True, augment=augment, crop_padding=info.crop_padding,
        seed=mix_seed(seed, 0x7EA1), drop_last=drop_last_batch(len(train), config.batch_size, world_size()), shard=(rank(), world_size()),
        **common,
    )
    evals = {}
    if val is not None:
        evals["val"] = DeviceLoader(val, config.eval_batch_size, shuffle=False, **common)
    evals["test"] = DeviceLoader(dataset.test, config.eval_batch_size, shuffle=False, **common)
    return train_loader, evals


def fit(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    masks: Masks | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = None,
    desc: str = "train",
    start_epoch: int = 0,
    precision: Precision | None = None,
) -> TrainResult:
    """Train ``model`` (masked by ``masks``) on ``dataset`` and evaluate it every epoch.

    Args:
        model: the network; moved to ``device``.
        dataset: from :func:`prunekit.data.load_dataset`.
        config: a :class:`TrainConfig` (or ``get_recipe(name).config``).
        masks: pruning masks; pruned weights are exactly 0 after every step.
        device: default CUDA when available, else CPU.
        seed: fixes the validation split, data order, augmentation and dropout.
        checkpoint: file written atomically after every epoch; with ``resume`` an existing one is
            continued (it must come from the same config and seed).
        callbacks: extra callbacks, run after evaluation and before checkpointing.
        progress: show progress bars (default: when stderr is a terminal).
        start_epoch: begin at this epoch, with the learning rate and data order of that epoch
            (training rewound to epoch ``k`` for lottery-ticket rewinding), with a fresh optimizer.
        precision: bf16 autocast and memory format (default: what ``config.amp`` and
            ``config.channels_last`` resolve to on ``device``, :mod:`prunekit.training.precision`).

    Returns:
        :class:`TrainResult` with the per-epoch history, final and best-epoch accuracies and
        training throughput; ``extra`` names the precision and memory format that ran.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    precision = precision or resolve_precision(config.amp, config.channels_last, device)
    precision.prepare(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    train_loader, evals = build_loaders(dataset, config, device, seed, dtype, precision)
    cbs: list[Callback] = [Evaluate(evals, precision), *callbacks]
    if checkpoint is not None and rank() == 0:  # data-parallel: one checkpoint, written by rank 0
        cbs.append(Checkpoint(checkpoint))
    if rank() == 0:  # data-parallel: rank 0 reports for all
        cbs.append(ProgressBar(desc, enabled=progress))
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(mix_seed(seed, 0xD20))
        trainer = Trainer(model, train_loader, config, masks=masks, callbacks=cbs, seed=seed, precision=precision)
        if not 0 <= start_epoch < config.epochs:
            raise ConfigError(f"start_epoch must be in [0, {config.epochs}), got {start_epoch}")
        trainer.epoch = start_epoch
        events: list[str] = []
        if checkpoint is not None and resume:
            # rank 0 decides which checkpoint is sound (damaged ones are set aside) and every rank loads that one
            state: dict[str, Any] | None = None
            if rank() == 0:
                state, events = recover_checkpoint(checkpoint, map_location=device)
            epoch = decided_by_rank0(None if state is None else state["epoch"])
            if epoch is not None:
                trainer.load_state_dict(state if state is not None else _checkpoint_of_epoch(Path(checkpoint), epoch, device))
        result = trainer.fit()
        if events:
            result.extra["recovered"] = events  # an environment event, not the method's: what was set aside
        check_replicas(trainer.model)  # data-parallel: every rank must end with the same weights
        return result
