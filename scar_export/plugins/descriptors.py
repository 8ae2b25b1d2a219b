"""Shape/type descriptors of the scar TensorRT plugins, free of TensorRT.

Each function takes the input descriptors (objects with ``like()``, ``shape_expr`` and ``dtype``,
i.e. ``tensorrt.plugin.TensorDesc``) and the node's attributes, and returns the output
descriptor. :func:`scar_export.plugins.register_plugins` wraps them in ``@trtp.register``; the
tests call them with a stand-in descriptor class.

Every plugin returns one tensor of the dtype of its first input (TensorRT 11 networks are
strongly typed: an FP16 graph feeds FP16, an FP32 island feeds FP32).
"""

from __future__ import annotations


def _check_rank(name: str, desc, rank: int) -> None:
    ndim = getattr(desc, "ndim", rank)
    if ndim != rank:
        raise ValueError(f"scar::{name}: expected a rank-{rank} input, got rank {ndim}")


def position_attention(query, key, value):
    """(N, C', H, W), (N, C', H, W), (N, C, H, W) -> like value."""
    for d in (query, key, value):
        _check_rank("PositionAttention", d, 4)
    return value.like()


def channel_attention(x):
    """(N, C, H, W) -> like x."""
    _check_rank("ChannelAttention", x, 4)
    return x.like()


def dynamic_depthwise_conv(x, kernel, kernel_size: int):
    """(N, C, H, W), (N, C, k, k) -> like x ("same" padding); k = kernel_size, odd."""
    _check_rank("DynamicDepthwiseConv", x, 4)
    _check_rank("DynamicDepthwiseConv", kernel, 4)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"scar::DynamicDepthwiseConv: kernel_size must be odd, got {kernel_size}")
    return x.like()


def modulated_attention(query, key, value, key_weights, eps: float):
    """(N, h, Lq, d), (N, h, Lk, d), (N, h, Lk, dv), (N, Lk) -> (N, h, Lq, dv)."""
    for d in (query, key, value):
        _check_rank("ModulatedAttention", d, 4)
    _check_rank("ModulatedAttention", key_weights, 2)
    if not eps > 0:
        raise ValueError(f"scar::ModulatedAttention: eps must be > 0, got {eps}")
    out = query.like()
    out.shape_expr[3] = value.shape_expr[3]
    return out


DESCRIPTORS = {
    "PositionAttention": position_attention,
    "ChannelAttention": channel_attention,
    "DynamicDepthwiseConv": dynamic_depthwise_conv,
    "ModulatedAttention": modulated_attention,
}
