"""ONNX Runtime runner: the CPU default (threads: threads.default_threads), CUDA when
onnxruntime-gpu has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scar_runtime.backends.base import Runner, check_io_names
from scar_runtime.backends.threads import default_threads
from scar_runtime.core.errors import ConfigError, ModelError
from scar_runtime.model_meta import INPUT_NAME, OUTPUT_NAMES, ModelMetadata


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model: Path | str, *, device: str = "auto", threads: int | None = None):
        super().__init__()
        self.model = Path(model)
        self.device = device
        self.threads = threads
        self.session = None
        self.providers: list[str] = []

    def activate_impl(self) -> None:
        import onnxruntime as ort

        if not self.model.is_file():
            raise ModelError(f"{self.model}: no such model file")
        available = ort.get_available_providers()
        if self.device == "cuda" and "CUDAExecutionProvider" not in available:
            raise ConfigError("--device cuda: this ONNX Runtime has no CUDA provider "
                              "(install onnxruntime-gpu)")
        use_cuda = self.device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or default_threads()
        opts.inter_op_num_threads = 1  # one node at a time: the cores go to intra-op work
        # ENABLE_ALL (NCHWc layouts) is the fastest; its start-up is short enough that a saved
        # optimised model would not be worth a cache (docs/performance.md).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Memory patterns are planned per input shape and the last batch of every volume has
        # another one: off, peak RSS falls by a third at no loss of speed; the arena stays on
        # (off was slower and larger; docs/performance.md).
        opts.enable_mem_pattern = False
        opts.enable_cpu_mem_arena = True
        opts.log_severity_level = 3  # warnings from ORT are not the user's business
        try:
            self.session = ort.InferenceSession(str(self.model), sess_options=opts,
                                                providers=providers)
        except Exception as e:  # ORT raises its own types for non-ONNX / invalid files
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelError(f"{self.model}: not a loadable ONNX model ({first})") from e
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, where=str(self.model))
        check_io_names([i.name for i in self.session.get_inputs()],
                       [o.name for o in self.session.get_outputs()], str(self.model))
        self.metadata.check_input_channels(self.session.get_inputs()[0].shape[1],
                                           str(self.model))
        self.providers = self.session.get_providers()

    @property
    def description(self) -> str:
        dev = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        return f"onnxruntime ({dev})"

    def infer_impl(self, image: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
        return dict(zip(OUTPUT_NAMES, outs, strict=True))

    def deactivate_impl(self) -> None:
        self.session = None
