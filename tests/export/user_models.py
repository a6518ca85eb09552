"""A user's own architectures, importable as ``tests.export.user_models:<factory>``."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """(N, 3, 8, 8) → (N, classes): conv-BN-ReLU, a BN before a 1x1 conv, linear-BN head."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.bn2 = nn.BatchNorm2d(width)
        self.proj = nn.Conv2d(width, width, 1)
        self.fc = nn.Linear(width, classes)
        self.bn3 = nn.BatchNorm1d(classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv(x)))
        y = self.proj(self.bn2(y)).mean(dim=(2, 3))
        return self.bn3(self.fc(y))


def tiny_net(width: int = 8, classes: int = 3) -> TinyNet:
    return TinyNet(width, classes)


def trained_tiny_net(width: int = 8, classes: int = 3, seed: int = 0) -> TinyNet:
    """A TinyNet whose weights and running statistics are random but realistic (not 0/1)."""
    torch.manual_seed(seed)
    model = TinyNet(width, classes).train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 3, 8, 8) * 2 + 0.5)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()
