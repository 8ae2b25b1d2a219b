"""Inference backends behind one small interface (Polygraphy-style runners).

``create_runner(model, backend="auto")`` picks: a TensorRT engine (``.engine``/``.plan``) when
TensorRT and a GPU are present; ONNX Runtime with the CUDA provider when available; else ONNX
Runtime on the CPU. Heavy/optional libraries are imported only inside the runner that needs them.
"""

from __future__ import annotations

from pathlib import Path

from scar_runtime.backends.base import Runner
from scar_runtime.errors import ConfigError

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def create_runner(model: Path | str, *, backend: str = "auto", device: str = "auto",
                  threads: int | None = None) -> Runner:
    model = Path(model)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (valid: {', '.join(BACKENDS)})")
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r} (valid: {', '.join(DEVICES)})")
    is_engine = model.suffix.lower() in ENGINE_SUFFIXES
    if backend == "tensorrt" or (backend == "auto" and is_engine):
        if device == "cpu":
            raise ConfigError("the TensorRT backend runs on a CUDA GPU, not --device cpu")
        from scar_runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(model)
    if is_engine:
        raise ConfigError(f"{model} is a TensorRT engine; ONNX Runtime needs the .onnx model")
    from scar_runtime.backends.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model, device=device, threads=threads)


__all__ = ["BACKENDS", "DEVICES", "Runner", "create_runner"]


def read_model_metadata(model: Path | str):
    """The scar metadata of an ONNX model, read by ONNX Runtime exactly as inference reads it
    (one CPU thread: only the header matters)."""
    from scar_runtime.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(Path(model), device="cpu", threads=1) as runner:
        return runner.metadata
