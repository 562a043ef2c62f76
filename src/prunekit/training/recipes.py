"""Named training recipes: the published settings of each paper (``../methods.md`` section 11.4).

A recipe is a :class:`TrainConfig` plus the model initialisation and which accuracy its paper
reports. ``--epochs`` (or ``replace(recipe.config, epochs=...)``) shortens a recipe; milestones are
fractions of the run, so the schedule keeps its shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError, unknown
from .config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    config: TrainConfig
    model: str
    dataset: str
    init: str = "kaiming_normal"
    bn_gamma: str = "ones"
    headline: str = "final"  # which test accuracy the paper reports: "final" or "best" (best epoch)
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def config_for(self, model: str) -> TrainConfig:
        """The config with this recipe's per-model overrides (e.g. GraSP's weight decay for ResNet-32)."""
        return replace(self.config, **self.model_overrides.get(model, {}))


_CIFAR_160: dict[str, Any] = dict(epochs=160, batch_size=128, lr=0.1, momentum=0.9, schedule="multistep", milestones=(0.5, 0.75), gamma=0.1)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "lenet-fmnist",
            "LeNet-5 on Fashion-MNIST, 20 epochs cosine after a 1-epoch warm-up (prunekit's CPU default)",
            # the warm-up: without it the first steps at lr 0.05 with momentum kill every ReLU of some
            # initialisations (seeds 3 and 4: loss ln 10 from the first epoch to the last)
            TrainConfig(epochs=20, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", val_size=5000,
                        warmup_epochs=1.0),
            "lenet5",
            "fashion-mnist",
            source="prunekit (SNIP's LeNet recipe shortened for 2 CPU cores)",
        ),
        Recipe(
            "cifar-cpu",
            "ResNet-20 on all 50,000 CIFAR-10 images in minutes on 2 CPU cores (bf16): 15 epochs, "
            "SGD Nesterov lr 0.1, 1 warm-up epoch then cosine, wd 5e-4, batch 128, crop + flip",
            TrainConfig(
                epochs=15, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
                warmup_epochs=1.0,
            ),
            "resnet20",
            "cifar10",
            source="prunekit (open_lth's ResNet-20 recipe compressed to 15 epochs for the CPU)",
        ),
        Recipe(
            "openlth-mnist",
            "open_lth LeNet-300-100: SGD lr 0.1, no momentum, batch 128, 40 epochs",
            TrainConfig(epochs=40, batch_size=128, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", val_size=5000),
            "lenet_300_100",
            "mnist",
            source="facebookresearch/open_lth mnist_lenet_300_100",
        ),
        Recipe(
            "snip-mnist",
            "SNIP (mil-ad/snip) LeNet-5-Caffe: SGD m 0.9, lr 0.1 x0.1 every 30k it, wd 5e-4, batch 100, 250 epochs",
            TrainConfig(
                epochs=250, batch_size=100, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="multistep",
                milestones=(0.2, 0.4, 0.6, 0.8), val_size=0.1,
            ),
            "lenet5",
            "mnist",
            source="mil-ad/snip (PyTorch SNIP)",
        ),
        Recipe(
            "openlth-cifar",
            "open_lth ResNet-20/VGG-16: 160 epochs, lr 0.1 x0.1 @80,120, wd 1e-4, BN gamma ~ U[0,1]",
            TrainConfig(**_CIFAR_160, weight_decay=1e-4),
            "resnet20",
            "cifar10",
            bn_gamma="uniform",
            source="facebookresearch/open_lth cifar_resnet_20 / cifar_vgg_16",
        ),
        Recipe(
            "grasp-cifar",
            "GraSP VGG19-BN / ResNet32-2x: 160 epochs, lr 0.1 x0.1 @80,120, wd 5e-4 (1e-4 ResNet), best-epoch accuracy",
            TrainConfig(**_CIFAR_160, weight_decay=5e-4),
            "vgg19_bn",
            "cifar10",
            init="grasp",
            headline="best",
            model_overrides={"resnet32": {"weight_decay": 1e-4}},
            model_kwargs={"resnet32": {"width": 2}},
            source="alecwangcq/GraSP configs",
        ),
        Recipe(
            "synflow-cifar",
            "SynFlow VGG-16-BN: 160 epochs, Nesterov, lr 0.1 x0.1 @60,120, wd 1e-4",
            TrainConfig(**{**_CIFAR_160, "milestones": (0.375, 0.75)}, nesterov=True, weight_decay=1e-4),
            "vgg16_bn",
            "cifar10",
            source="ganguli-lab/Synaptic-Flow args.json",
        ),
        Recipe(
            "force-cifar",
            "FORCE ResNet-50/VGG-19: 350 epochs, lr 0.1 x0.1 @150,250, wd 5e-4, 10% validation",
            TrainConfig(
                epochs=350, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="multistep",
                milestones=(150 / 350, 250 / 350), val_size=0.1,
            ),
            "resnet50",
            "cifar10",
            source="naver/force",
        ),
        Recipe(
            "prospr-cifar",
            "ProsPr ResNet-20 (option-A shortcuts): 200 epochs, lr 0.1 x0.1 @50%,75%, batch 256, wd 5e-4",
            TrainConfig(epochs=200, batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="multistep", milestones=(0.5, 0.75)),
            "resnet20",
            "cifar10",
            model_kwargs={"resnet20": {"shortcut": "A"}},
            source="mil-ad/prospr",
        ),
    ]
}


# datasets a recipe written for one of them suits (same images, sizes and classes)
DATASET_FAMILIES = {"mnist": ("mnist", "fashion-mnist"), "fashion-mnist": ("fashion-mnist", "mnist"),
                    "cifar10": ("cifar10", "cifar10-jpg"), "cifar10-jpg": ("cifar10-jpg", "cifar10"), "cifar100": ("cifar100",)}
# the recipe of a dataset family when no recipe names the model: prunekit's CPU-sized ones
FAMILY_DEFAULTS = {"mnist": "lenet-fmnist", "fashion-mnist": "lenet-fmnist", "cifar10": "cifar-cpu", "cifar10-jpg": "cifar-cpu",
                   "cifar100": "cifar-cpu"}


def default_recipe(model: str, dataset: str) -> Recipe:
    """The recipe for ``model`` on ``dataset`` when none is named: the first recipe written for this
    model on this dataset, then on its family (e.g. CIFAR-10 for CIFAR-10-jpg), then the family's
    CPU-sized default (``lenet-fmnist`` for MNIST-like data, ``cifar-cpu`` for CIFAR).

    Raises:
        ConfigError: no recipe suits the dataset (name one with ``recipe=``).
    """
    family = DATASET_FAMILIES.get(dataset, (dataset,))
    for wanted in family:
        for r in RECIPES.values():
            if r.dataset == wanted and (r.model == model or model in r.model_overrides or model in r.model_kwargs):
                return r
    if dataset in FAMILY_DEFAULTS:
        return RECIPES[FAMILY_DEFAULTS[dataset]]
    raise ConfigError(f"no recipe is written for dataset {dataset!r}; name one (recipe=, --recipe): {', '.join(RECIPES)}")


def list_recipes() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise unknown("recipe", name, RECIPES)
    return RECIPES[name]
