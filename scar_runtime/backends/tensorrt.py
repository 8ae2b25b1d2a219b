"""TensorRT runner (TensorRT 11 API, cuda-python for memory and streams).

UNVERIFIED on real hardware: TensorRT cannot be installed on the machines this project is built
and tested on (see docs/gpu.md). The code follows the documented TensorRT 11 API
(deserialize_cuda_engine, set_input_shape, set_tensor_address, execute_async_v3) and NVIDIA's
cuda-python samples (cuda.bindings.runtime); the guards below are tested without TensorRT.

An engine is tied to the GPU architecture and the TensorRT version that built it, so ``scar
export --engine`` writes ``<engine>.json`` beside it (TensorRT version, GPU name, compute
capability, and the model's scar metadata); this runner refuses a mismatch with a clear message
instead of letting TensorRT fail obscurely.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

from scar_runtime.backends.base import Runner
from scar_runtime.core.errors import ConfigError, ModelError
from scar_runtime.model_meta import INPUT_NAME, OUTPUT_NAMES, ModelMetadata


def sidecar_path(engine: Path) -> Path:
    return engine.with_suffix(engine.suffix + ".json")


def _cudart():
    # a static import (not core.errors.import_extra): mypy checks these calls against the
    # published stubs (tests/export/test_gpu_typing.py)
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise ConfigError("the TensorRT backend needs cuda-python (pip install "
                          "'scar-net[gpu]')") from e
    return cudart


def _check(result, what: str):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ModelError(f"CUDA error during {what}: {err}")
    return rest[0] if len(rest) == 1 else rest


def cuda_device(index: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor'); one-line error when there is no GPU.

    Checked BEFORE TensorRT is touched: deserialising an engine without a GPU can segfault.
    """
    cudart = _cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise ConfigError("no CUDA GPU is available for the TensorRT backend")
    props = _check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


def check_engine_info(info: dict, *, trt_version: str, gpu_name: str, capability: str,
                      where: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture."""
    if info.get("tensorrt_version") != trt_version:
        raise ModelError(f"{where}: built with TensorRT {info.get('tensorrt_version')}, this is "
                         f"TensorRT {trt_version}; rebuild it with `scar export --engine`")
    if info.get("compute_capability") != capability:
        raise ModelError(f"{where}: built for a GPU of compute capability "
                         f"{info.get('compute_capability')} ({info.get('gpu_name')}), this GPU "
                         f"is {capability} ({gpu_name}); rebuild it on this GPU")


def read_engine_info(engine: Path) -> dict:
    side = sidecar_path(engine)
    if not engine.is_file():
        raise ModelError(f"{engine}: no such engine file")
    if not side.is_file():
        raise ModelError(f"{engine}: missing {side.name} (TensorRT version, GPU and model "
                         "metadata written by `scar export --engine`)")
    try:
        return json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{side}: not valid JSON") from e


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, engine: Path | str):
        super().__init__()
        self.engine_path = Path(engine)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def activate_impl(self) -> None:
        info = read_engine_info(self.engine_path)
        self.metadata = ModelMetadata.from_props(info.get("metadata", {}),
                                                 where=str(self.engine_path))
        gpu, cap = cuda_device()  # before importing/deserialising anything TensorRT
        try:  # static, as _cudart's
            import tensorrt as trt
        except ImportError as e:
            raise ConfigError("the TensorRT backend needs TensorRT (pip install "
                              "'scar-net[gpu]' with NVIDIA's package index)") from e
        check_engine_info(info, trt_version=trt.__version__, gpu_name=gpu, capability=cap,
                          where=str(self.engine_path))
        if info.get("plugins"):  # custom-op engines: plugins must be registered first
            try:
                importlib.import_module(info["plugins"]).register_plugins()
            except ImportError as e:
                raise ConfigError(f"this engine uses scar-net's TensorRT plugins "
                                  f"({info['plugins']}); install scar-net[export]") from e
        self._trt = trt
        self._cudart = _cudart()
        logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise ModelError(f"{self.engine_path}: TensorRT could not deserialise the engine")
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def description(self) -> str:
        return "tensorrt (cuda)"

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = _check(self._cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._buffers[name] = (int(ptr), nbytes)
        return self._buffers[name][0]

    def infer_impl(self, image: np.ndarray) -> dict[str, np.ndarray]:
        cudart, ctx = self._cudart, self._context
        H2D = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        D2H = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ctx.set_input_shape(INPUT_NAME, image.shape)
        src = self._buffer(INPUT_NAME, image.nbytes)
        ctx.set_tensor_address(INPUT_NAME, src)
        _check(cudart.cudaMemcpyAsync(src, image.ctypes.data, image.nbytes, H2D, self._stream),
               "copy to GPU")
        outs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(ctx.get_tensor_shape(name))
            outs[name] = np.empty(shape, dtype=np.float32)
            ctx.set_tensor_address(name, self._buffer(name, outs[name].nbytes))
        if not ctx.execute_async_v3(int(self._stream)):
            raise ModelError("TensorRT execution failed")
        for name, arr in outs.items():
            _check(cudart.cudaMemcpyAsync(arr.ctypes.data, self._buffers[name][0], arr.nbytes,
                                          D2H, self._stream), "copy from GPU")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return outs

    def deactivate_impl(self) -> None:
        if getattr(self, "_cudart", None) is not None:
            for ptr, _ in self._buffers.values():
                self._cudart.cudaFree(ptr)
            self._buffers.clear()
            self._cudart.cudaStreamDestroy(self._stream)
        self._context = self._engine = None
