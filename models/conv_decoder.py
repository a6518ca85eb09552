"""``conv_decoder``: a conv auto-encoder for the 8x8 digits whose decoder is grouped
ConvTranspose2d + BatchNorm2d, trained to reproduce its input.

Encoder: two strided 3x3 convs + BN + ReLU, (N, 1, 8, 8) → (N, c2, 2, 2). Decoder: two grouped
ConvTranspose2d (stride 2, padding 1, output_padding 1) + BN + ReLU, back to 8x8, and a 1x1 conv
to one channel. Output is in raw pixel units (0..16), like the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from normserve.models.digits_cnn import PIXEL_MEAN, PIXEL_STD
from normserve.models.layers import Normalize
from normserve.models.registry import register

__all__ = ["ConvDecoder", "ConvDecoderConfig", "conv_decoder"]


@dataclass(frozen=True)
class ConvDecoderConfig:
    channels: tuple[int, int] = (16, 32)
    groups: int = 4


def _up(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    """(N, c_in, H, W) → (N, c_out, 2H, 2W)."""
    return nn.Sequential(
        nn.ConvTranspose2d(
            c_in, c_out, 3, stride=2, padding=1, output_padding=1, groups=groups, bias=False
        ),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ConvDecoder(nn.Module):
    """(N, 1, 8, 8) raw pixels → (N, 1, 8, 8) reconstruction in raw pixel units."""

    def __init__(self, config: ConvDecoderConfig) -> None:
        super().__init__()
        c1, c2 = config.channels
        if c1 % config.groups or c2 % config.groups:
            raise ValueError(f"channels {config.channels} must be divisible by {config.groups}")
        self.normalize = Normalize([PIXEL_MEAN], [PIXEL_STD])
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1, bias=False),  # (N, c1, 4, 4)
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False),  # (N, c2, 2, 2)
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
        )
        self.decoder = nn.Sequential(
            _up(c2, c1, config.groups),  # (N, c1, 4, 4)
            _up(c1, c1, config.groups),  # (N, c1, 8, 8)
            nn.Conv2d(c1, 1, 1),  # (N, 1, 8, 8), normalized units
        )
        # Back to raw pixel units: y * std + mean.
        self.denormalize = Normalize([-PIXEL_MEAN / PIXEL_STD], [1.0 / PIXEL_STD])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.denormalize(self.decoder(self.encoder(self.normalize(x))))


@register("conv_decoder", dataset="digits", task="reconstruction", epochs=12)
def conv_decoder(channels: tuple[int, int] | list[int] = (16, 32), groups: int = 4) -> ConvDecoder:
    """Factory for the registry; arguments are the JSON-able ``arch_config``."""
    c1, c2 = channels
    return ConvDecoder(ConvDecoderConfig(channels=(c1, c2), groups=groups))
