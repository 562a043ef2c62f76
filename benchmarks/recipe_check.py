"""Does every recipe train every seed of its dense model? The first epochs of each recipe's default
model on 5 seeds, on a seeded subset of the training set, with the recipe's own learning rate and
warm-up (the schedule of the full run, cut after ``--epochs``).

    python benchmarks/recipe_check.py --threads 2 --data-dir .data/cifar10-jpg.tar.gz
    python benchmarks/recipe_check.py --recipes lenet-fmnist --seeds 0,1,2,3,4 --subset 60000

A seed whose training loss has not left chance level (``ln`` of the classes) after these epochs is
what the ``lenet-fmnist`` recipe did to seeds 3 and 4 before its warm-up (every ReLU dead after the
first steps). Prints one row per recipe: the training loss after the last epoch per seed, and the
seeds stuck at chance.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
from dataclasses import replace
from datetime import date

import torch

from prunekit import data, models, training
from prunekit.training.recipes import DATASET_FAMILIES

FAMILY_DATA = {"cifar10": "cifar10-jpg", "mnist": "fashion-mnist"}  # the data this machine has for each family


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(training.list_recipes()))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--subset", type=int, default=5000, help="training images (a seeded subset)")
    ap.add_argument("--data-dir", default=".data/cifar10-jpg.tar.gz", help="CIFAR-10-jpg")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.epochs} epoch(s) of {args.subset:,} images per seed, CPU ({platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, {date.today()}\n")
    print("| recipe | model | dataset | training loss after the epochs, per seed | chance (ln C) | stuck at chance |")
    print("|---|---|---|---|---:|---|")
    for name in args.recipes.split(","):
        recipe = training.get_recipe(name)
        dataset = FAMILY_DATA.get(recipe.dataset, recipe.dataset)
        assert dataset in DATASET_FAMILIES.get(recipe.dataset, (recipe.dataset,))
        ds = data.load_dataset(dataset, args.data_dir if dataset == "cifar10-jpg" else None)
        losses, stuck = [], []
        for seed in seeds:
            cfg = replace(recipe.config_for(recipe.model), train_subset=min(args.subset, len(ds.train) - 1000), val_size=1000)
            model = models.create(recipe.model, ds.num_classes, ds.input_shape, init=recipe.init, bn_gamma=recipe.bn_gamma, seed=seed,
                                  **recipe.model_kwargs.get(recipe.model, {}))
            checked = _first_epochs(model, ds, cfg, seed, args.epochs)
            losses.append(checked)
            if checked >= 0.97 * math.log(ds.num_classes):
                stuck.append(seed)
        print(f"| {name} | {recipe.model} | {dataset} | {' / '.join(f'{v:.3f}' for v in losses)} | {math.log(ds.num_classes):.3f} | "
              f"{', '.join(map(str, stuck)) or 'none'} |", flush=True)


def _first_epochs(model: torch.nn.Module, ds: data.Dataset, cfg: training.TrainConfig, seed: int, epochs: int) -> float:
    """The training loss after the first ``epochs`` epochs of the full schedule (its learning rates and warm-up)."""
    stop = _StopAfter(epochs)
    with contextlib.suppress(_Stopped):
        training.fit(model, ds, cfg, seed=seed, progress=False, callbacks=[stop])
    return stop.loss


class _Stopped(Exception):
    pass


class _StopAfter(training.Callback):
    def __init__(self, epochs: int):
        self.epochs, self.loss = epochs, float("nan")

    def on_epoch_end(self, trainer, epoch, metrics):  # type: ignore[no-untyped-def]
        self.loss = metrics["train_loss"]
        if epoch + 1 >= self.epochs:
            raise _Stopped


if __name__ == "__main__":
    main()
