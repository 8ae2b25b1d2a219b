"""MCCA: multi-channel cross attention between the segmentation and recognition high-level maps.

../shared/docs/MODEL.md's fixed interpretation (all gammas are learnable scalars initialised to
0, so the block starts as an identity-like fusion and learns how much attention to mix in)::

    F1 = F_R^H + gamma1 * A_inter(F_S^H)
    F2 = F_S^H + gamma2 * A_intra(F_R^H)
    FC = conv1x1(concat(F1, F2))
    MF = FC + gamma3 * channel_attention(FC)          # DANet channel attention

The two attention cores are plain functions wrapped in parameter-free modules so that the exporter
can swap a module for a custom ONNX op without touching the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNReLU


def position_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``reshape(c . softmax(a^T b)^T)`` of the paper (DANet position attention).

    query/key: (N, C', H, W), value: (N, C, H, W) -> (N, C, H, W). This is exactly
    scaled-dot-product attention over the H*W positions with scale 1 (the paper does not divide
    by sqrt(C')), so it is written as SDPA: one fused kernel, and one well-known pattern for
    ONNX/TensorRT.
    """
    n, c, h, w = value.shape
    # (N, 1, HW, C): one head; the ONNX exporter only translates 4D SDPA.
    q = query.flatten(2).transpose(1, 2)[:, None]
    k = key.flatten(2).transpose(1, 2)[:, None]
    v = value.flatten(2).transpose(1, 2)[:, None]
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (N, 1, HW, C)
    return out[:, 0].transpose(1, 2).reshape(n, c, h, w)


def channel_attention(x: torch.Tensor) -> torch.Tensor:
    """DANet channel attention core: ``softmax(rowmax(X X^T) - X X^T) . X``.

    x: (N, C, H, W) -> (N, C, H, W). The energy sums over H*W and exceeds the FP16 range on real
    inputs (docs/export.md, "Why the channel-attention island"): an FP16 export must keep this
    function in FP32.
    """
    n, c, h, w = x.shape
    flat = x.flatten(2)
    energy = torch.bmm(flat, flat.transpose(1, 2))
    energy = energy.amax(dim=-1, keepdim=True) - energy
    attn = torch.softmax(energy, dim=-1)
    return torch.bmm(attn, flat).reshape(n, c, h, w)


class PositionAttention(nn.Module):
    """Parameter-free module around :func:`position_attention`."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return position_attention(query, key, value)


class ChannelAttention(nn.Module):
    """Parameter-free module around :func:`channel_attention`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_attention(x)


class AttentionBlock(nn.Module):
    """A(f): a, b, c = conv1x1(f); out = position_attention(a, b, c).

    a and b are reduced to ``channels // reduction`` channels (DANet), c keeps ``channels``.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.attention = PositionAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.query(x), self.key(x), self.value(x))


class MCCA(nn.Module):
    """Cross fusion of F_S^H and F_R^H (same channel count) into MF."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.inter = AttentionBlock(channels, reduction)  # on segmentation features
        self.intra = AttentionBlock(channels, reduction)  # on recognition features
        self.gamma1 = nn.Parameter(torch.zeros(1))
        self.gamma2 = nn.Parameter(torch.zeros(1))
        self.fuse = ConvBNReLU(2 * channels, channels, 1)
        self.channel = ChannelAttention()
        self.gamma3 = nn.Parameter(torch.zeros(1))

    def forward(self, seg_high: torch.Tensor, rec_high: torch.Tensor) -> torch.Tensor:
        f1 = rec_high + self.gamma1 * self.inter(seg_high)
        f2 = seg_high + self.gamma2 * self.intra(rec_high)
        fc = self.fuse(torch.cat([f1, f2], dim=1))
        return fc + self.gamma3 * self.channel(fc)
