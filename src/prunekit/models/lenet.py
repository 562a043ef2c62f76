"""LeNets and the Conv-2/4/6 networks of the lottery-ticket paper."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .registry import ModelSpec, flat_features, register_model


class Classifier(nn.Module):
    """``features`` -> flatten -> ``classifier``."""

    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def lenet_300_100(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """LeNet-300-100: fully connected 300-100 with ReLU (266,200 weights on 28x28 inputs)."""
    return Classifier(nn.Identity(), _mlp([math.prod(input_shape), 300, 100, num_classes]))


def lenet5(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """LeNet-5, Caffe variant: conv 20 (5x5), pool, conv 50 (5x5), pool, FC 500, FC (430,500 weights on 28x28)."""
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 20, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )
    return Classifier(features, _mlp([flat_features(features, input_shape), 500, num_classes]))


def conv_n(num_classes: int, input_shape: Sequence[int], stages: int) -> nn.Module:
    """Conv-2/4/6 (Frankle & Carbin 2019): pairs of 3x3 convs (64, 128, 256) with max-pooling, FC 256-256."""
    layers: list[nn.Module] = []
    channels = input_shape[0]
    for width in (64, 128, 256)[:stages]:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = width
    features = nn.Sequential(*layers)
    return Classifier(features, _mlp([flat_features(features, input_shape), 256, 256, num_classes]))


register_model(ModelSpec("lenet_300_100", "fully connected 300-100 (LeCun et al. 1998)", lenet_300_100))
register_model(ModelSpec("lenet5", "LeNet-5 Caffe variant, conv 20-50, FC 500", lenet5))
for _n, _stages in (("conv2", 1), ("conv4", 2), ("conv6", 3)):
    register_model(
        ModelSpec(
            _n,
            f"Conv-{2 * _stages} of the lottery-ticket paper",
            lambda c, s, _k=_stages: conv_n(c, s, _k),
            reference="Frankle & Carbin, ICLR 2019",
        )
    )
