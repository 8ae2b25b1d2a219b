"""Small building blocks shared by every SCAR-Net module (timm ``layers/`` style).

Everything here is plain Conv/BatchNorm/ReLU/Resize so that it exports to ONNX opset 18 and
TensorRT without custom ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU``, "same" padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        padding = dilation * (kernel_size // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (stride, dilation) -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU.

    The depthwise-separable form (Xception / DeepLabv3+) is what makes the encoders affordable on
    a 2-core CPU: a 3x3 conv costs ``9 * Cin * Cout`` MACs per pixel, this ``9 * Cin + Cin * Cout``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=in_channels,
        )
        self.pointwise = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def resize_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of ``x`` to the spatial size of ``reference``.

    The size is read from ``reference`` at run time rather than given as a scale factor so that
    the exported graph takes it from a Shape op and stays right for every dynamic H/W.
    """
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)
