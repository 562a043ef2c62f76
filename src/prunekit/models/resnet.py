"""Residual networks: CIFAR ResNets (6n+2), ResNet-18/50 with a CIFAR stem, WRN-28-10."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import ModelSpec, register_model


class ShortcutA(nn.Module):
    """Parameter-free shortcut: stride-2 subsampling and zero channel padding (He et al. option A)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = planes - in_planes

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def _shortcut(in_planes: int, out_planes: int, stride: int, kind: str) -> nn.Module:
    """Identity when shapes match; else zero padding ("A") or a 1x1 conv + BN projection ("B")."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(in_planes, out_planes, stride)
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride, shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv 3x3 -> stages of blocks -> global average pool -> Linear."""

    def __init__(
        self,
        block: type[nn.Module],
        blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        in_channels: int,
        shortcut: str = "B",
    ):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ConfigError(f"shortcut must be 'A' (zero padding) or 'B' (1x1 conv projection), got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_planes = widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(in_planes, width, stride, shortcut))
                in_planes = width * block.expansion  # type: ignore[attr-defined]
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.layers(out)).flatten(1))


def cifar_resnet(depth: int, num_classes: int, input_shape: Sequence[int], width: int = 1, shortcut: str = "B") -> nn.Module:
    """CIFAR ResNet of depth 6n+2 with widths (16, 32, 64) x ``width``.

    ``resnet32`` with ``width=2`` (widths 32/64/128, projection shortcuts) is GraSP's ResNet32-2x;
    ``shortcut="A"`` gives the original parameter-free shortcuts (used by ProsPr).
    """
    if (depth - 2) % 6:
        raise ConfigError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"width must be a positive integer multiplier, got {width!r}")
    return ResNet(BasicBlock, [n, n, n], [16 * width, 32 * width, 64 * width], num_classes, input_shape[0], shortcut)


class WideBlock(nn.Module):
    """Pre-activation wide-ResNet block (BN-ReLU-conv x2, optional dropout between)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module = (
            nn.Identity() if stride == 1 and in_planes == planes else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return out + short


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: int, num_classes: int, in_channels: int, dropout: float = 0.0):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks = []
        in_planes = widths[0]
        for i, width in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(in_planes, width, 2 if (i > 0 and j == 0) else 1, dropout))
                in_planes = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(self.pool(out).flatten(1))


for _depth in (20, 32, 44, 56, 110):
    register_model(
        ModelSpec(
            f"resnet{_depth}",
            f"CIFAR ResNet-{_depth} (widths 16/32/64 x width, projection shortcuts)",
            lambda c, s, _d=_depth, **kw: cifar_resnet(_d, c, s, **kw),
            reference="He et al. 2016; open_lth, GraSP (width=2 for ResNet32-2x)",
        )
    )
register_model(
    ModelSpec(
        "resnet18",
        "ResNet-18 with a CIFAR stem (3x3 conv, no max-pool)",
        lambda c, s, shortcut="B": ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], c, s[0], shortcut),
    )
)
register_model(
    ModelSpec(
        "resnet50",
        "ResNet-50 (bottleneck) with a CIFAR stem (3x3 conv, no max-pool)",
        lambda c, s, shortcut="B": ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], c, s[0], shortcut),
    )
)
register_model(
    ModelSpec(
        "wrn_28_10",
        "Wide ResNet 28-10 (pre-activation, widths 160/320/640)",
        lambda c, s, dropout=0.0: WideResNet(28, 10, c, s[0], dropout),
        reference="Zagoruyko & Komodakis 2016",
    )
)
