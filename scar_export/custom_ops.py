"""Custom ONNX ops (domain ``scar``) for the SCAR-Net attention cores and the dynamic conv.

With ``scar export --custom-ops`` four parameter-free modules of the model are swapped for
modules that call ``torch.ops.scar.*`` custom ops, and the exporter translates each of those into
ONE node of domain ``scar`` (= the TensorRT plugin namespace):

==========================  =======================================  ==========================
ONNX node (op_type)         replaces                                 attributes
==========================  =======================================  ==========================
``PositionAttention``       ``mcca.inter.attention``,                ``plugin_namespace``
                            ``mcca.intra.attention``
``ChannelAttention``        ``mcca.channel``                         ``plugin_namespace``
``DynamicDepthwiseConv``    ``dynamic_conv``                         ``plugin_namespace``,
                                                                     ``kernel_size``
``ModulatedAttention``      ``at.attention``                         ``plugin_namespace``,
                                                                     ``eps``
==========================  =======================================  ==========================

Each op type is ALSO a model-local ONNX function (``FunctionProto``, domain ``scar``) whose body
is the plain-op form. ONNX Runtime (which knows no ``scar`` kernels) inlines the body; TensorRT's
ONNX parser imports a node that carries ``plugin_namespace`` as a plugin when one of that name is
registered (:func:`scar_export.plugins.register_plugins`) and falls back to the body otherwise.
``plugin_version`` is not written: the parser's default ("1") is the plugins' version.

The bodies are built here with ``onnx.helper`` rather than taken from the exporter, so that they
do not depend on how the exporter decomposes SDPA, and ``DynamicDepthwiseConv``'s body is the
shifted-tap sum unrolled for the model's kernel size (``kernel_size`` records it for the plugin).
"""

from __future__ import annotations

import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from scar_train.model.at import dynamic_depthwise_conv, modulated_attention
from scar_train.model.mcca import channel_attention, position_attention

DOMAIN = "scar"  # ONNX domain == TensorRT plugin namespace
DOMAIN_VERSION = 1

OP_TYPES = ("PositionAttention", "ChannelAttention", "DynamicDepthwiseConv", "ModulatedAttention")

# Inputs and attributes of each node, in order (what the plugins and the reference ops expect).
OP_INPUTS = {
    "PositionAttention": ("query", "key", "value"),
    "ChannelAttention": ("x",),
    "DynamicDepthwiseConv": ("x", "kernel"),
    "ModulatedAttention": ("query", "key", "value", "key_weights"),
}
OP_ATTRIBUTES = {
    "PositionAttention": ("plugin_namespace",),
    "ChannelAttention": ("plugin_namespace",),
    "DynamicDepthwiseConv": ("plugin_namespace", "kernel_size"),
    "ModulatedAttention": ("plugin_namespace", "eps"),
}


# --- torch custom ops: what torch.export sees (eager: the model's own functions) -------------

@torch.library.custom_op("scar::position_attention", mutates_args=())
def _position_attention_op(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    return position_attention(query, key, value)


@_position_attention_op.register_fake
def _(query, key, value):
    return torch.empty_like(value)


@torch.library.custom_op("scar::channel_attention", mutates_args=())
def _channel_attention_op(x: Tensor) -> Tensor:
    return channel_attention(x)


@_channel_attention_op.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("scar::dynamic_depthwise_conv", mutates_args=())
def _dynamic_depthwise_conv_op(x: Tensor, kernel: Tensor, kernel_size: int) -> Tensor:
    return dynamic_depthwise_conv(x, kernel)


@_dynamic_depthwise_conv_op.register_fake
def _(x, kernel, kernel_size):
    return torch.empty_like(x)


@torch.library.custom_op("scar::modulated_attention", mutates_args=())
def _modulated_attention_op(query: Tensor, key: Tensor, value: Tensor, key_weights: Tensor,
                            eps: float) -> Tensor:
    return modulated_attention(query, key, value, key_weights, eps)


@_modulated_attention_op.register_fake
def _(query, key, value, key_weights, eps):
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


# --- modules swapped into the model ----------------------------------------------------------

class CustomPositionAttention(nn.Module):
    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return torch.ops.scar.position_attention(query, key, value)


class CustomChannelAttention(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.scar.channel_attention(x)


class CustomDynamicDepthwiseConv(nn.Module):
    def forward(self, x: Tensor, kernel: Tensor) -> Tensor:
        return torch.ops.scar.dynamic_depthwise_conv(x, kernel, int(kernel.shape[-1]))


class CustomModulatedAttention(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_weights: Tensor) -> Tensor:
        return torch.ops.scar.modulated_attention(query, key, value, key_weights, self.eps)


def swap_in_custom_ops(model: nn.Module, only: tuple[str, ...] | None = None) -> list[str]:
    """Replace the swappable cores of a ScarNet (in place); returns the module paths replaced.

    ``only``: the op types to swap (default all of :data:`OP_TYPES`). Works on a plain or an
    FP32-island-wrapped model: an island keeps its ``inner`` module and only that is replaced
    (see :mod:`scar_export.model`).
    """
    from scar_export.model import Fp32Island

    replaced = []
    wanted = set(OP_TYPES if only is None else only)

    def swap(parent: nn.Module, name: str, new: nn.Module, path: str) -> None:
        if type(new).__name__.removeprefix("Custom") not in wanted:
            return
        cur = getattr(parent, name)
        if isinstance(cur, Fp32Island):
            cur.inner = new
        else:
            setattr(parent, name, new)
        replaced.append(path)

    mcca = getattr(model, "mcca", None)
    if mcca is not None:
        swap(mcca.inter, "attention", CustomPositionAttention(), "mcca.inter.attention")
        swap(mcca.intra, "attention", CustomPositionAttention(), "mcca.intra.attention")
        swap(mcca, "channel", CustomChannelAttention(), "mcca.channel")
    if getattr(model, "dynamic_conv", None) is not None:
        swap(model, "dynamic_conv", CustomDynamicDepthwiseConv(), "dynamic_conv")
    at = getattr(model, "at", None)
    if at is not None:
        cur = at.attention.inner if isinstance(at.attention, Fp32Island) else at.attention
        swap(at, "attention", CustomModulatedAttention(cur.eps), "at.attention")
    return replaced


# --- ONNX side: schemas (for the exporter's op builder), translations, function bodies -------

def _register_schemas() -> None:
    """Declare the ``scar`` ops to onnx's schema registry so onnxscript can build the nodes.

    Process-wide and idempotent. The schemas only type the nodes; the semantics live in the
    model-local functions added by :func:`add_functions`.
    """
    from onnx.defs import OpSchema

    types = ["tensor(float)", "tensor(float16)"]
    for op_type in OP_TYPES:
        if onnx.defs.has(op_type, DOMAIN):
            continue
        attrs = [OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING,
                                    "TensorRT plugin namespace", required=False)]
        if op_type == "DynamicDepthwiseConv":
            attrs.append(OpSchema.Attribute("kernel_size", OpSchema.AttrType.INT,
                                            "odd kernel size k", required=True))
        if op_type == "ModulatedAttention":
            attrs.append(OpSchema.Attribute("eps", OpSchema.AttrType.FLOAT,
                                            "added to key_weights before the log", required=True))
        onnx.defs.register_schema(OpSchema(
            op_type, DOMAIN, DOMAIN_VERSION, doc=f"SCAR-Net {op_type} (see scar_export)",
            inputs=[OpSchema.FormalParameter(n, "T") for n in OP_INPUTS[op_type]],
            outputs=[OpSchema.FormalParameter("y", "T")],
            type_constraints=[("T", types, "float32 or float16")],
            attributes=attrs,
        ))


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: each torch op -> one scar node."""
    from onnxscript.values import Opset

    _register_schemas()
    scar = Opset(DOMAIN, DOMAIN_VERSION)

    def position(query, key, value):
        return scar.PositionAttention(query, key, value, plugin_namespace=DOMAIN)

    def channel(x):
        return scar.ChannelAttention(x, plugin_namespace=DOMAIN)

    def dynconv(x, kernel, kernel_size: int):
        return scar.DynamicDepthwiseConv(x, kernel, plugin_namespace=DOMAIN,
                                         kernel_size=int(kernel_size))

    def modulated(query, key, value, key_weights, eps: float):
        return scar.ModulatedAttention(query, key, value, key_weights, plugin_namespace=DOMAIN,
                                       eps=float(eps))

    return {
        torch.ops.scar.position_attention.default: position,
        torch.ops.scar.channel_attention.default: channel,
        torch.ops.scar.dynamic_depthwise_conv.default: dynconv,
        torch.ops.scar.modulated_attention.default: modulated,
    }


class _Body:
    """Tiny builder for function bodies: unique names, int64 constants."""

    def __init__(self, prefix: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix
        self.n = 0

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self.n += 1
        out = out or f"{self.prefix}_{self.n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def ints(self, values) -> str:
        return self.op("Constant", value=helper.make_tensor(
            f"{self.prefix}_c{self.n}", TensorProto.INT64, [len(values)], list(values)))


def _flatten_hw(b: _Body, x: str) -> str:
    """(N, C, H, W) -> (N, C, H*W)."""
    return b.op("Reshape", x, b.ints([0, 0, -1]))


def _body_position_attention() -> list[onnx.NodeProto]:
    # out = reshape(V . softmax(Q^T K)^T): exactly SDPA with scale 1 over the H*W positions.
    b = _Body("pa")
    q, k, v = (_flatten_hw(b, n) for n in ("query", "key", "value"))
    qt = b.op("Transpose", q, perm=[0, 2, 1])                       # (N, HW, C')
    energy = b.op("MatMul", qt, k)                                   # (N, HW, HW)
    attn = b.op("Softmax", energy, axis=-1)
    attn_t = b.op("Transpose", attn, perm=[0, 2, 1])
    out = b.op("MatMul", v, attn_t)                                  # (N, C, HW)
    b.op("Reshape", out, b.op("Shape", "value"), out="y")
    return b.nodes


def _body_channel_attention() -> list[onnx.NodeProto]:
    # softmax(rowmax(X X^T) - X X^T) . X  (DANet channel attention core)
    b = _Body("ca")
    f = _flatten_hw(b, "x")                                          # (N, C, HW)
    energy = b.op("MatMul", f, b.op("Transpose", f, perm=[0, 2, 1]))  # (N, C, C)
    rowmax = b.op("ReduceMax", energy, b.ints([-1]), keepdims=1)
    attn = b.op("Softmax", b.op("Sub", rowmax, energy), axis=-1)
    b.op("Reshape", b.op("MatMul", attn, f), b.op("Shape", "x"), out="y")
    return b.nodes


def _body_dynamic_depthwise_conv(kernel_size: int, channels: int,
                                 elem_type: int) -> list[onnx.NodeProto]:
    """``Scan`` over the batch of ONE depthwise ``Conv`` (group = C) per sample.

    The per-sample kernel is the Conv's run-time weight, so no group count depends on the batch
    (``groups = N * C`` would bake it in) and the 7x7 taps run in the backend's conv kernel
    instead of 49 full-size Slice/Mul/Add passes (far faster in ONNX Runtime and OpenVINO; the
    figures: docs/performance.md, "CPU speed work"). Exact: the same products, summed by the
    conv. The body's tensors must be typed (OpenVINO and the checker refuse untyped subgraph
    inputs), hence ``channels`` and ``elem_type``.
    """
    k, p = int(kernel_size), int(kernel_size) // 2
    inner = _Body("dws")
    ax0 = inner.ints([0])
    x1 = inner.op("Unsqueeze", "xs", ax0)                              # (1, C, H, W)
    w = inner.op("Unsqueeze", "ks", inner.ints([1]))                   # (C, 1, k, k)
    y1 = inner.op("Conv", x1, w, group=int(channels), kernel_shape=[k, k], pads=[p] * 4)
    inner.op("Squeeze", y1, ax0, out="ys")

    def vi(name, shape):
        return helper.make_tensor_value_info(name, elem_type, shape)

    body = helper.make_graph(inner.nodes, "dynamic_depthwise_conv_sample",
                             [vi("xs", [channels, "h", "w"]), vi("ks", [channels, k, k])],
                             [vi("ys", [channels, "h", "w"])])
    return [helper.make_node("Scan", ["x", "kernel"], ["y"], body=body, num_scan_inputs=2)]


def _body_modulated_attention() -> list[onnx.NodeProto]:
    # softmax(Q K^T / sqrt(d) + log(w + eps)) V  ==  SDPA with an additive log-weight mask
    b = _Body("ma")
    eps = b.op("Constant")
    b.nodes[-1].attribute.append(helper.make_attribute_ref(
        "value_float", onnx.AttributeProto.FLOAT, ref_attr_name="eps"))
    eps_t = b.op("CastLike", eps, "key_weights")
    bias = b.op("Log", b.op("Add", "key_weights", eps_t))            # (N, Lk)
    bias = b.op("Unsqueeze", bias, b.ints([1, 2]))                   # (N, 1, 1, Lk)
    depth = b.op("CastLike", b.op("Shape", "query", start=-1), "query")
    kt = b.op("Transpose", "key", perm=[0, 1, 3, 2])
    scores = b.op("Div", b.op("MatMul", "query", kt), b.op("Sqrt", depth))
    attn = b.op("Softmax", b.op("Add", scores, bias), axis=-1)
    b.op("MatMul", attn, "value", out="y")
    return b.nodes


def function_proto(op_type: str, opset: int, *, kernel_size: int = 7, channels: int | None = None,
                   elem_type: int = TensorProto.FLOAT) -> onnx.FunctionProto:
    """The model-local function (plain-op body) for one scar op type.

    ``DynamicDepthwiseConv`` needs the channel count (its Conv's ``group``) and the element type
    of its inputs (its Scan body is typed).
    """
    if op_type == "DynamicDepthwiseConv" and channels is None:
        raise ValueError("DynamicDepthwiseConv's body needs the channel count")
    bodies = {
        "PositionAttention": _body_position_attention,
        "ChannelAttention": _body_channel_attention,
        "DynamicDepthwiseConv": lambda: _body_dynamic_depthwise_conv(kernel_size, channels,
                                                                     elem_type),
        "ModulatedAttention": _body_modulated_attention,
    }
    return helper.make_function(
        DOMAIN, op_type, list(OP_INPUTS[op_type]), ["y"], bodies[op_type](),
        [helper.make_opsetid("", opset)], attributes=list(OP_ATTRIBUTES[op_type]),
        doc_string=f"SCAR-Net {op_type}: plain ONNX form of the TensorRT plugin "
                   f"{DOMAIN}::{op_type} (ONNX Runtime runs this body).",
    )


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Name -> type of every typed value (the exporter's value_info; shape inference if absent)."""
    def collect(m):
        g = m.graph
        return {v.name: v.type for v in [*g.input, *g.value_info, *g.output]
                if v.type.HasField("tensor_type")}

    types = collect(model)
    if not types.keys() >= {i for n in model.graph.node if n.domain == DOMAIN for i in n.input}:
        types = {**collect(onnx.shape_inference.infer_shapes(model)), **types}
    return types


def _conv_signature(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> tuple[int, int]:
    """(channels, element type) shared by every DynamicDepthwiseConv node of the model."""
    types = _value_types(model)
    sigs = set()
    for node in nodes:
        t = types.get(node.input[1])
        dims = t.tensor_type.shape.dim if t is not None else []
        if len(dims) != 4 or not dims[1].HasField("dim_value"):
            raise ValueError(f"DynamicDepthwiseConv {node.name}: the kernel's channel count is "
                             "not known in the graph")
        sigs.add((int(dims[1].dim_value), int(t.tensor_type.elem_type)))
    if len(sigs) > 1:
        raise ValueError(f"DynamicDepthwiseConv nodes with different channels/types {sigs}")
    return sigs.pop()


def add_functions(model: onnx.ModelProto) -> list[str]:
    """Add a function for every scar op type used in ``model``; returns the op types found."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    used: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.domain == DOMAIN:
            if node.op_type not in OP_TYPES:
                raise ValueError(f"unknown scar op {node.op_type}")
            used.setdefault(node.op_type, []).append(node)
    have = {(f.domain, f.name) for f in model.functions}
    for op_type, nodes in used.items():
        if (DOMAIN, op_type) in have:
            continue
        sizes = {a.i for n in nodes for a in n.attribute if a.name == "kernel_size"}
        if len(sizes) > 1:
            raise ValueError(f"{op_type} nodes with different kernel sizes {sorted(sizes)}")
        kw = {}
        if op_type == "DynamicDepthwiseConv":
            channels, elem_type = _conv_signature(model, nodes)
            kw = {"kernel_size": sizes.pop() if sizes else 7, "channels": channels,
                  "elem_type": elem_type}
        model.functions.append(function_proto(op_type, opset, **kw))
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return sorted(used)


def inline_functions(model: onnx.ModelProto, op_types: tuple[str, ...]) -> None:
    """Replace the scar nodes of ``op_types`` by their function bodies (in place): a plain
    export keeps the fast forms but no custom domain. Drops the scar opset when none is left."""
    from onnx import inliner

    ids = [(DOMAIN, t) for t in op_types]
    inlined = inliner.inline_selected_functions(model, ids, exclude=False)
    model.CopyFrom(inlined)
    keep = [f for f in model.functions if (f.domain, f.name) not in ids]
    del model.functions[:]
    model.functions.extend(keep)
    if not any(n.domain == DOMAIN for n in model.graph.node) and not model.functions:
        keep_ops = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep_ops)
