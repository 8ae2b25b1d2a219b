"""RALF weight map, adaptive transformer (AT), parameter adapter and the dynamic depthwise conv.

    W(x)  = max_k exp(-|x - p_k|^2 / (2 sigma^2))            key-points p_k from the heatmaps
    FE    = F_S^L + dynamic_depthwise_conv(AT(F_S^L, W), alpha)
    alpha = conv1x1(adaptive_avg_pool(F_R^L, 7x7))            one 7x7 kernel per sample, channel

Everything must export with dynamic batch, H and W (../shared/docs/TENSORRT.md, docs/export.md),
which rules out three obvious PyTorch forms:
  * ``F.adaptive_avg_pool2d(x, 7)`` exports as an AveragePool whose kernel is computed from the
    example size, silently wrong at other sizes -> :func:`adaptive_avg_pool_matrix` builds the
    averaging matrices from the run-time shape;
  * a grouped conv with ``groups = N * C`` bakes the batch size into the graph ->
    :func:`dynamic_depthwise_conv` sums 49 shifted slices times the per-sample kernel (only its
    never-exported backward uses grouped convs, for speed);
  * nothing reads a size from the example input as a Python constant.
The cores are plain functions wrapped in parameter-free modules, so the exporter can replace a
module instance by a custom ONNX op (TensorRT plugin) without touching weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .layers import ConvBNReLU


def _pool_matrix(length: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """(out_size, length) matrix whose row i averages bin [floor(i*L/o), ceil((i+1)*L/o)).

    Same bins as PyTorch's adaptive pooling. Integer arithmetic on ``arange`` of the run-time
    length, so the exported graph recomputes it for every input size.
    """
    idx = torch.arange(length, device=like.device)
    bins = torch.arange(out_size, device=like.device)
    start = torch.div(bins * length, out_size, rounding_mode="floor")
    end = torch.div((bins + 1) * length + out_size - 1, out_size, rounding_mode="floor")
    mask = (idx[None, :] >= start[:, None]) & (idx[None, :] < end[:, None])
    mask = mask.to(like.dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def adaptive_avg_pool_matrix(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """Adaptive average pooling to ``out_size x out_size`` as ``P_h @ x @ P_w^T``.

    Equals ``F.adaptive_avg_pool2d(x, out_size)`` at every size (including H, W smaller than or
    not a multiple of ``out_size``) but, unlike it, exports correctly with dynamic H/W.
    x: (N, C, H, W) -> (N, C, out_size, out_size).
    """
    ph = _pool_matrix(x.shape[-2], out_size, x)
    pw = _pool_matrix(x.shape[-1], out_size, x)
    return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))


def shifted_tap_sum(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Portable form of the per-sample depthwise conv: ``sum_ij pad(x)[i:i+H, j:j+W] * k[ij]``.

    x: (N, C, H, W), kernel: (N, C, k, k) with odd k -> (N, C, H, W), "same" zero padding,
    cross-correlation like every PyTorch conv. Only Pad, Slice, Mul and Add: no grouped conv with
    ``groups = N * C`` (which would bake the batch size into the graph) and memory stays at one
    feature map (an unfold would need k*k of them).
    """
    k = kernel.shape[-1]
    pad = k // 2
    h, w = x.shape[-2], x.shape[-1]
    padded = F.pad(x, (pad, pad, pad, pad))
    out = padded[:, :, 0:h, 0:w] * kernel[:, :, 0:1, 0:1]
    for i in range(k):
        for j in range(k):
            if i == 0 and j == 0:
                continue
            tap = kernel[:, :, i : i + 1, j : j + 1]
            out = torch.addcmul(out, padded[:, :, i : i + h, j : j + w], tap)
    return out


def _grouped_conv(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-sample depthwise conv as one grouped conv over ``N * C`` groups (eager only)."""
    n, c = x.shape[0], x.shape[1]
    flat = x.reshape(1, n * c, x.shape[2], x.shape[3])
    out = F.conv2d(
        flat,
        weight.reshape(n * c, 1, weight.shape[2], weight.shape[3]),
        padding=padding,
        groups=n * c,
    )
    return out.reshape(n, c, out.shape[2], out.shape[3])


class _DynamicDepthwiseConv(torch.autograd.Function):
    """Forward = :func:`shifted_tap_sum` (what export traces); a fast hand-written backward.

    Autograd through 49 slices allocates and zero-fills a padded-size gradient per tap (several
    times slower than the forward). The backward is never exported, so it may use
    grouped convs with ``groups = N * C``: the input gradient is the same conv with the kernel
    flipped, the kernel gradient is the correlation of the padded input with the output gradient.
    """

    @staticmethod
    def forward(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return shifted_tap_sum(x, kernel)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, kernel = ctx.saved_tensors
        pad = kernel.shape[-1] // 2
        grad = grad.contiguous()
        grad_x = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_x = _grouped_conv(grad, kernel.flip((-2, -1)), pad)
        if ctx.needs_input_grad[1]:
            grad_kernel = _grouped_conv(F.pad(x, (pad, pad, pad, pad)), grad, 0)
        return grad_x, grad_kernel


def dynamic_depthwise_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise conv with a different kernel per sample and channel, "same" zero padding.

    x: (N, C, H, W), kernel: (N, C, k, k), k odd -> (N, C, H, W). Equals
    ``F.conv2d(x[n:n+1], kernel[n][:, None], padding=k//2, groups=C)`` for each sample n. The
    forward (and so the exported graph) is :func:`shifted_tap_sum`; see
    :class:`_DynamicDepthwiseConv` for the backward.
    """
    if kernel.shape[-1] != kernel.shape[-2] or kernel.shape[-1] % 2 == 0:
        raise ValueError(f"the dynamic kernel must be square with an odd size, got {kernel.shape}")
    return _DynamicDepthwiseConv.apply(x, kernel)


def keypoint_weight_map(
    keypoints: torch.Tensor, like: torch.Tensor, stride: int, sigma: float
) -> torch.Tensor:
    """RALF/KRAL weight map ``W(x) = max_k exp(-|x - p_k|^2 / (2 sigma^2))`` on ``like``'s grid.

    keypoints: (N, K, 2) (row, col) in input pixels; like: (N, *, h, w) at ``stride``; sigma in
    input pixels. Cell centres are ``stride*i + (stride-1)/2`` as in the soft-argmax. Distances
    are taken in units of sigma, so the squares stay small (FP16-safe). Returns (N, 1, h, w).
    """
    h, w = like.shape[-2], like.shape[-1]
    offset = (stride - 1) / 2.0
    rows = torch.arange(h, device=like.device, dtype=keypoints.dtype) * stride + offset
    cols = torch.arange(w, device=like.device, dtype=keypoints.dtype) * stride + offset
    dr = (rows[None, None, :] - keypoints[..., 0:1]) / sigma  # (N, K, h)
    dc = (cols[None, None, :] - keypoints[..., 1:2]) / sigma  # (N, K, w)
    # exp(-(dr^2 + dc^2) / 2) as an outer product of the separable row and column factors
    g_row = torch.exp(-0.5 * dr.square())[..., :, None]
    g_col = torch.exp(-0.5 * dc.square())[..., None, :]
    gauss = g_row * g_col
    return gauss.amax(dim=1, keepdim=True).to(like.dtype)


def modulated_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_weights: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Attention whose weights are multiplied by ``key_weights + eps`` and renormalised.

    ``softmax(s)_j * w_j / sum_l softmax(s)_l * w_l == softmax(s + log w)_j``, so the modulation
    is an additive mask ``log(w + eps)`` on plain scaled-dot-product attention (one fused op; eps
    keeps the log finite and, when no key-point is near, falls back to ordinary attention).

    query: (N, heads, Lq, d), key: (N, heads, Lk, d), value: (N, heads, Lk, dv),
    key_weights: (N, Lk) in [0, 1] -> (N, heads, Lq, dv).
    """
    bias = torch.log(key_weights + eps)[:, None, None, :].to(query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)


class AdaptiveAvgPoolMatrix(nn.Module):
    """Parameter-free module around :func:`adaptive_avg_pool_matrix`."""

    def __init__(self, out_size: int = 7) -> None:
        super().__init__()
        self.out_size = int(out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool_matrix(x, self.out_size)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}"


class DynamicDepthwiseConv(nn.Module):
    """Parameter-free module around :func:`dynamic_depthwise_conv`."""

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return dynamic_depthwise_conv(x, kernel)


class ModulatedAttention(nn.Module):
    """Parameter-free module around :func:`modulated_attention`."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_weights: torch.Tensor,
    ) -> torch.Tensor:
        return modulated_attention(query, key, value, key_weights, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class KeypointWeightMap(nn.Module):
    """Module form of :func:`keypoint_weight_map` (sigma in input pixels)."""

    def __init__(self, sigma: float, stride: int = 4) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.stride = int(stride)

    def forward(self, keypoints: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return keypoint_weight_map(keypoints, like, self.stride, self.sigma)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, stride={self.stride}"


class AdaptiveTransformer(nn.Module):
    """AT: spatial-reduction self-attention over F_S^L, modulated by the RALF weight map.

    Queries at every stride-4 position; keys/values from F_S^L average-pooled by ``kv_pool``
    (stride 16 for kv_pool=4), because full attention at stride 4 is 16k x 16k at 512 px. The
    weight map is pooled the same way, so each key gets the mean weight of the cells it covers.
    Returns (N, channels, h, w): a 1x1 projection (+BN) of the attention output.
    """

    def __init__(
        self,
        channels: int = 128,
        heads: int = 2,
        qk_channels: int = 32,
        v_channels: int = 64,
        kv_pool: int = 4,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if qk_channels % heads or v_channels % heads:
            raise ValueError(
                f"qk_channels ({qk_channels}) and v_channels ({v_channels}) must be divisible "
                f"by heads ({heads})"
            )
        self.heads = heads
        self.kv_pool = kv_pool
        self.query = nn.Conv2d(channels, qk_channels, 1)
        self.key = nn.Conv2d(channels, qk_channels, 1)
        self.value = nn.Conv2d(channels, v_channels, 1)
        self.attention = ModulatedAttention(eps)
        self.proj = ConvBNReLU(v_channels, channels, 1, relu=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        return x.reshape(n, self.heads, c // self.heads, -1).transpose(-1, -2)

    def forward(self, x: torch.Tensor, weight_map: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        pooled = F.avg_pool2d(x, self.kv_pool)
        key_weights = F.avg_pool2d(weight_map, self.kv_pool).flatten(1)
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(pooled))
        v = self._split_heads(self.value(pooled))
        out = self.attention(q, k, v, key_weights)  # (N, heads, h*w, dv)
        out = out.transpose(-1, -2).reshape(n, -1, h, w)
        return self.proj(out)


class ParameterAdapter(nn.Module):
    """alpha = conv1x1(adaptive_avg_pool(F_R^L, k x k)): one depthwise k x k kernel per sample.

    The kernel is predicted from the recognition features, so it adapts to each slice (the
    "dynamic kernel" of the paper). The 1x1 conv is initialised with std ``1/(k*sqrt(C))`` so the
    k*k-tap dynamic conv starts with outputs of roughly unit scale.
    """

    def __init__(self, in_channels: int, channels: int = 128, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"the dynamic kernel size must be odd, got {kernel_size}")
        self.pool = AdaptiveAvgPoolMatrix(kernel_size)
        self.conv = nn.Conv2d(in_channels, channels, 1)
        nn.init.normal_(self.conv.weight, std=1.0 / (kernel_size * math.sqrt(in_channels)))
        nn.init.zeros_(self.conv.bias)

    def forward(self, rec_low: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(rec_low))
