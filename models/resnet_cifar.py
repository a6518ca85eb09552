"""``resnet_cifar``: the CIFAR-size ResNet of He et al. (2016), for 3x32x32 images.

A 3x3 stem, then one stage per width of ``blocks`` basic blocks (conv-BN-ReLU-conv-BN plus a
shortcut, then ReLU); each stage after the first halves the resolution, and its first block's
shortcut is a strided 1x1 conv + BN. ``widths=(16, 32, 64), blocks=3`` is ResNet-20; the default
``blocks=1`` (ResNet-8) trains in minutes on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normserve.models.datasets import SHAPES
from normserve.models.layers import Normalize
from normserve.models.registry import register

__all__ = ["BasicBlock", "ResNetCifar", "ResNetCifarConfig", "resnet_cifar"]

# Pixel values of the generated shapes32 images lie in 0..1 with mean ~0.5 and std ~0.34.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.34, 0.34, 0.34)


@dataclass(frozen=True)
class ResNetCifarConfig:
    widths: tuple[int, ...] = (16, 32, 64)
    blocks: int = 1
    num_classes: int = len(SHAPES)


class BasicBlock(nn.Module):
    """(N, c_in, H, W) → (N, c_out, H / stride, W / stride)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNetCifar(nn.Module):
    """(N, 3, 32, 32) pixels in 0..1 → (N, num_classes) logits."""

    def __init__(self, config: ResNetCifarConfig) -> None:
        super().__init__()
        if not config.widths or config.blocks < 1:
            raise ValueError("resnet_cifar needs at least one width and one block per stage")
        first = config.widths[0]
        self.normalize = Normalize(PIXEL_MEAN, PIXEL_STD)
        self.stem = nn.Sequential(
            nn.Conv2d(3, first, 3, padding=1, bias=False),
            nn.BatchNorm2d(first),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c_in = first
        for i, width in enumerate(config.widths):
            for j in range(config.blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stages(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(y), 1))  # (N, num_classes)


@register("resnet_cifar", dataset="shapes32", epochs=4)
def resnet_cifar(
    widths: tuple[int, ...] | list[int] = (16, 32, 64), blocks: int = 1, num_classes: int = 6
) -> ResNetCifar:
    """Factory for the registry; arguments are the JSON-able ``arch_config``."""
    return ResNetCifar(
        ResNetCifarConfig(widths=tuple(widths), blocks=blocks, num_classes=num_classes)
    )
