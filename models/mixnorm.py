"""``mixnorm``: a small 3x32x32 classifier mixing every per-sample normalization.

InstanceNorm (per-sample statistics, affine), GroupNorm, a BatchNorm (which the exporter folds)
and LayerNorm over the pooled features. Per-sample norms cannot be folded: they stay in the ONNX
graph as InstanceNormalization (GroupNorm is exported through it too) and LayerNormalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normserve.models.datasets import SHAPES
from normserve.models.layers import Normalize
from normserve.models.registry import register
from normserve.models.resnet_cifar import PIXEL_MEAN, PIXEL_STD

__all__ = ["MixNorm", "MixNormConfig", "mixnorm"]


@dataclass(frozen=True)
class MixNormConfig:
    channels: tuple[int, int, int] = (16, 32, 32)
    groups: int = 4
    hidden: int = 64
    num_classes: int = len(SHAPES)


class MixNorm(nn.Module):
    """(N, 3, 32, 32) pixels in 0..1 → (N, num_classes) logits."""

    def __init__(self, config: MixNormConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.channels
        self.normalize = Normalize(PIXEL_MEAN, PIXEL_STD)
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1),  # (N, c1, 16, 16)
            nn.InstanceNorm2d(c1, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),  # (N, c2, 8, 8)
            nn.GroupNorm(config.groups, c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False),  # (N, c3, 8, 8)
            nn.BatchNorm2d(c3),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, c3)
        )
        self.head = nn.Sequential(
            nn.Linear(c3, config.hidden),
            nn.LayerNorm(config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


@register("mixnorm", dataset="shapes32", epochs=4)
def mixnorm(
    channels: tuple[int, int, int] | list[int] = (16, 32, 32),
    groups: int = 4,
    hidden: int = 64,
    num_classes: int = 6,
) -> MixNorm:
    """Factory for the registry; arguments are the JSON-able ``arch_config``."""
    c1, c2, c3 = channels
    return MixNorm(
        MixNormConfig(channels=(c1, c2, c3), groups=groups, hidden=hidden, num_classes=num_classes)
    )
