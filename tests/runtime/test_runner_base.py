"""The Runner base owns the bookkeeping every backend shares (Polygraphy's BaseRunner pattern):
checked on the shipped model with the real ONNX Runtime and OpenVINO runners."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from scar_runtime.backends import create_runner
from scar_runtime.backends.onnxruntime import OnnxRuntimeRunner
from scar_runtime.core.errors import ModelError
from scar_runtime.model_meta import OUTPUT_NAMES
from scar_runtime.pipeline.segmenter import default_model_path

MODEL = default_model_path()
pytestmark = pytest.mark.skipif(MODEL is None, reason="this checkout ships no model")


def _batch(runner, h=64, w=64):
    return np.zeros((1, runner.metadata.preprocess.input_channels, h, w), np.float32)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "auto"])
def test_create_runner_returns_an_inactive_runner(backend, tmp_path, monkeypatch):
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("OpenVINO is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # `auto` measures afresh
    runner = create_runner(MODEL, backend=backend, device="cpu", threads=1, precision="fp32")
    assert not runner.is_active
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer(np.zeros((1, 3, 64, 64), np.float32))
    with runner:
        assert runner.is_active and runner.metadata is not None
        out = runner.infer(_batch(runner))
        assert set(OUTPUT_NAMES) <= set(out) and out["probs"].shape[0] == 1
    assert not runner.is_active


def test_the_guards_refuse_misuse_in_one_place():
    runner = OnnxRuntimeRunner(MODEL, device="cpu", threads=1)
    runner.activate()
    with pytest.raises(RuntimeError, match="already active"):
        runner.activate()
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        runner.infer(np.zeros((3, 64, 64), np.float32))
    # any dtype and memory layout is made contiguous float32 by the base
    x = _batch(runner).astype(np.float64)[..., ::-1]
    assert runner.infer(x)["probs"].dtype == np.float32
    runner.deactivate()
    runner.deactivate()  # a second deactivate is a no-op
    assert not runner.is_active


def test_a_graph_without_scar_nets_names_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx", reason="building a foreign graph needs onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ModelError, match="not .*scar-net model"):
        OnnxRuntimeRunner(path, device="cpu", threads=1).activate()
