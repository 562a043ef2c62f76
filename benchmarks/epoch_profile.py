"""Where one training epoch's time goes: the training steps against everything around them.

    python benchmarks/epoch_profile.py --threads 2                      # ResNet-20, full CIFAR-10-jpg, cifar-cpu
    python benchmarks/epoch_profile.py --model lenet5 --dataset fashion-mnist --recipe lenet-fmnist

One epoch of ``prunekit.training.Trainer`` with the recipe's config, the default precision of the
device and a 90 % random mask (enforced after every step, as in a pruned run), instrumented from
the outside: the time spent producing batches (gather, crop, flip, normalise, memory format), in
the training steps (forward, backward, optimizer; measured as the rest of the step loop), in mask
enforcement, in evaluation and in writing the checkpoint. The first epoch is a warm-up (oneDNN
builds its kernels); the second is reported.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

import prunekit
from prunekit import data, models, training
from prunekit.training.precision import resolve_precision
from prunekit.training.trainer import Trainer, build_loaders


class TimedLoader:
    """The trainer's loader, with the time spent producing each batch added up."""

    def __init__(self, loader: Any):
        self.loader, self.seconds = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield batch


class Timed(training.Callback):
    """A callback whose epoch-end work is timed."""

    def __init__(self, inner: training.Callback):
        self.inner, self.seconds = inner, 0.0

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        start = time.perf_counter()
        self.inner.on_epoch_end(trainer, epoch, metrics)
        self.seconds += time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--dataset", default="cifar10-jpg")
    ap.add_argument("--data-dir", default=".data/cifar10-jpg.tar.gz")
    ap.add_argument("--recipe", default="cifar-cpu")
    ap.add_argument("--subset", type=int, default=None, help="training images (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ds = data.load_dataset(args.dataset, args.data_dir if args.dataset == "cifar10-jpg" else None)
    if args.subset:
        ds = data.Dataset(ds.info, ds.train.subset(torch.arange(args.subset)), ds.test, ds.source)
    cfg = training.get_recipe(args.recipe).config
    cfg = training.TrainConfig(**{**prunekit.options.as_dict(cfg), "milestones": tuple(cfg.milestones), "epochs": 2})
    precision = resolve_precision(cfg.amp, cfg.channels_last, device)
    model = precision.prepare(models.create(args.model, ds.num_classes, ds.input_shape, seed=0))
    masks = prunekit.prune(model, "random", 0.9, seed=0)
    train_loader, evals = build_loaders(ds, cfg, device, 0, precision=precision)
    loader = TimedLoader(train_loader)
    with tempfile.TemporaryDirectory() as tmp:
        evaluate = Timed(training.Evaluate(evals, precision))
        checkpoint = Timed(training.Checkpoint(Path(tmp) / "c.pt"))
        trainer = Trainer(model, loader, cfg, masks=masks, callbacks=[evaluate, checkpoint], precision=precision)
        enforce, enforce_seconds = trainer._enforce, [0.0]

        def timed_enforce() -> None:
            start = time.perf_counter()
            enforce()
            enforce_seconds[0] += time.perf_counter() - start

        trainer._enforce = timed_enforce
        trainer.config = training.TrainConfig(**{**prunekit.options.as_dict(cfg), "milestones": tuple(cfg.milestones), "epochs": 1})
        trainer.fit()  # warm-up epoch
        loader.seconds = evaluate.seconds = checkpoint.seconds = enforce_seconds[0] = 0.0
        trainer.config = cfg
        start = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - start
    loop = trainer.history[-1]["epoch_seconds"]
    parts = {
        "training steps (forward, backward, optimizer)": loop - loader.seconds - enforce_seconds[0],
        "mask enforcement": enforce_seconds[0],
        "batches (gather, crop, flip, normalise)": loader.seconds,
        "evaluation (test set)": evaluate.seconds,
        "checkpoint": checkpoint.seconds,
    }
    parts["other (callbacks, bookkeeping)"] = wall - sum(parts.values())
    print(f"{args.model} on {args.dataset} ({len(ds.train):,} training, {len(ds.test):,} test images), recipe {args.recipe}, "
          f"{precision.dtype} + {precision.memory_format}, CPU ({platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, {date.today()}: epoch {wall:.1f} s\n")
    print("| part | seconds | share of the epoch |\n|---|---:|---:|")
    for name, sec in parts.items():
        print(f"| {name} | {sec:.2f} | {sec / wall:.1%} |")
    outside = wall - parts["training steps (forward, backward, optimizer)"]
    print(f"\noutside the training steps: {outside:.2f} s = {outside / wall:.1%} of the epoch")


if __name__ == "__main__":
    main()
