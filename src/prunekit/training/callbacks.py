"""Callbacks of the training loop: evaluation, checkpointing, progress, logging.

The loop itself only trains; everything else hooks in here, in the order given (evaluation first, so
that later callbacks see the epoch's metrics). An early-pruning method hooks in the same way and may
call ``trainer.set_masks(...)`` at the end of an epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..console import ProgressLines
from ..errors import ConfigError
from .checkpoint import save_checkpoint
from .precision import Precision

if TYPE_CHECKING:
    from .trainer import Trainer


class Callback:
    """Base class: override any hook."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_batch_end(self, trainer: Trainer, step: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}

    def on_load(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """Called when a checkpoint is resumed, *before* its weights are loaded: a callback that
        changed the architecture (structured pruning) rebuilds it here so the weights fit."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, precision: Precision | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``loader`` (one host sync at the end), in
    ``precision`` (the training's; default fp32)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with (precision or Precision()).autocast(device):
        for x, y in loader:
            out = model(x)
            loss += F.cross_entropy(out.float(), y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            count += len(y)
    model.train(was_training)
    return {"acc": correct.item() / count, "loss": loss.item() / count}


class Evaluate(Callback):
    """Evaluate on named loaders (``test``, ``val``) at the end of every epoch."""

    def __init__(self, loaders: dict[str, Any], precision: Precision | None = None):
        self.loaders = loaders
        self.precision = precision

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        for name, loader in self.loaders.items():
            for key, value in evaluate(trainer.model, loader, self.precision).items():
                metrics[f"{name}_{key}"] = value


class StopAfter(Callback):
    """End training after epoch ``epochs`` (counted from 1) for the reason ``why`` (the result's
    ``extra["stopped"]`` says it, with the epoch)."""

    def __init__(self, epochs: int, why: str):
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        self.epochs = epochs
        self.why = why

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.epoch >= self.epochs:
            trainer.stop = self.why

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if epoch + 1 >= self.epochs:
            trainer.stop = self.why


class Checkpoint(Callback):
    """Save the complete training state atomically, with its checksum, at the end of every epoch
    (the previous one kept beside it, :func:`~prunekit.training.checkpoint.save_checkpoint`)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        save_checkpoint(trainer.state_dict(), self.path)


class ProgressBar(Callback):
    """A tqdm bar over epochs (and one over batches) showing loss and accuracy when stderr is a
    terminal; otherwise (a log file, CI) plain lines with a time estimate on the ``prunekit`` logger
    (level INFO: the command line shows it; a library caller configures it): one per finished epoch,
    and one every 10 s of work inside a long epoch."""

    def __init__(self, desc: str = "train", enabled: bool | None = None, position: int = 0):
        self.desc = desc
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.lines = not self.enabled and not sys.stderr.isatty()
        self.position = position
        self.bar: Any = None
        self.inner: Any = None
        self._done = 0
        self._start = 0.0
        self._lines: ProgressLines | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self._start = time.perf_counter()
        self._first_epoch = trainer.epoch
        self.bar = tqdm(
            total=trainer.config.epochs, initial=trainer.epoch, desc=self.desc, unit="ep",
            disable=not self.enabled, position=self.position, leave=False, dynamic_ncols=True,
        )

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.inner = tqdm(total=len(trainer.train_loader), desc=f"epoch {epoch + 1}", unit="batch",
                          disable=not self.enabled, position=self.position + 1, leave=False, dynamic_ncols=True)
        if self.lines:
            self._lines = ProgressLines(f"{self.desc}: epoch {epoch + 1}/{trainer.config.epochs}", len(trainer.train_loader), "batches")

    def on_batch_end(self, trainer: Trainer, step: int) -> None:
        if self.inner is not None and (step + 1) % 20 == 0:
            self.inner.update(step + 1 - self.inner.n)
        if self.lines and self._lines is not None:
            self._lines.update(step + 1)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.update(self.inner.total - self.inner.n)
            self.inner.close()
        shown = {k: f"{v:.4f}" for k, v in metrics.items() if k in ("train_loss", "test_acc", "val_acc")}
        self.bar.set_postfix(shown)
        self.bar.update(1)
        if self.lines:
            total = trainer.config.epochs
            done = epoch + 1 - self._first_epoch
            elapsed = time.perf_counter() - self._start
            left = elapsed / max(1, done) * (total - epoch - 1)
            acc = f", test acc {100 * metrics['test_acc']:.2f} %" if "test_acc" in metrics else ""
            logging.getLogger("prunekit").info(
                "%s: epoch %d/%d, train loss %.4f%s, %.0f s (about %.0f s left)",
                self.desc, epoch + 1, total, metrics.get("train_loss", float("nan")), acc, metrics.get("epoch_seconds", 0.0), left,
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class JsonlLog(Callback):
    """Append one JSON line of metrics per epoch to a file."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")


class LambdaCallback(Callback):
    """Wrap a function ``fn(trainer, epoch, metrics)`` as an epoch-end callback."""

    def __init__(self, fn: Any):
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        self.fn(trainer, epoch, metrics)


class TensorBoardLog(Callback):
    """Write every epoch's metrics (losses, accuracies, learning rate, throughput) to TensorBoard,
    next to the results database: ``tensorboard --logdir DIR``. Needs the ``tensorboard`` package."""

    def __init__(self, log_dir: str | os.PathLike[str]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("TensorBoardLog needs TensorBoard: pip install 'prunekit[logging]' (or tensorboard)") from None
        self.writer = SummaryWriter(str(log_dir))

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        for name, value in _numeric(metrics).items():
            self.writer.add_scalar(name, value, global_step=epoch + 1)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.writer.close()


class MLflowLog(Callback):
    """Log every epoch's metrics to the active MLflow run (``mlflow.start_run()`` first, or one is
    started), with the training configuration as parameters. Needs the ``mlflow`` package."""

    def __init__(self) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError("MLflowLog needs MLflow: pip install 'prunekit[mlflow]' (or mlflow)") from None
        self.mlflow = mlflow

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.mlflow.active_run() is None:
            self.mlflow.start_run()
        self.mlflow.log_params({k: str(v) for k, v in dataclasses.asdict(trainer.config).items()})

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        self.mlflow.log_metrics(_numeric(metrics), step=epoch + 1)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
