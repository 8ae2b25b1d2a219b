"""``--engine``: a serialized TensorRT engine (plan) beside the ONNX model.

Written to the TensorRT 11 Python API (see docs/export.md): strongly typed network (the
precision is the ONNX graph's), one optimisation profile over batch and H/W, a timing cache kept
between builds, the scar plugins registered first for a ``--custom-ops`` model. Next to
``MODEL.engine`` goes ``MODEL.engine.json`` with the TensorRT version, the GPU name and compute
capability the plan was built for (plans are tied to both; the runtime refuses a mismatch) and
the profile.

Nothing here imports TensorRT at module import. :func:`check_available` looks for a CUDA GPU
with the runtime's own ``cuda_device`` (``scar_runtime.backends.tensorrt``: cuda-python's
``cudaGetDeviceCount``) BEFORE touching TensorRT (deserialising or building without a GPU can
crash the process) and only looks TensorRT up with ``find_spec``.

UNVERIFIED: no machine this was written on has TensorRT (it cannot be installed from PyPI), so
:func:`build_engine` has never run; the guards and paths are tested.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

from scar_runtime.backends.tensorrt import cuda_device
from scar_runtime.core.atomic import atomic_write_bytes
from scar_runtime.core.errors import ModelError, ScarError
from scar_runtime.core.hashing import file_sha256
from scar_runtime.core.paths import user_cache_dir

ENGINE_FORMAT = "scar-net-tensorrt"
MIN_BATCH, OPT_BATCH, MAX_BATCH = 1, 4, 8
MIN_HW, OPT_HW = 64, 256
WORKSPACE_BYTES = 4 << 30
GPU_EXTRA_HINT = "pip install 'scar-net[gpu]' with NVIDIA's package index configured"


def engine_paths(onnx_path: Path) -> tuple[Path, Path]:
    """``model.onnx`` -> (``model.engine``, ``model.engine.json``)."""
    onnx_path = Path(onnx_path)
    engine = onnx_path.with_suffix(".engine")
    return engine, engine.with_name(engine.name + ".json")


def _gpu() -> tuple[dict | None, str | None]:
    """({"name", "compute_capability"} of GPU 0, None) or (None, what is missing)."""
    try:
        name, capability = cuda_device()
    except ScarError as e:  # the runtime's one-line refusal; its cause says which part is absent
        if isinstance(e.__cause__, ImportError):
            return None, "cuda-python (module cuda.bindings.runtime)"
        return None, "a CUDA GPU (cudaGetDeviceCount found none)"
    return {"name": name.strip(), "compute_capability": capability}, None


def gpu_info() -> dict | None:
    """{"name", "compute_capability"} of GPU 0, or None without cuda-python or a GPU."""
    return _gpu()[0]


def check_available() -> dict:
    """Raise a one-line ModelError naming what ``--engine`` is missing; else the GPU info."""
    gpu, missing_gpu = _gpu()
    missing = [missing_gpu] if missing_gpu else []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("TensorRT >= 11 (module tensorrt)")
    if missing:
        raise ModelError(f"--engine needs {' and '.join(missing)}; {GPU_EXTRA_HINT}, or export "
                         "without --engine and build the engine on the GPU machine")
    return gpu  # type: ignore[return-value]


def profile_shapes(preprocess: dict) -> dict[str, list[int]]:
    """Optimisation profile for ``image``: batch 1..8, H/W from 64 to the preprocessing's largest
    slice (``fixed_size`` or ``max_size``), optimum 4 x 256 x 256; channels: the slice and its
    2.5D neighbours (``context_slices`` on each side)."""
    fixed = preprocess.get("fixed_size")
    c = 1 + 2 * int(preprocess.get("context_slices", 0))
    max_h, max_w = (fixed if fixed else (preprocess.get("max_size", 512),) * 2)
    min_h, min_w = min(MIN_HW, max_h), min(MIN_HW, max_w)
    return {"min": [MIN_BATCH, c, min_h, min_w],
            "opt": [OPT_BATCH, c, min(OPT_HW, max_h), min(OPT_HW, max_w)],
            "max": [MAX_BATCH, c, int(max_h), int(max_w)]}


def timing_cache_path(trt_version: str, gpu: dict) -> Path:
    root = user_cache_dir()
    tag = f"{trt_version}-{gpu['name']}-sm{gpu['compute_capability']}"
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", tag)
    return root / f"tensorrt-{tag}.timing-cache"


def build_engine(onnx_path: Path, *, custom_ops: bool, preprocess: dict, gpu: dict) -> tuple[
        bytes, dict]:
    """Build a serialized engine from ``onnx_path``; returns (plan bytes, engine JSON dict)."""
    import tensorrt as trt

    plugins: list[str] = []
    if custom_ops:
        from scar_export.plugins import register_plugins

        plugins = register_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network()  # TensorRT 11: always strongly typed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT could not parse {Path(onnx_path).name}: "
                         f"{errors[0] if errors else 'unknown error'}"
                         + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    cache_path = timing_cache_path(trt.__version__, gpu)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    shapes = profile_shapes(preprocess)
    profile = builder.create_optimization_profile()
    profile.set_shape("image", shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    t0 = time.time()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError("TensorRT could not build the engine (its log above says why)")
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()), force=True)
    except (OSError, ScarError):
        pass  # a timing cache we cannot keep only makes the next build slower
    meta = engine_info(onnx_path, trt_version=trt.__version__, gpu=gpu, custom_ops=custom_ops,
                       preprocess=preprocess, plugin_ids=plugins)
    meta.update(build_seconds=round(time.time() - t0, 1), timing_cache=str(cache_path))
    return bytes(plan), meta


def engine_info(onnx_path: Path, *, trt_version: str, gpu: dict, custom_ops: bool,
                preprocess: dict, plugin_ids: list[str] | None = None) -> dict:
    """``MODEL.engine.json``: what scar_runtime's TensorRT runner checks and reads.

    ``tensorrt_version``/``gpu_name``/``compute_capability`` (a plan only runs there; the
    runner refuses a mismatch), ``metadata`` (the ONNX model's scar metadata_props, so the
    engine is self-describing), ``plugins`` (the module whose ``register_plugins()`` must run
    before deserialising; None for a plain engine).
    """
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {
        "format": ENGINE_FORMAT,
        "tensorrt_version": trt_version,
        "gpu_name": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "metadata": {p.key: p.value for p in model.metadata_props},
        "plugins": "scar_export.plugins" if custom_ops else None,
        "plugin_ids": list(plugin_ids or []),
        "onnx": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "custom_ops": custom_ops,
        "profile": {"input": "image", **profile_shapes(preprocess)},
    }


def engine_json(meta: dict) -> str:
    return json.dumps(meta, indent=1) + "\n"
