"""What an exported scar-net model carries in its ONNX ``metadata_props``.

The runtime needs nothing else (no checkpoint, no config file): the label map, the preprocessing
(spacing, size rule, normalisation), the model's size and ablation flags, the precision, the
package version and the hash of the training data index all travel inside the .onnx file. The
exporter writes these with :meth:`ModelMetadata.to_props`; the runtime reads them back with
:meth:`ModelMetadata.from_props` (from ``onnxruntime``'s ``custom_metadata_map``, so the lean
runtime does not need the ``onnx`` package).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from scar_runtime import __version__
from scar_runtime import labels as L
from scar_runtime.core.errors import ModelError
from scar_runtime.pipeline.preprocess import PreprocessConfig

FORMAT = "scar-net-onnx"
FORMAT_VERSION = 2  # the newest this scar-net reads and writes
# Format 2 adds 2.5D input (``preprocess.context_slices``). A 2D model is still written as format
# 1 without that key, so older scar-nets keep reading it; a 2.5D model is format 2, which they
# refuse with "upgrade scar-net" instead of feeding it one channel.
PLAIN_FORMAT_VERSION = 1
PREFIX = "scar."

INPUT_NAME = "image"  # (N, C, H, W) float32, C = preprocess.input_channels, H and W multiples
# of `input_multiple`
OUTPUT_NAMES = ("probs", "heatmaps", "keypoints")  # (N,11,H,W), (N,10,H/4,W/4), (N,10,2)


@dataclass
class ModelMetadata:
    preprocess: PreprocessConfig
    model_config: dict
    precision: str = "fp32"  # fp32 | fp16 (weights/compute; inputs/outputs stay float32)
    custom_ops: bool = False
    data_index_sha256: str = ""
    training: dict = field(default_factory=dict)  # step, epoch, validation summary
    labels: dict = field(default_factory=L.label_map_dict)
    version: str = __version__
    input_multiple: int = 16
    heatmap_stride: int = 4

    def to_props(self) -> dict[str, str]:
        """String key/values for ONNX metadata_props."""
        preprocess = self.preprocess.to_dict()
        version = FORMAT_VERSION if self.preprocess.context_slices else PLAIN_FORMAT_VERSION
        if not self.preprocess.context_slices:
            del preprocess["context_slices"]
        return {
            f"{PREFIX}format": FORMAT,
            f"{PREFIX}format_version": str(version),
            f"{PREFIX}version": self.version,
            f"{PREFIX}labels": json.dumps(self.labels),
            f"{PREFIX}preprocess": json.dumps(preprocess),
            f"{PREFIX}model_config": json.dumps(self.model_config),
            f"{PREFIX}precision": self.precision,
            f"{PREFIX}custom_ops": json.dumps(self.custom_ops),
            f"{PREFIX}data_index_sha256": self.data_index_sha256,
            f"{PREFIX}training": json.dumps(self.training),
            f"{PREFIX}io": json.dumps({"input": INPUT_NAME, "outputs": list(OUTPUT_NAMES),
                                       "input_multiple": self.input_multiple,
                                       "heatmap_stride": self.heatmap_stride}),
        }

    def check_input_channels(self, channels, where: str) -> None:
        """The graph's input channel count must be what the preprocessing makes (1 + 2 x the
        2.5D context): a file whose metadata and graph disagree is refused on load, in one
        line, instead of failing on the first slice."""
        if channels != self.preprocess.input_channels:
            raise ModelError(f"{where}: its graph takes {channels} input channel(s), its "
                             f"metadata says {self.preprocess.input_channels}: a damaged or "
                             "hand-edited model")

    @classmethod
    def from_props(cls, props: dict[str, str], *, where: str = "model") -> ModelMetadata:
        if props.get(f"{PREFIX}format") != FORMAT:
            raise ModelError(f"{where}: not a scar-net model (no scar metadata; export it with "
                             "`scar export`)")
        fv = int(props.get(f"{PREFIX}format_version", "0"))
        if fv > FORMAT_VERSION:
            raise ModelError(f"{where}: made by a newer scar-net (format {fv}); upgrade scar-net")
        try:
            io = json.loads(props[f"{PREFIX}io"])
            meta = cls(
                preprocess=PreprocessConfig.from_dict(json.loads(props[f"{PREFIX}preprocess"])),
                model_config=json.loads(props[f"{PREFIX}model_config"]),
                precision=props.get(f"{PREFIX}precision", "fp32"),
                custom_ops=json.loads(props.get(f"{PREFIX}custom_ops", "false")),
                data_index_sha256=props.get(f"{PREFIX}data_index_sha256", ""),
                training=json.loads(props.get(f"{PREFIX}training", "{}")),
                labels=json.loads(props[f"{PREFIX}labels"]),
                version=props.get(f"{PREFIX}version", "?"),
                input_multiple=int(io.get("input_multiple", 16)),
                heatmap_stride=int(io.get("heatmap_stride", 4)),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ModelError(f"{where}: damaged scar metadata ({e})") from e
        _check_label_map(meta.labels, where)
        return meta


def _check_label_map(labels: dict, where: str) -> None:
    """A model's classes must mean what this scar-net's classes mean: same ids, same names. A
    model may know fewer (v0.1 has no anchor classes 11-13: its ids 0-10 are the same)."""
    n = labels.get("num_classes")
    classes = labels.get("classes")
    if not isinstance(n, int) or not isinstance(classes, list) or not 2 <= n <= L.NUM_CLASSES:
        raise ModelError(f"{where}: label map with {n} classes; this scar-net knows "
                         f"{L.NUM_CLASSES}")
    for c in classes:
        cid = c.get("id") if isinstance(c, dict) else None
        ours = L.CLASS_NAMES[cid] if isinstance(cid, int) and 0 <= cid < L.NUM_CLASSES else None
        name = c.get("name") if isinstance(c, dict) else c
        if ours is None or name != ours:
            raise ModelError(f"{where}: its class {cid} is {name!r}, this scar-net's is "
                             f"{ours!r}: made for another label map")
