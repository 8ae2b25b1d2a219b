"""Segmentation decoder (DeepLabv3+): MF to stride 4, concat FE, refine, classify, upsample."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNReLU, SeparableConv2d, resize_like


class SegmentationDecoder(nn.Module):
    """``logits = up4(conv1x1(SeConv(SeConv(concat(up4(MF), proj(FE))))))``.

    MODEL.md's "SeConv + Conv" is read as DeepLabv3+'s refinement: two separable 3x3 convs and a
    1x1 classifier. FE is first projected to ``low_projection`` channels (48 in DeepLabv3+) so
    the stride-4 convs stay cheap. Returns raw logits at the input resolution.
    """

    def __init__(
        self,
        high_channels: int,
        low_channels: int,
        num_classes: int,
        channels: int = 96,
        low_projection: int = 48,
    ) -> None:
        super().__init__()
        self.low_proj = ConvBNReLU(low_channels, low_projection, 1)
        self.fuse = nn.Sequential(
            SeparableConv2d(high_channels + low_projection, channels),
            SeparableConv2d(channels, channels),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([resize_like(high, low), self.low_proj(low)], dim=1)
        return resize_like(self.classifier(self.fuse(x)), image)
