"""``scar export``: SCAR-Net checkpoints to ONNX (plain or with ``scar`` custom ops, FP32 or FP16)
and, on a GPU machine with TensorRT, to a TensorRT engine.

Modules: :mod:`~scar_export.api` (``export_checkpoint``), :mod:`~scar_export.model` (checkpoint
loading, FP16 islands), :mod:`~scar_export.onnx_export`, :mod:`~scar_export.custom_ops`,
:mod:`~scar_export.parity`, :mod:`~scar_export.reference_ops` (numpy versions of the custom ops
for ``onnx.reference``), :mod:`~scar_export.engine` and :mod:`~scar_export.plugins`.

Importing this package (or ``scar_export.plugins``) never imports TensorRT. See docs/export.md.
"""

PLUGIN_NAMESPACE = "scar"
