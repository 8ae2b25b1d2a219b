"""``--backend auto`` on a CPU: the fastest installed CPU backend for this machine and model.

Which of ONNX Runtime and OpenVINO is faster depends on the CPU (docs/performance.md), so it
is measured once, not guessed: both runners on one full-field slice (PROBE_SHAPE), one warm-up
and three interleaved timed calls each, the lower median wins. The answer is cached in
``$XDG_CACHE_HOME/scar-net/cpu-backend.json`` under a key made of the CPU model and flags, both
library versions, the thread count, the precision asked for and the model's SHA-256, so a new
machine, library or model measures again. Without OpenVINO installed nothing is measured.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from scar_runtime.backends.base import Runner
from scar_runtime.backends.threads import default_threads
from scar_runtime.core.errors import ModelError
from scar_runtime.core.paths import user_cache_dir

# A full-field lumbar slice on the 1 mm grid (300-400 mm field of view); the channel count is
# the model's (2.5D models take more). Not smaller: at 256 x 256 the two backends tie on an AVX2
# CPU and the probe picks either, while full-field volumes differ (docs/performance.md).
PROBE_SHAPE = (1, 1, 384, 384)
PROBE_REPS = 3


def choice_cache_path() -> Path:
    return user_cache_dir() / "cpu-backend.json"


def _cpu_signature() -> str:
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        import platform

        model = platform.processor()
    return f"{model}|{flags}"


def choice_key(model: Path, threads: int, precision: str) -> str:
    import onnxruntime
    import openvino

    from scar_runtime.core.hashing import file_sha256

    return "|".join([_cpu_signature(), f"ort {onnxruntime.__version__}",
                     f"ov {openvino.__version__}", f"threads {threads}", precision,
                     f"probe {PROBE_SHAPE[2]}x{PROBE_SHAPE[3]}",
                     file_sha256(model)[:16]])


def _read_cache() -> dict:
    try:
        doc = json.loads(choice_cache_path().read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    from scar_runtime.core.atomic import atomic_write_text

    doc = _read_cache()
    doc[key] = entry
    path = choice_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n", force=True)
    except (OSError, Exception):  # noqa: BLE001 - a read-only home only costs a re-measure
        pass


def measure(runners: dict[str, Runner]) -> dict[str, float]:
    """Median seconds per call of each (active) runner on the probe slice, interleaved."""
    channels = next(iter(runners.values())).metadata.preprocess.input_channels
    n, _, h, w = PROBE_SHAPE
    x = np.random.default_rng(0).standard_normal((n, channels, h, w)).astype(np.float32)
    for r in runners.values():
        r.infer(x)  # warm-up (first-shape compilation, arena growth)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(PROBE_REPS):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r.infer(x)
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def fastest_cpu_runner(model: Path, *, threads: int | None, precision: str) -> Runner:
    """An inactive runner of the fastest installed CPU backend for ``model`` (measured once per
    model, thread count and precision, then read from the cache)."""
    import importlib.util

    from scar_runtime.backends.onnxruntime import OnnxRuntimeRunner

    if not Path(model).is_file():  # before hashing it for the cache key: one clear line
        raise ModelError(f"{model}: no such model file")
    ort_runner = OnnxRuntimeRunner(model, device="cpu", threads=threads)
    if importlib.util.find_spec("openvino") is None:
        return ort_runner
    from scar_runtime.backends.openvino import OpenVinoRunner

    n_threads = int(threads or default_threads())
    key = choice_key(model, n_threads, precision)
    cached = _read_cache().get(key)
    ov_runner = OpenVinoRunner(model, precision=precision, threads=threads)
    if isinstance(cached, dict) and cached.get("backend") in ("onnxruntime", "openvino"):
        return ov_runner if cached["backend"] == "openvino" else ort_runner
    with ort_runner:
        try:
            ov_runner.activate()
        except Exception:  # noqa: BLE001 - OpenVINO cannot run this model: ONNX Runtime can
            return ort_runner
        with ov_runner:
            seconds = measure({"onnxruntime": ort_runner, "openvino": ov_runner})
    best = min(seconds, key=seconds.get)
    probe = [PROBE_SHAPE[0], ort_runner.metadata.preprocess.input_channels, *PROBE_SHAPE[2:]]
    _write_cache(key, {"backend": best, "seconds": {k: round(v, 5) for k, v in seconds.items()},
                       "probe": probe, "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "openvino_precision": ov_runner.precision})
    return ort_runner if best == "onnxruntime" else ov_runner
