"""``digits_cnn``: a small CNN for scikit-learn's 8x8 digits, built from BN blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normserve.models.layers import Normalize
from normserve.models.registry import register

__all__ = ["DigitsCNN", "DigitsCNNConfig", "digits_cnn"]

# Pixel intensities in load_digits are integers 0..16; these are their mean and std over the
# whole dataset, baked into the model so clients send raw pixels.
PIXEL_MEAN = 4.884
PIXEL_STD = 6.017


@dataclass(frozen=True)
class DigitsCNNConfig:
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    num_classes: int = 10


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) raw pixels → (N, num_classes) logits."""

    def __init__(self, config: DigitsCNNConfig) -> None:
        super().__init__()
        c1, c2 = config.channels
        self.normalize = Normalize([PIXEL_MEAN], [PIXEL_STD])
        self.features = nn.Sequential(
            _conv_block(1, c1),
            _conv_block(c1, c2),
            nn.MaxPool2d(2),  # (N, c2, 4, 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(),  # (N, c2 * 16)
            nn.Linear(c2 * 16, config.hidden),
            nn.BatchNorm1d(config.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


@register("digits_cnn", dataset="digits")
def digits_cnn(
    channels: tuple[int, int] | list[int] = (16, 32), hidden: int = 64, num_classes: int = 10
) -> DigitsCNN:
    """Factory for the registry; arguments are the JSON-able ``arch_config``."""
    c1, c2 = channels
    return DigitsCNN(DigitsCNNConfig(channels=(c1, c2), hidden=hidden, num_classes=num_classes))
