"""TensorRT plugins for the ``scar`` custom ONNX ops (TensorRT 11 ``tensorrt.plugin`` API).

Importing this package does NOT import TensorRT (or torch). :func:`register_plugins` does: call
it before parsing a ``--custom-ops`` ONNX model and before deserialising its engine (the plugin
registry is per process). Each op gets

* a shape/type descriptor, ``@trtp.register("scar::<OpType>")``: the functions of
  :mod:`scar_export.plugins.descriptors` (pure Python, tested without TensorRT);
* a JIT implementation, ``@trtp.impl``: TensorRT's device buffers (``__cuda_array_interface__``)
  wrapped with ``torch.as_tensor(..., device="cuda")`` and computed by
  :mod:`scar_export.plugins.kernels` on TensorRT's stream. A process that runs a custom-op
  engine therefore needs torch with CUDA; a plain engine needs neither these plugins nor torch.

The ONNX nodes carry ``plugin_namespace="scar"``, so TensorRT's ONNX parser prefers a registered
plugin over the node's model-local function; without ``register_plugins()`` it builds the
function body (plain layers) instead, and the engine is still correct.

UNVERIFIED: written to the documented TensorRT 11 API and NVIDIA's quickly-deployable-plugin
samples; no machine available to this project has TensorRT, so the registration and the
enqueue path have never run. The descriptors and the torch kernels are tested on CPU.
"""

# NO `from __future__ import annotations` here: tensorrt.plugin checks the annotations of the
# registered functions with issubclass(), which needs real classes, not strings.

from scar_export.plugins import descriptors as _desc

NAMESPACE = "scar"
PLUGIN_NAMES = tuple(_desc.DESCRIPTORS)

_registered: list = []


def _as_torch(tensors):
    import torch

    return [torch.as_tensor(t, device="cuda") for t in tensors]


def _enqueue(kernel, inputs, attrs, outputs, stream) -> None:
    import torch

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        args = _as_torch(inputs)
        out = torch.as_tensor(outputs[0], device="cuda")
        out.copy_(kernel(*args, *attrs))


def register_plugins() -> list:
    """Register the scar plugins with TensorRT (idempotent); returns their ids.

    Raises :class:`scar_runtime.core.errors.ModelError` when TensorRT is not installed.
    """
    if _registered:
        return list(_registered)
    try:
        import tensorrt.plugin as trtp
    except ImportError as e:
        from scar_runtime.core.errors import ModelError

        raise ModelError("the scar TensorRT plugins need TensorRT >= 11 (tensorrt.plugin): "
                         f"{e}") from e
    from scar_export.plugins import kernels as K

    Desc = trtp.TensorDesc  # noqa: N806

    @trtp.register("scar::PositionAttention")
    def _pa(query: Desc, key: Desc, value: Desc) -> Desc:
        return _desc.position_attention(query, key, value)

    @trtp.impl("scar::PositionAttention")
    def _pa_impl(query, key, value, outputs, stream) -> None:
        _enqueue(K.position_attention, (query, key, value), (), outputs, stream)

    @trtp.register("scar::ChannelAttention")
    def _ca(x: Desc) -> Desc:
        return _desc.channel_attention(x)

    @trtp.impl("scar::ChannelAttention")
    def _ca_impl(x, outputs, stream) -> None:
        _enqueue(K.channel_attention, (x,), (), outputs, stream)

    @trtp.register("scar::DynamicDepthwiseConv")
    def _dw(x: Desc, kernel: Desc, kernel_size: int) -> Desc:
        return _desc.dynamic_depthwise_conv(x, kernel, kernel_size)

    @trtp.impl("scar::DynamicDepthwiseConv")
    def _dw_impl(x, kernel, outputs, stream) -> None:
        _enqueue(K.dynamic_depthwise_conv, (x, kernel), (), outputs, stream)

    @trtp.register("scar::ModulatedAttention")
    def _ma(query: Desc, key: Desc, value: Desc, key_weights: Desc, eps: float) -> Desc:
        return _desc.modulated_attention(query, key, value, key_weights, eps)

    @trtp.impl("scar::ModulatedAttention")
    def _ma_impl(query, key, value, key_weights, eps, outputs, stream) -> None:
        _enqueue(K.modulated_attention, (query, key, value, key_weights), (eps,), outputs,
                 stream)

    _registered.extend(f"{NAMESPACE}::{n}" for n in PLUGIN_NAMES)
    return list(_registered)
