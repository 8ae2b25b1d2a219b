"""Atrous spatial pyramid pooling (DeepLabv3+), with separable atrous branches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import ConvBNReLU, SeparableConv2d


class ImagePooling(nn.Module):
    """Global-context branch: global mean -> 1x1 conv -> ReLU -> broadcast back to H x W.

    The mean is ``x.mean((2, 3))`` rather than ``AdaptiveAvgPool2d(1)`` so that it exports as a
    ReduceMean, right at every dynamic size. There is no BatchNorm here: a 1x1 map has one value
    per channel and sample, so training BN would fail (or be meaningless) at batch size 1.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.act(self.conv(x.mean((2, 3), keepdim=True)))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """1x1 branch + one separable 3x3 branch per atrous rate + image pooling, then a 1x1 fuse."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int],
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"ASPP needs atrous rates >= 1, got {rates}")
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [SeparableConv2d(in_channels, out_channels, dilation=r) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvBNReLU(out_channels * len(branches), out_channels, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
