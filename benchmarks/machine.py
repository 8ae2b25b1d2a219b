"""The machine a run measured on, its matrix-multiply peak, and the model's counted FLOPs."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

from scar_runtime.backends.threads import default_threads

LIBRARIES = ("numpy", "scipy", "nibabel", "torch", "onnx", "onnxruntime", "onnxruntime-gpu",
             "openvino",
             "onnxscript", "tensorrt", "cuda-python", "matplotlib", "scar-net")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def _cpuinfo() -> dict:
    info: dict = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    if m:
        info["model"] = m.group(1).strip()
    fam = re.search(r"^cpu family\s*:\s*(\d+)$", text, re.M)
    mod = re.search(r"^model\s*:\s*(\d+)$", text, re.M)
    if fam and mod:
        info["family_model"] = f"family {fam.group(1)} model {mod.group(1)}"
    m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    if m:
        flags = set(m.group(1).split())
        info["flags"] = [f for f in CPU_FLAGS if f in flags]
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M)
    if m:
        info["mhz"] = float(m.group(1))
    phys = {(a, b) for a, b in re.findall(
        r"^physical id\s*:\s*(\d+)$[\s\S]*?^core id\s*:\s*(\d+)$", text, re.M)}
    if phys:
        info["physical_cores"] = len(phys)
    return info


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        with contextlib.suppress(md.PackageNotFoundError):
            out[lib] = md.version(lib)
    return out


def gpu_info() -> dict | None:
    """Name and capability of GPU 0 when torch or cuda-python sees one; else None."""
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                    "memory_gb": round(p.total_memory / 2**30, 1),
                    "count": torch.cuda.device_count()}
    except ImportError:
        pass
    try:
        from scar_export.engine import gpu_info as cuda_python_gpu

        return cuda_python_gpu()
    except ImportError:
        return None


def machine_info(threads: int) -> dict:
    import onnxruntime as ort

    cpu = _cpuinfo()
    return {"cpu": cpu.get("model") or platform.processor() or platform.machine(),
            "cpu_id": cpu.get("family_model"), "cpu_flags": cpu.get("flags", []),
            "cpu_mhz": cpu.get("mhz"),
            "logical_cores": os.cpu_count(), "physical_cores": cpu.get("physical_cores"),
            "threads": threads, "memory_gb": _memory_gb(), "platform": platform.platform(),
            "libraries": _versions(), "onnxruntime_providers": ort.get_available_providers(),
            "gpu": gpu_info(), "load_average_start": _loadavg()}


def _memory_gb() -> float | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def loadavg() -> list[float] | None:
    return _loadavg()


def _best_gflops(fn, n: int, reps: int) -> float:
    fn()  # warm-up (thread pool start, page faults)
    best = min(_timed(fn) for _ in range(reps))
    return 2.0 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gemm_peak(n: int = 2048, reps: int = 5, threads: int | None = None) -> dict:
    """FP32 matrix-multiply GFLOP/s (2 n^3 FLOP per product, best of ``reps``): numpy (its
    BLAS) and torch when installed. ``peak_gflops`` is the larger: the roofline's ceiling."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = {"n": n, "reps": reps, "numpy_sgemm_gflops": round(_best_gflops(lambda: a @ b, n,
                                                                          reps), 1)}
    try:
        import torch

        if threads and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch_sgemm_gflops"] = round(_best_gflops(lambda: torch.mm(ta, tb), n, reps), 1)
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    out["peak_gflops"] = max(v for k, v in out.items() if k.endswith("_gflops"))
    return out


def thread_env(threads: int) -> dict[str, str]:
    """Environment for a child process that should use ``threads`` threads: the BLAS/OpenMP
    variables are set only when ``threads`` differs from what the child would use anyway
    (every core, or an inherited OMP_NUM_THREADS), so torch keeps its own default otherwise."""
    env = dict(os.environ)
    if threads != default_threads():
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    return env


def gemm_peak_subprocess(threads: int, timeout: float = 300) -> dict:
    """:func:`gemm_peak` in a fresh process with ``threads`` threads (numpy's BLAS reads its
    thread count at import, so it cannot be changed in this process)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "benchmarks.machine", "gemm", str(threads)],
                          capture_output=True, text=True, timeout=timeout,
                          env=thread_env(threads), cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"GEMM peak measurement failed: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def count_gflop(model_config: dict, sizes: list[tuple[int, int]]) -> dict:
    """GFLOP per slice counted by torch.utils.flop_counter.FlopCounterMode (convolutions,
    matrix products, attention; 2 FLOP per multiply-accumulate; element-wise work not counted)
    on the exported module (random weights: the count depends only on the architecture)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from scar_export.model import reference_module
    from scar_train.model import ScarNetConfig, build_model

    module = reference_module(build_model(ScarNetConfig.from_dict(model_config)).eval())
    params = sum(p.numel() for p in module.parameters())
    out = {"params": int(params), "per_slice": {}}
    for h, w in sizes:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            module(torch.zeros(1, module.net.config.in_channels, h, w))
        out["per_slice"][f"{h}x{w}"] = round(fc.get_total_flops() / 1e9, 4)
    return out


if __name__ == "__main__":  # python -m benchmarks.machine gemm THREADS
    import json
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "gemm":
        print(json.dumps(gemm_peak(threads=int(sys.argv[2]))))
    else:
        sys.exit("usage: python -m benchmarks.machine gemm THREADS")
