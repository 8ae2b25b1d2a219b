"""The GPU code that cannot run here, checked as far as published packages allow.

* TensorRT: mypy over the TensorRT-calling modules against the published ``tensorrt-stubs``
  (10.13.0.35.1, the only release: TensorRT 10's API; our code targets TensorRT 11). The stubs
  do not parse as published (a parameter named ``in``; a parameter without a default after
  defaulted ones), so two mechanical repairs are made on a copy first. They are installed
  OUTSIDE site-packages (``make install``: ``pip install --no-deps --target
  .venv/typing-stubs tensorrt-stubs``): in site-packages their ``tensorrt/`` folder makes
  ``import tensorrt`` find a namespace package, and every "is TensorRT installed?" check lie.
  Errors inside the stubs are ignored; every error in OUR code must be one of :data:`KNOWN_GAPS`
  (each says why it is the stubs', not the code's), so a new mismatch fails the test.
* cuda-python (installs and imports without a GPU): every ``cuda.bindings.runtime`` call the
  TensorRT runner and the exporter make is made here with the same argument kinds; without a
  driver each returns its error tuple, which proves the names, arities and argument types.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

STUBS = Path(os.environ.get("SCAR_TYPING_STUBS", REPO / ".venv" / "typing-stubs"))
GPU_MODULES = ["scar_runtime/backends/tensorrt.py", "scar_export/engine.py",
               "scar_export/plugins/__init__.py", "scar_export/plugins/descriptors.py",
               "scar_export/plugins/kernels.py"]
# (file, message fragment, why it is not a bug of ours)
KNOWN_GAPS = [
    ("scar_export/plugins/__init__.py", 'Variable "Desc" is not valid as a type',
     "the stubs have no tensorrt.plugin (trtp) module at all: TensorDesc is Any to mypy"),
    ("scar_runtime/backends/tensorrt.py", 'Need type annotation for "shape"',
     "Dims has __len__/__getitem__ but no __iter__ in the stubs (tuple(Dims) works at run "
     "time through the sequence protocol)"),
    ("scar_runtime/backends/tensorrt.py", 'Argument 1 to "tuple" has incompatible type "Dims"',
     "same: Dims is not declared iterable"),
    ("scar_runtime/backends/tensorrt.py", 'expression has type "None", variable has type',
     "deactivate() sets the context/engine to None; the stubs type the attributes from "
     "create_execution_context()/deserialize_cuda_engine(), which are Optional in fact"),
    ("scar_export/engine.py", 'has incompatible type "list[int]"; expected "Dims"',
     "IOptimizationProfile.set_shape takes Dims; pybind11 converts a list implicitly, the "
     "stubs do not say so"),
]


def _repair(src: Path, dst: Path) -> None:
    for name in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(src / name, dst / name)
    pyi = dst / "tensorrt_bindings" / "tensorrt.pyi"
    text = pyi.read_text()
    text = re.sub(r"\bin: ", "in_: ", text)  # `in` is a keyword
    text = text.replace("power: Weights = None, channel_axis: int)",
                        "power: Weights = None, channel_axis: int = ...)")
    pyi.write_text(text)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
@pytest.mark.skipif(not (STUBS / "tensorrt_bindings").is_dir(),
                    reason=f"tensorrt-stubs are not at {STUBS} (make install puts them there)")
def test_tensorrt_calls_type_check_against_the_published_stubs(tmp_path):
    assert importlib.util.find_spec("tensorrt") is None or (
        importlib.util.find_spec("tensorrt").origin), "a stub-only tensorrt package is importable"
    _repair(STUBS, tmp_path / "stubs")
    cfg = tmp_path / "mypy.ini"
    cfg.write_text("[mypy]\nignore_missing_imports = True\ncheck_untyped_defs = True\n"
                   "follow_imports = skip\nno_error_summary = True\n"
                   f"cache_dir = {tmp_path / 'cache'}\n"
                   "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\n"
                   "follow_imports = normal\nignore_errors = True\n")
    p = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(cfg), *GPU_MODULES],
                       cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "MYPYPATH": str(tmp_path / "stubs")})
    errors = [ln for ln in p.stdout.splitlines() if ": error:" in ln]
    assert p.returncode in (0, 1), p.stdout[-2000:] + p.stderr[-2000:]
    unexplained = [e for e in errors
                   if not any(e.startswith(f) and m in e for f, m, _ in KNOWN_GAPS)]
    assert not unexplained, "\n".join(unexplained)
    # every known gap still shows up; one that no longer does should leave the list
    for f, m, _ in KNOWN_GAPS:
        assert any(e.startswith(f) and m in e for e in errors), (f, m)


@pytest.mark.skipif(importlib.util.find_spec("cuda") is None
                    or importlib.util.find_spec("cuda.bindings") is None,
                    reason="cuda-python is not installed")
def test_cuda_runtime_calls_match_cuda_python():
    from cuda.bindings import runtime as cudart

    from scar_runtime.backends.tensorrt import _check

    err, count = cudart.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        pytest.skip("a GPU is present: the real TensorRT tests cover these calls")
    h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    # the calls of TensorRTRunner / cuda_device / scar_export.engine, same argument kinds
    calls = {
        "cudaGetDeviceProperties": (0,),
        "cudaMalloc": (1024,),
        "cudaFree": (0,),
        "cudaStreamCreate": (),
        "cudaMemcpyAsync": (0, 0, 16, h2d, 0),
        "cudaStreamSynchronize": (0,),
        "cudaStreamDestroy": (0,),
    }
    for name, args in calls.items():
        result = getattr(cudart, name)(*args)
        result = result if isinstance(result, tuple) else (result,)
        assert isinstance(result[0], cudart.cudaError_t), name
        assert int(result[0]) != 0, name  # no driver: an error code, never an exception
        with pytest.raises(Exception, match="CUDA error"):
            _check(result, name)
    assert d2h != h2d
