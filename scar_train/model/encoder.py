"""DeepLabv3+-style encoders built from depthwise-separable (Xception) blocks.

Layout (output stride 16)::

    stem      ConvBNReLU 3x3 /2, ConvBNReLU 3x3             stride 2
    low       XceptionBlock, 3 separable convs, /2          stride 4  -> low-level feature (128 ch)
    down      XceptionBlock /2, XceptionBlock /2            stride 16
    middle    n x XceptionBlock (identity shortcut)         stride 16
    exit      optional XceptionBlock + separable convs      stride 16 (dilated, as DeepLabv3+)
    aspp      ASPP                                          stride 16 -> high-level feature

The low-level feature is the output of the block whose 3rd separable conv produces the stride-4,
128-channel map (the block's residual shortcut is added, as in Xception). The segmentation and the
recognition encoder have the same structure and their own weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .aspp import ASPP
from .layers import ConvBNReLU, SeparableConv2d


class EncoderFeatures(NamedTuple):
    low: torch.Tensor  # (N, low_channels[-1], H/4, W/4)
    high: torch.Tensor  # (N, aspp_channels, H/16, W/16)
    fine: torch.Tensor | None = None  # (N, stem_channels[-1], H/2, W/2): the stem's output


class XceptionBlock(nn.Module):
    """Three separable convs with a residual shortcut (1x1 conv + BN when the shape changes).

    ``stride_index`` says which of the three convs downsamples: Xception uses the last one; the
    ``small`` size uses the first so that the two other convs run at the lower resolution.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        stride: int = 1,
        stride_index: int = 2,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"an Xception block has 3 separable convs, got channels={channels}")
        convs = []
        prev = in_channels
        for i, out in enumerate(channels):
            convs.append(
                SeparableConv2d(
                    prev, out, stride=stride if i == stride_index else 1, dilation=dilation
                )
            )
            prev = out
        self.convs = nn.Sequential(*convs)
        if stride != 1 or in_channels != channels[-1]:
            self.shortcut: nn.Module = ConvBNReLU(
                in_channels, channels[-1], 1, stride=stride, relu=False
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x) + self.shortcut(x)


class SeparableEncoder(nn.Module):
    """Xception-like backbone + ASPP; returns ``EncoderFeatures(low, high)``."""

    output_stride = 16
    low_stride = 4

    def __init__(
        self,
        in_channels: int,
        stem_channels: Sequence[int],
        low_channels: Sequence[int],
        block_channels: Sequence[int],
        middle_blocks: int,
        aspp_channels: int,
        aspp_rates: Sequence[int],
        downsample_at: int = 2,
        exit_block_channels: Sequence[int] = (),
        exit_conv_channels: Sequence[int] = (),
        exit_dilation: int = 1,
        aspp_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(stem_channels) != 2:
            raise ValueError(f"stem_channels needs 2 values, got {stem_channels}")
        if len(block_channels) != 2:
            raise ValueError(
                f"block_channels needs 2 values (stride 8 and 16 blocks), got {block_channels}"
            )
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, stem_channels[0], 3, stride=2),
            ConvBNReLU(stem_channels[0], stem_channels[1], 3),
        )
        self.low = XceptionBlock(stem_channels[1], low_channels, 2, downsample_at)
        prev = low_channels[-1]
        down = []
        for ch in block_channels:
            down.append(XceptionBlock(prev, (ch, ch, ch), 2, downsample_at))
            prev = ch
        self.down = nn.Sequential(*down)
        self.middle = nn.Sequential(
            *[XceptionBlock(prev, (prev, prev, prev)) for _ in range(middle_blocks)]
        )
        exit_layers: list[nn.Module] = []
        if exit_block_channels:
            exit_layers.append(XceptionBlock(prev, exit_block_channels))
            prev = exit_block_channels[-1]
        for ch in exit_conv_channels:
            exit_layers.append(SeparableConv2d(prev, ch, dilation=exit_dilation))
            prev = ch
        self.exit = nn.Sequential(*exit_layers)
        self.aspp = ASPP(prev, aspp_channels, aspp_rates, dropout=aspp_dropout)
        self.low_channels = low_channels[-1]
        self.high_channels = aspp_channels

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        fine = self.stem(x)
        low = self.low(fine)
        high = self.aspp(self.exit(self.middle(self.down(low))))
        return EncoderFeatures(low, high, fine)


class SegmentationEncoder(SeparableEncoder):
    """Main path S: gives F_S^L (stride 4) and F_S^H (stride 16)."""


class RecognitionEncoder(SeparableEncoder):
    """Branch path R (same structure, own weights): gives F_R^L and F_R^H for the key-points."""
