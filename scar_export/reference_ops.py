"""numpy implementations of the ``scar`` custom ops for ``onnx.reference.ReferenceEvaluator``.

Independent of the torch code and of the ONNX function bodies, so they cross-check both::

    from onnx.reference import ReferenceEvaluator
    from scar_export.reference_ops import REFERENCE_OPS
    sess = ReferenceEvaluator(model, new_ops=REFERENCE_OPS)   # runs these, not the functions

They compute in float32 (float64 for the channel energy) and return the input's dtype, so an
FP16 model runs too. ``plugin_namespace`` is accepted and ignored.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class PositionAttention(OpRun):
    op_domain = "scar"

    def _run(self, query, key, value, plugin_namespace=None):  # noqa: ARG002
        n, c, h, w = value.shape
        q = query.reshape(n, query.shape[1], -1).astype(np.float32)  # (N, C', HW)
        k = key.reshape(n, key.shape[1], -1).astype(np.float32)
        v = value.reshape(n, c, -1).astype(np.float32)
        attn = _softmax(np.einsum("nci,ncj->nij", q, k))  # (N, HW, HW): query i, key j
        out = np.einsum("nij,ncj->nci", attn, v)
        return (out.reshape(n, c, h, w).astype(value.dtype),)


class ChannelAttention(OpRun):
    op_domain = "scar"

    def _run(self, x, plugin_namespace=None):  # noqa: ARG002
        n, c, h, w = x.shape
        f = x.reshape(n, c, -1).astype(np.float64)
        energy = f @ f.transpose(0, 2, 1)
        attn = _softmax(energy.max(axis=-1, keepdims=True) - energy)
        return ((attn @ f).reshape(n, c, h, w).astype(x.dtype),)


class DynamicDepthwiseConv(OpRun):
    op_domain = "scar"

    def _run(self, x, kernel, plugin_namespace=None, kernel_size=None):  # noqa: ARG002
        n, c, h, w = x.shape
        k = kernel.shape[-1]
        if kernel_size is not None and int(kernel_size) != k:
            raise ValueError(f"kernel_size {kernel_size} but a {k}x{k} kernel")
        p = k // 2
        xp = np.pad(x.astype(np.float32), ((0, 0), (0, 0), (p, p), (p, p)))
        out = np.zeros((n, c, h, w), np.float32)
        kf = kernel.astype(np.float32)
        for i in range(k):
            for j in range(k):
                out += xp[:, :, i:i + h, j:j + w] * kf[:, :, i:i + 1, j:j + 1]
        return (out.astype(x.dtype),)


class ModulatedAttention(OpRun):
    op_domain = "scar"

    def _run(self, query, key, value, key_weights, plugin_namespace=None,  # noqa: ARG002
             eps=None):
        q, k, v = (a.astype(np.float32) for a in (query, key, value))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(np.float32(q.shape[-1]))
        bias = np.log(key_weights.astype(np.float32) + np.float32(eps))[:, None, None, :]
        return ((_softmax(scores + bias) @ v).astype(query.dtype),)


REFERENCE_OPS = [PositionAttention, ChannelAttention, DynamicDepthwiseConv, ModulatedAttention]
