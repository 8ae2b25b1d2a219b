"""``torch.onnx.export`` (dynamo) of the prepared module into ONE self-contained ONNX model.

* dynamic batch, height and width: ``Dim("batch")`` and ``16 * Dim("h16", min=2)`` (a plain Dim
  for H/W fails: the network needs multiples of its output stride), example batch 2 (a batch of
  1 would be specialised to 1) and H != W (so the two are never unified);
* all tensors inline (no ``model.onnx.data``): the runtime ships a single .onnx;
* IR version at most 10 (onnxruntime rejects the newer IR versions onnx 1.23 writes);
* ``metadata_props`` from :class:`scar_runtime.model_meta.ModelMetadata`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import TYPE_CHECKING

import onnx

from scar_runtime.core.errors import ModelError
from scar_runtime.model_meta import INPUT_NAME, OUTPUT_NAMES, ModelMetadata

if TYPE_CHECKING:
    from torch import nn

DEFAULT_OPSET = 18
MIN_OPSET = 18  # ReduceMax with axes as an input (function bodies), Resize/Pad forms used here
# Opset 23 turns SDPA into the ONNX Attention op, whose CPU kernel in onnxruntime 1.32 rejects the
# AT's broadcast key mask (N, 1, 1, Lk) ("inconsistent q_sequence_length"): stay below it.
MAX_OPSET = 22
MAX_IR_VERSION = 10
EXAMPLE_SHAPE = (2, 1, 96, 64)  # (N, C, H, W); C becomes the model's input channels (2.5D)
# scar ops whose function body is a faster exact form than what the exporter traces: the plain
# export inlines them (the Scan + depthwise Conv form of the per-sample 7x7 conv). The AT
# attention's plain SDPA chain (ModulatedAttention's body) was tried in place of the exporter's
# split-scale decomposition and was no faster (OpenVINO fuses neither into its SDPA kernel), so
# it is not inlined (the figures: docs/performance.md).
FAST_FORM_OPS = ("DynamicDepthwiseConv",)


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines and warnings (torchvision, deprecations): hide them."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def export_onnx(module: nn.Module, *, opset: int = DEFAULT_OPSET, custom_ops: bool = False,
                fast_forms: bool = True) -> onnx.ModelProto:
    """Export ``module`` (an :class:`~scar_export.model.ExportWrapper`) to a ModelProto.

    ``fast_forms`` (plain export): the ops of :data:`FAST_FORM_OPS` go through their scar custom
    op and are then inlined as their function bodies (the Scan + depthwise Conv form of the
    dynamic conv), so the plain model has standard ops only but not the traced 49-tap sum.
    ``fast_forms=False`` is the v0.1 export (kept for the benchmark's comparison).
    """
    import copy

    import torch
    from torch.export import Dim

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"--opset {opset} is not supported (valid: {MIN_OPSET}..{MAX_OPSET})")
    swapped = ()
    if fast_forms and not custom_ops:
        from scar_export.custom_ops import swap_in_custom_ops

        module = copy.deepcopy(module)
        if swap_in_custom_ops(module.net, only=FAST_FORM_OPS):
            swapped = FAST_FORM_OPS
    table = None
    if custom_ops or swapped:
        from scar_export.custom_ops import translation_table

        table = translation_table()
    n, _, h, w = EXAMPLE_SHAPE
    example = torch.randn(n, module.net.config.in_channels, h, w)
    dims = {0: Dim("batch", min=1), 2: 16 * Dim("h16", min=2), 3: 16 * Dim("w16", min=2)}
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamo=True, dynamic_shapes={INPUT_NAME: dims},
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=opset,
            custom_translation_table=table, external_data=False, verbose=False,
        )
        model = program.model_proto
    if custom_ops or swapped:
        from scar_export.custom_ops import add_functions, inline_functions

        add_functions(model)
        if swapped:
            inline_functions(model, swapped)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    check_io(model)
    return model


def check_io(model: onnx.ModelProto) -> None:
    """The graph boundary the runtime relies on: names, float32, rank, dynamic N/H/W."""
    inputs = [i for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    names_in = [i.name for i in inputs]
    names_out = [o.name for o in model.graph.output]
    if names_in != [INPUT_NAME] or names_out != list(OUTPUT_NAMES):
        raise ModelError(f"exported graph has inputs {names_in} and outputs {names_out}; "
                         f"expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}")
    for vi in [*inputs, *model.graph.output]:
        tt = vi.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(f"exported graph: {vi.name} is not float32")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or any(dims[i].HasField("dim_value") for i in (0, 2, 3)):
        raise ModelError("exported graph: the input's batch/height/width are not dynamic")


def set_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Replace ``metadata_props`` with the scar metadata (keeping unrelated exporter keys)."""
    props = meta.to_props()
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**dict(keep), **props})


def save_onnx(model: onnx.ModelProto, path) -> None:
    """Save ONE self-contained file (every tensor inline)."""
    onnx.save_model(model, str(path), save_as_external_data=False)
