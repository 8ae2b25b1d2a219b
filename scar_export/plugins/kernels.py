"""What the scar plugins compute, in torch (CUDA at run time, any device in the tests).

The JIT plugins (:mod:`scar_export.plugins`) wrap TensorRT's buffers as torch tensors and call
these. They are the model's own math in the fastest form a GPU has for it:

* position attention = SDPA with scale 1 over the H*W positions (flash/efficient kernels);
* channel attention computed in float32 whatever the input dtype (its energy X X^T overflows
  FP16), the result cast back;
* the per-sample depthwise conv as ONE grouped conv with ``groups = N * C`` (at run time the
  batch size is known, unlike in an ONNX graph);
* modulated attention = SDPA with the additive mask ``log(key_weights + eps)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def position_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    n, c, h, w = value.shape
    q = query.flatten(2).transpose(1, 2)[:, None]
    k = key.flatten(2).transpose(1, 2)[:, None]
    v = value.flatten(2).transpose(1, 2)[:, None]
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return out[:, 0].transpose(1, 2).reshape(n, c, h, w)


def channel_attention(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    flat = x.flatten(2).float()
    energy = torch.bmm(flat, flat.transpose(1, 2))
    attn = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
    return torch.bmm(attn, flat).reshape(n, c, h, w).to(x.dtype)


def dynamic_depthwise_conv(x: Tensor, kernel: Tensor) -> Tensor:
    n, c, h, w = x.shape
    k = kernel.shape[-1]
    out = F.conv2d(x.reshape(1, n * c, h, w), kernel.reshape(n * c, 1, k, k), padding=k // 2,
                   groups=n * c)
    return out.reshape(n, c, h, w)


def modulated_attention(query: Tensor, key: Tensor, value: Tensor, key_weights: Tensor,
                        eps: float) -> Tensor:
    bias = torch.log(key_weights.float() + eps)[:, None, None, :].to(query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)


KERNELS = {
    "PositionAttention": position_attention,
    "ChannelAttention": channel_attention,
    "DynamicDepthwiseConv": dynamic_depthwise_conv,
    "ModulatedAttention": modulated_attention,
}
