"""Inference backends behind one small interface (Polygraphy-style runners).

``create_runner(model, backend="auto")`` picks: a TensorRT engine (``.engine``/``.plan``) when
TensorRT and a GPU are present; ONNX Runtime with the CUDA provider when available; else the
fastest installed CPU backend, ONNX Runtime or OpenVINO, measured once per machine and model
(:mod:`scar_runtime.backends.choose`). Heavy/optional libraries are imported only inside the
runner that needs them. ``precision``: ``fp32``, ``bf16`` (OpenVINO only, where the CPU has it
and the model's parity gate passed) or ``auto`` (BF16 when allowed, else FP32).
"""

from __future__ import annotations

from pathlib import Path

from scar_runtime.backends.base import Runner
from scar_runtime.backends.precision import PRECISIONS, check_precision
from scar_runtime.core.errors import ConfigError

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def create_runner(model: Path | str, *, backend: str = "auto", device: str = "auto",
                  threads: int | None = None, precision: str = "auto") -> Runner:
    model = Path(model)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (valid: {', '.join(BACKENDS)})")
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r} (valid: {', '.join(DEVICES)})")
    check_precision(precision)
    is_engine = model.suffix.lower() in ENGINE_SUFFIXES
    if backend == "tensorrt" or (backend == "auto" and is_engine):
        if device == "cpu":
            raise ConfigError("the TensorRT backend runs on a CUDA GPU, not --device cpu")
        if precision == "bf16":
            raise ConfigError("--precision bf16 is a CPU (OpenVINO) precision; a TensorRT "
                              "engine's precision is the one it was built with")
        from scar_runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(model)
    if is_engine:
        raise ConfigError(f"{model} is a TensorRT engine; ONNX Runtime and OpenVINO need the "
                          ".onnx model")
    if backend == "openvino" or (backend == "auto" and precision == "bf16"):
        if device == "cuda":
            raise ConfigError("the OpenVINO backend runs on the CPU here, not --device cuda")
        from scar_runtime.backends.openvino import OpenVinoRunner

        return OpenVinoRunner(model, precision=precision, threads=threads)
    if backend == "onnxruntime" and precision == "bf16":
        raise ConfigError("--precision bf16: ONNX Runtime's CPU provider has no BF16 path; "
                          "use --backend openvino")
    from scar_runtime.backends.onnxruntime import OnnxRuntimeRunner

    if backend == "auto" and device != "cuda" and not (device == "auto" and _ort_has_cuda()):
        from scar_runtime.backends.choose import fastest_cpu_runner

        return fastest_cpu_runner(model, threads=threads, precision=precision)
    return OnnxRuntimeRunner(model, device=device, threads=threads)


__all__ = ["BACKENDS", "DEVICES", "PRECISIONS", "Runner", "create_runner"]


def read_model_metadata(model: Path | str):
    """The scar metadata of an ONNX model, read by ONNX Runtime exactly as inference reads it
    (one CPU thread: only the header matters)."""
    from scar_runtime.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(Path(model), device="cpu", threads=1) as runner:
        return runner.metadata
