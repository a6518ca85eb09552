"""``seq_tcn``: a temporal conv net over (N, T, F) sequences with LayerNorm over features.

Linear embedding of each step, LayerNorm over the last axis of (N, T, H), a depthwise-separable
temporal conv block with BatchNorm1d over channels (N, H, T), a second LayerNorm, mean over time,
and a classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normserve.models.datasets import WAVE_FREQUENCIES, WAVES_FEATURES
from normserve.models.registry import register

__all__ = ["SeqTCN", "SeqTCNConfig", "seq_tcn"]


@dataclass(frozen=True)
class SeqTCNConfig:
    features: int = WAVES_FEATURES
    hidden: int = 32
    kernel: int = 5
    num_classes: int = len(WAVE_FREQUENCIES)


class SeqTCN(nn.Module):
    """(N, T, features) → (N, num_classes) logits; any T ≥ 1."""

    def __init__(self, config: SeqTCNConfig) -> None:
        super().__init__()
        h = config.hidden
        self.embed = nn.Linear(config.features, h)
        self.norm_in = nn.LayerNorm(h)
        self.temporal = nn.Sequential(
            nn.Conv1d(h, h, config.kernel, padding=config.kernel // 2, groups=h),  # depthwise
            nn.BatchNorm1d(h),
            nn.GELU(),
            nn.Conv1d(h, h, 1, bias=False),  # pointwise
            nn.BatchNorm1d(h),
            nn.GELU(),
        )
        self.norm_out = nn.LayerNorm(h)
        self.head = nn.Linear(h, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_in(self.embed(x))  # (N, T, H)
        y = y + self.temporal(y.transpose(1, 2)).transpose(1, 2)  # (N, T, H)
        return self.head(self.norm_out(y).mean(dim=1))  # (N, num_classes)


@register("seq_tcn", dataset="waves", epochs=15)
def seq_tcn(
    features: int = WAVES_FEATURES, hidden: int = 32, kernel: int = 5, num_classes: int = 4
) -> SeqTCN:
    """Factory for the registry; arguments are the JSON-able ``arch_config``."""
    return SeqTCN(
        SeqTCNConfig(features=features, hidden=hidden, kernel=kernel, num_classes=num_classes)
    )
