"""Training N members stacked: one optimizer step trains them all, each exactly as it would alone.

Each member keeps its own initialisation, mask, validation split, data order, augmentation and seed;
the loss is the sum of the members' mean losses, so each member's gradient is its own. Learning
rate, momentum and weight decay act elementwise, hence per member as alone. After every epoch each
member's state is written as an ordinary single-run checkpoint, so a stacked group can be resumed
stacked, regrouped, or one model at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.masks import Masks
from ..data import Dataset, DeviceLoader
from ..data.loader import mix_seed, normalization, split_indices
from ..errors import ConfigError
from ..training import Callback, TrainConfig, TrainingDiverged, TrainResult, summarize
from ..training.checkpoint import CheckpointError, recover_checkpoint, save_checkpoint
from ..training.core import (
    check_resumable,
    checkpoint_state,
    drop_last_batch,
    epoch_metrics,
    make_optimizer,
    rng_state,
    set_rng_state,
    stalled,
    train_epoch,
)
from ..training.precision import Precision, resolve_precision
from .loader import StackedLoader
from .model import StackedModel


@dataclass
class Member:
    """One network of a stacked group."""

    model: nn.Module
    masks: Masks | None
    seed: int
    checkpoint: Path | None = None
    callbacks: list[Callback] = field(default_factory=list)


class MemberView:
    """What a member's callbacks see: its model (synchronised from the stacked parameters on
    access), its masks, seed, epoch and the shared config, like a single trainer's attributes."""

    def __init__(self, trainer: StackedTrainer, index: int):
        self._trainer = trainer
        self.member = index

    @property
    def model(self) -> nn.Module:
        m = self._trainer.members[self.member]
        m.model.load_state_dict(self._trainer.model.member_state_dict(self.member))
        return m.model

    @property
    def masks(self) -> Masks | None:
        return self._trainer.members[self.member].masks

    @property
    def seed(self) -> int:
        return self._trainer.members[self.member].seed

    @property
    def epoch(self) -> int:
        return self._trainer.epoch

    @property
    def config(self) -> TrainConfig:
        return self._trainer.config

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._trainer.histories[self.member]

    @property
    def train_loader(self) -> Any:
        """The group's loader (its length is each member's steps per epoch)."""
        return self._trainer.train_loader


def checkpoint_epoch(path: Path | None) -> int:
    """The number of finished epochs in a single-run checkpoint (0 when there is none or none is sound:
    damaged ones are set aside, :func:`~prunekit.training.checkpoint.recover_checkpoint`)."""
    if path is None:
        return 0
    state, _ = recover_checkpoint(path)
    return 0 if state is None else int(state["epoch"])


class StackedTrainer:
    """Train ``members`` together on ``dataset`` with ``config`` (see the module docstring)."""

    def __init__(self, members: Sequence[Member], dataset: Dataset, config: TrainConfig, device: torch.device, precision: str | None = None):
        """``precision``: ``fp32`` or ``bf16`` (default: what ``config.amp`` resolves to on ``device``).
        The fused members keep the contiguous layout (their inputs are ``[N, B, C, H, W]``)."""
        if config.compile:
            raise ConfigError("the stacked engine trains eagerly: compile=True runs train one at a time (sweep --stack 1)")
        self.members = list(members)
        self.precision = Precision(precision or resolve_precision(config.amp, False, device).dtype, channels_last=False)
        self.n = len(self.members)
        self.config = config
        self.device = device
        self.dataset = dataset
        info = dataset.info
        images = dataset.train.images.to(device)
        labels = dataset.train.labels.to(device)
        splits = [split_indices(len(dataset.train), config.holdout, m.seed, config.train_subset) for m in self.members]
        augment = info.augment if config.augment is None else config.augment
        dtype = next((p.dtype for p in self.members[0].model.parameters() if p.is_floating_point()), torch.float32)
        scale, shift = normalization(info.mean, info.std, device, dtype)
        n_train = len(splits[0][0])
        self.train_loader = StackedLoader(
            images, labels, [s[0] for s in splits], [mix_seed(m.seed, 0x7EA1) for m in self.members], config.batch_size,
            scale=scale, shift=shift, shuffle=True, augment=augment, crop_padding=info.crop_padding,
            drop_last=drop_last_batch(n_train, config.batch_size), dtype=dtype,
        )
        self.val_loader = None
        val_indices = [s[1] for s in splits]
        if all(v is not None for v in val_indices):
            self.val_loader = StackedLoader(
                images, labels, [v for v in val_indices if v is not None], [0] * self.n, config.eval_batch_size, scale=scale, shift=shift,
                shuffle=False, augment=False, dtype=dtype,
            )
        self.test_loader = DeviceLoader(
            dataset.test, config.eval_batch_size, device=device, mean=info.mean, std=info.std, shuffle=False, dtype=dtype
        )
        self.epoch = 0
        self.histories: list[list[dict[str, Any]]] = [[] for _ in self.members]
        self.train_seconds = 0.0
        self.images = 0
        self.diverged: dict[int, str] = {}
        self.classes: int | None = None
        self._resume()
        self.model = StackedModel([m.model.to(device) for m in self.members]).to(device)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        if self._optimizer_states is not None:
            self._load_optimizer_states(self._optimizer_states)
        self._mask_pairs = self._stack_masks()

    # -- resume ---------------------------------------------------------------------------------
    def _resume(self) -> None:
        states = [recover_checkpoint(m.checkpoint, map_location=self.device)[0] if m.checkpoint else None for m in self.members]
        epochs = {0 if s is None else int(s["epoch"]) for s in states}
        if len(epochs) != 1:
            raise CheckpointError(f"stacked members must resume from the same epoch, got {sorted(epochs)}")
        self._optimizer_states = None
        if states[0] is None:
            return
        loaded = [s for s in states if s is not None]
        for m, s in zip(self.members, loaded):
            check_resumable(s, self.config, m.seed, self.precision)
            m.model.load_state_dict(s["model"])
            if s.get("masks") is not None:
                m.masks = Masks(s["masks"], m.masks.meta if m.masks is not None else None)
        self.epoch = epochs.pop()
        self.histories = [list(s["history"]) for s in loaded]
        self.train_seconds = float(loaded[0]["train_seconds"])
        self.images = int(loaded[0]["images"])
        set_rng_state(loaded[0]["rng"], self.device)
        self._optimizer_states = [s["optimizer"] for s in loaded]

    def _load_optimizer_states(self, states: list[dict[str, Any]]) -> None:
        params = list(self.model.parameters())
        for j, p in enumerate(params):
            per = [s["state"].get(j) for s in states]
            if any(v is None for v in per):
                continue
            entry = {}
            for k, v in per[0].items():
                if isinstance(v, Tensor) and v.dim() > 0 and tuple(v.shape) == tuple(p.shape[1:]):
                    entry[k] = torch.stack([q[k].to(p.device) for q in per])
                else:
                    entry[k] = v
            self.optimizer.state[p] = entry

    def _member_optimizer_state(self, i: int) -> dict[str, Any]:
        params = list(self.model.parameters())
        state: dict[int, dict[str, Any]] = {}
        for j, p in enumerate(params):
            if p not in self.optimizer.state:
                continue
            state[j] = {
                k: (v[i].detach().clone() if isinstance(v, Tensor) and v.dim() > 0 and v.shape == p.shape else v)
                for k, v in self.optimizer.state[p].items()
            }
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(range(len(params)))} for g in self.optimizer.param_groups]
        return {"state": state, "param_groups": groups}

    def _stack_masks(self) -> list[tuple[Tensor, Tensor]]:
        names = sorted({n for m in self.members if m.masks is not None for n in m.masks}, key=self.model.param_names.index)
        pairs: list[tuple[Tensor, Tensor]] = []
        for name in names:
            p = self.model.stacked_parameter(name)
            rows = [m.masks[name] if m.masks is not None and name in m.masks else torch.ones(p.shape[1:], dtype=torch.bool) for m in self.members]
            pairs.append((p, torch.stack(rows).to(device=p.device, dtype=p.dtype)))
        return pairs

    def _enforce(self) -> None:
        if self._mask_pairs:
            with torch.no_grad():
                torch._foreach_mul_([p for p, _ in self._mask_pairs], [m for _, m in self._mask_pairs])

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, loader: Any, shared: bool) -> tuple[list[float], list[float]]:
        self.model.eval()
        correct = torch.zeros(self.n, dtype=torch.long, device=self.device)
        loss = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        count = 0
        with self.precision.autocast(self.device):
            for x, y in loader:
                out = self.model(x, shared=shared).float()
                yy = y.expand(self.n, -1) if shared else y
                loss += F.cross_entropy(out.flatten(0, 1), yy.reshape(-1), reduction="none").view(self.n, -1).sum(1).double()
                correct += (out.argmax(-1) == yy).sum(1)
                count += yy.shape[1]
        self.model.train()
        return (correct.double() / count).tolist(), (loss / count).tolist()

    # -- loop -------------------------------------------------------------------------------------
    def _step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        with self.precision.autocast(self.device):
            out = self.model(x)
            losses = F.cross_entropy(out.flatten(0, 1), y.reshape(-1), reduction="none").view(self.n, -1).mean(1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        self._enforce()
        self.classes = out.shape[-1]
        return losses.detach(), (out.detach().argmax(-1) == y).sum(1), y.shape[1]

    def _call(self, views: list[MemberView], hook: str, *args: Any) -> None:
        """Every member's callbacks, with the member's view standing for its trainer (the hooks and
        order of :class:`~prunekit.training.Trainer`: the same callbacks work in both)."""
        for view, member in zip(views, self.members):
            for cb in member.callbacks:
                getattr(cb, hook)(view, *args)

    def fit(self, progress: bool = False, desc: str = "stacked") -> list[TrainResult | TrainingDiverged]:
        cfg = self.config
        steps = len(self.train_loader)
        self.model.train()
        self._enforce()
        views = [MemberView(self, k) for k in range(self.n)]
        bar = tqdm(total=cfg.epochs, initial=self.epoch, desc=f"{desc} x{self.n}", unit="ep", disable=not progress, leave=False)
        self._call(views, "on_fit_start")
        for epoch in range(self.epoch, cfg.epochs):
            self._call(views, "on_epoch_start", epoch)
            self.train_loader.set_epoch(epoch)
            totals = train_epoch(self.train_loader, steps, self._step, self.optimizer, cfg, epoch, self.n, self.device,
                                 lambda i: self._call(views, "on_batch_end", i))
            self.train_seconds += totals.seconds
            self.images += totals.samples
            self.epoch = epoch + 1
            test_acc, test_loss = self._evaluate(self.test_loader, True)
            val = self._evaluate(self.val_loader, False) if self.val_loader is not None else None
            for k, member in enumerate(self.members):
                metrics = {**epoch_metrics(epoch, totals, k), "stacked": self.n}
                if val is not None:
                    metrics["val_acc"], metrics["val_loss"] = val[0][k], val[1][k]
                metrics["test_acc"], metrics["test_loss"] = test_acc[k], test_loss[k]
                if not math.isfinite(totals.loss[k]) and k not in self.diverged:
                    self.diverged[k] = f"training loss became {totals.loss[k]} in epoch {epoch + 1}; lower the learning rate"
                self.histories[k].append(metrics)
                for cb in member.callbacks:
                    cb.on_epoch_end(views[k], epoch, metrics)  # type: ignore[arg-type]  # a member's view stands for its trainer
                if member.checkpoint is not None:
                    save_checkpoint(self.member_checkpoint(k), member.checkpoint)
            bar.set_postfix_str(f"test acc {sum(test_acc) / self.n:.4f} (mean)")
            bar.update(1)
        self._call(views, "on_fit_end")
        bar.close()
        results: list[TrainResult | TrainingDiverged] = []
        for k, member in enumerate(self.members):
            member.model.load_state_dict(self.model.member_state_dict(k))
            if k in self.diverged:
                results.append(TrainingDiverged(self.diverged[k]))
            else:
                res = summarize(self.histories[k], self.train_seconds, self.images)
                res.extra["stacked"] = self.n
                res.extra["model_images_per_second"] = self.n * res.images_per_second
                res.extra.update(self.precision.as_dict())
                why = stalled(self.histories[k], self.classes, len(self.train_loader))
                if why is not None:
                    res.extra["stalled"] = why
                results.append(res)
        return results

    def member_checkpoint(self, i: int) -> dict[str, Any]:
        """Member ``i``'s state in the single-run checkpoint format (resumable alone or stacked)."""
        return checkpoint_state(
            epoch=self.epoch, model=self.model.member_state_dict(i), optimizer=self._member_optimizer_state(i),
            history=self.histories[i], rng=rng_state(self.device), train_seconds=self.train_seconds, images=self.images,
            config=self.config, seed=self.members[i].seed, masks=self.members[i].masks, callbacks=[], precision=self.precision,
        )
