"""Runners for the benchmark: the runtime's own backends plus a PyTorch eager runner.

The PyTorch runner implements the runtime's :class:`~scar_runtime.backends.Runner` interface with
the very module ``scar export`` exports (:func:`scar_export.model.export_module`: softmax
``probs``, ``heatmaps``, ``keypoints``; FP16 with the exporter's FP32 islands), so every backend
goes through the same Segmenter pipeline and only the inference engine differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scar_runtime.backends import Runner, create_runner
from scar_runtime.model_meta import ModelMetadata
from scar_runtime.pipeline.preprocess import PreprocessConfig


class TorchRunner(Runner):
    name = "pytorch"

    def __init__(self, checkpoint: Path | str, *, device: str = "cpu", fp16: bool = False,
                 threads: int | None = None):
        super().__init__()
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.fp16 = fp16
        self.threads = threads
        self.module = None

    def activate_impl(self) -> None:
        import torch

        from scar_export.model import export_module, load_model

        if self.threads and self.threads != torch.get_num_threads():
            torch.set_num_threads(self.threads)  # only when it differs (see docs/performance.md)
        model, ckpt = load_model(self.checkpoint)
        self.module = export_module(model, fp16=self.fp16).to(self.device).eval()
        self.metadata = ModelMetadata(preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]),
                                      model_config=model.config.to_dict(),
                                      precision="fp16" if self.fp16 else "fp32",
                                      data_index_sha256=str(ckpt.get("data_index_sha256") or ""),
                                      training={"step": int(ckpt.get("step", 0))})

    @property
    def description(self) -> str:
        return f"pytorch eager ({self.device}, {'fp16' if self.fp16 else 'fp32'})"

    def infer_impl(self, image: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(image).to(self.device)
        with torch.inference_mode():
            probs, heatmaps, keypoints = self.module(x)
        # .cpu() waits for the GPU, so a timed call covers the whole inference
        return {"probs": probs.cpu().numpy(), "heatmaps": heatmaps.cpu().numpy(),
                "keypoints": keypoints.cpu().numpy()}

    def deactivate_impl(self) -> None:
        self.module = None


def make_runner(spec: dict) -> Runner:
    """The runner a worker spec asks for (``spec["runner"]``: ``torch`` or ``runtime``)."""
    if spec["runner"] == "torch":
        return TorchRunner(spec["checkpoint"], device=spec["device"],
                           fp16=spec["precision"] == "fp16", threads=spec.get("threads"))
    backend = spec["backend"]
    if backend == "tensorrt":
        return create_runner(spec["model"], backend="tensorrt", device="cuda")
    if backend == "auto":  # exactly what `scar infer` with no options builds
        return create_runner(spec["model"], backend="auto", device="auto",
                             threads=spec.get("threads"), precision="auto")
    if backend == "openvino":
        from scar_runtime.backends.openvino import OpenVinoRunner

        # INT8 is the QDQ model itself; BF16 is measured before any gate exists (the report
        # gives its Dice difference), which users never get: their runner requires the gate
        return OpenVinoRunner(spec["model"], threads=spec.get("threads"),
                              precision="bf16" if spec["precision"] == "bf16" else "fp32",
                              require_gate_record=False)
    return create_runner(spec["model"], backend="onnxruntime", device=spec["device"],
                         threads=spec.get("threads"))
