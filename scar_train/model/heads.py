"""Key-point branch: heatmap head on the recognition features and a differentiable soft-argmax."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNReLU, SeparableConv2d, resize_like


class HeatmapHead(nn.Module):
    """Light DeepLabv3+-style decoder: F_R^H upsampled to stride 4, concat projected F_R^L,
    one separable conv, 1x1 conv to one heatmap per key-point (raw values; the targets are
    Gaussians with peak 1, trained with MSE)."""

    def __init__(
        self,
        high_channels: int,
        low_channels: int,
        num_keypoints: int,
        channels: int = 64,
        low_projection: int = 48,
    ) -> None:
        super().__init__()
        self.low_proj = ConvBNReLU(low_channels, low_projection, 1)
        self.fuse = SeparableConv2d(high_channels + low_projection, channels)
        self.out = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        x = torch.cat([resize_like(high, low), self.low_proj(low)], dim=1)
        return self.out(self.fuse(x))


def soft_argmax_2d(heatmaps: torch.Tensor, beta: float, stride: int) -> torch.Tensor:
    """Expected (row, col) of ``softmax(beta * heatmap)`` in INPUT pixel coordinates.

    Differentiable (the key-points feed the RALF weight map) and exportable: the coordinate
    vectors come from ``torch.arange`` of the run-time shape, never from the example size.
    Cell ``i`` of a stride-``s`` map covers input pixels ``s*i .. s*i+s-1``, so its centre is
    ``s*i + (s-1)/2`` (1.5 at stride 4). ``beta`` sharpens the softmax: with peak-1 Gaussian
    heatmaps, ``exp(beta)`` must dominate the number of background cells (beta=20 gives e^20 ~ 5e8
    against 16k cells at 512 px), otherwise the background pulls the estimate to the centre.

    heatmaps: (N, K, h, w) -> (N, K, 2) float, (row, col).
    """
    n, k, h, w = heatmaps.shape
    prob = torch.softmax(beta * heatmaps.flatten(2), dim=-1).reshape(n, k, h, w)
    offset = (stride - 1) / 2.0
    rows = torch.arange(h, device=heatmaps.device, dtype=heatmaps.dtype) * stride + offset
    cols = torch.arange(w, device=heatmaps.device, dtype=heatmaps.dtype) * stride + offset
    row = (prob.sum(dim=3) * rows).sum(dim=-1)
    col = (prob.sum(dim=2) * cols).sum(dim=-1)
    return torch.stack([row, col], dim=-1)


class SoftArgmax(nn.Module):
    """Module form of :func:`soft_argmax_2d` (no parameters; swappable by the exporter)."""

    def __init__(self, beta: float = 20.0, stride: int = 4) -> None:
        super().__init__()
        self.beta = float(beta)
        self.stride = int(stride)

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        return soft_argmax_2d(heatmaps, self.beta, self.stride)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, stride={self.stride}"
