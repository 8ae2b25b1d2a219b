"""Segmentation decoder (DeepLabv3+): MF to stride 4, concat FE, refine, classify, upsample;
optionally a stride-2 boundary refinement of the logits (``fine_refinement``)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNReLU, SeparableConv2d, resize_like


class SegmentationDecoder(nn.Module):
    """``logits = up4(conv1x1(SeConv(SeConv(concat(up4(MF), proj(FE))))))``.

    ../shared/docs/MODEL.md's "SeConv + Conv" is read as DeepLabv3+'s refinement: two separable
    3x3 convs and a 1x1 classifier. FE is first projected to ``low_projection`` channels (48 in
    DeepLabv3+) so the stride-4 convs stay cheap. Returns raw logits at the input resolution. With
    ``fine_channels`` > 0 (the stem's channels) the logits pass :class:`BoundaryRefinement` at
    stride 2 before the last upsampling (not in the paper: see that class for why).
    """

    def __init__(
        self,
        high_channels: int,
        low_channels: int,
        num_classes: int,
        channels: int = 96,
        low_projection: int = 48,
        fine_channels: int = 0,
        refine_channels: int = 32,
    ) -> None:
        super().__init__()
        self.low_proj = ConvBNReLU(low_channels, low_projection, 1)
        self.fuse = nn.Sequential(
            SeparableConv2d(high_channels + low_projection, channels),
            SeparableConv2d(channels, channels),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.refine = (BoundaryRefinement(num_classes, fine_channels, refine_channels)
                       if fine_channels else None)

    def forward(self, high: torch.Tensor, low: torch.Tensor, image: torch.Tensor,
                fine: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.cat([resize_like(high, low), self.low_proj(low)], dim=1)
        logits = self.classifier(self.fuse(x))
        if self.refine is not None:
            logits = self.refine(logits, fine)
        return resize_like(logits, image)


class BoundaryRefinement(nn.Module):
    """``logits_s2 = up2(logits_s4) + conv1x1(SeConv(SeConv(concat(up2(logits_s4), fine))))``.

    Why: bilinear upsampling of stride-4 logits cannot draw a structure boundary or a gap finer
    than ~4 px. Thin discs and SPIDER's 1-3 mm unlabelled band between body and disc are that
    fine: a perfect stride-4 prediction (the one-hot reference, average-pooled by 4 and
    upsampled back) scores only 0.84-0.94 disc Dice on SPIDER val cases, 0.95-0.98 at stride 2.
    This head re-reads the stem's stride-2 feature beside the coarse logits and adds a residual
    correction. Its last conv starts at zero, so a network fine-tuned from a checkpoint without
    it starts from that checkpoint's output (up to the two-step upsampling). Two separable convs
    at stride 2 cost 0.11 GFLOP per 256x256 slice (+4% on the network's 2.84).
    """

    def __init__(self, num_classes: int, fine_channels: int, channels: int = 32) -> None:
        super().__init__()
        self.fuse = nn.Sequential(
            SeparableConv2d(num_classes + fine_channels, channels),
            SeparableConv2d(channels, channels),
        )
        self.correction = nn.Conv2d(channels, num_classes, 1)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def forward(self, logits: torch.Tensor, fine: torch.Tensor | None) -> torch.Tensor:
        if fine is None:
            raise ValueError("BoundaryRefinement needs the encoder's stride-2 feature")
        coarse = resize_like(logits, fine)
        return coarse + self.correction(self.fuse(torch.cat([coarse, fine], dim=1)))
