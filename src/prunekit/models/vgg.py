"""VGG for small images (CIFAR variant): 3x3 convs, 4 max-pools, global average pool, one Linear.

As in GraSP's and open_lth's CIFAR VGGs, there is no final max-pool: the last feature map (2x2 on
32x32 inputs) is average-pooled and a single ``Linear(512, num_classes)`` classifies. ``vggXX_bn``
adds BatchNorm after every convolution (conv biases dropped); ``vggXX`` has none.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .registry import ModelSpec, register_model

CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, depth: int, num_classes: int, input_shape: Sequence[int], batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(v, int)
            layers.append(nn.Conv2d(channels, v, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


for _depth in CONFIGS:
    for _bn in (False, True):
        register_model(
            ModelSpec(
                f"vgg{_depth}{'_bn' if _bn else ''}",
                f"VGG-{_depth} CIFAR variant{' with BatchNorm' if _bn else ' without BatchNorm'}, single Linear head",
                lambda c, s, _d=_depth, _b=_bn: VGG(_d, c, s, _b),
                reference="Simonyan & Zisserman 2015; CIFAR variant of GraSP / open_lth",
            )
        )
