"""The export form of the per-sample dynamic depthwise conv (Scan over the batch of one
depthwise Conv whose weight is the run-time kernel) equals PyTorch: the function body alone at
batch 1, 3 and 8 with non-square H/W (ONNX Runtime, and OpenVINO where installed), and a whole
small SCAR-Net exported the plain way (random weights, so every path is exercised fast)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from scar_export import custom_ops as C
from scar_export.model import export_module
from scar_export.onnx_export import export_onnx
from scar_train.model import ScarNetConfig, build_model
from scar_train.model.at import dynamic_depthwise_conv

# one worker builds this module's fixtures (make test runs pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("dynconv")

BATCHES = (1, 3, 8)
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed (pip install "
                                    "'scar-net[openvino]')")


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _conv_model(channels: int, k: int, elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """One DynamicDepthwiseConv node, its function inlined: what the plain export contains."""
    node = helper.make_node("DynamicDepthwiseConv", ["x", "kernel"], ["y"], domain="scar",
                            plugin_namespace="scar", kernel_size=k)
    vi = [helper.make_tensor_value_info("x", elem_type, ["N", channels, "H", "W"]),
          helper.make_tensor_value_info("kernel", elem_type, ["N", channels, k, k])]
    out = helper.make_tensor_value_info("y", elem_type, ["N", channels, "H", "W"])
    graph = helper.make_graph([node], "g", vi, [out])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                helper.make_opsetid("scar", 1)], ir_version=10)
    assert C.add_functions(m) == ["DynamicDepthwiseConv"]
    C.inline_functions(m, ("DynamicDepthwiseConv",))
    onnx.checker.check_model(m, full_check=True)
    return m


def _inputs(batch: int, channels: int, h: int, w: int, k: int):
    rng = np.random.default_rng(batch * 100 + h)
    x = rng.standard_normal((batch, channels, h, w)).astype(np.float32)
    kernel = (rng.standard_normal((batch, channels, k, k)) / k).astype(np.float32)
    want = dynamic_depthwise_conv(torch.from_numpy(x), torch.from_numpy(kernel)).numpy()
    # and the definition itself: one depthwise conv per sample
    per_sample = np.concatenate([torch.nn.functional.conv2d(
        torch.from_numpy(x[n:n + 1]), torch.from_numpy(kernel[n][:, None]), padding=k // 2,
        groups=channels).numpy() for n in range(batch)])
    np.testing.assert_allclose(want, per_sample, atol=1e-5, rtol=0)
    return x, kernel, want


def test_inlined_form_is_a_scan_over_one_depthwise_conv():
    m = _conv_model(16, 7)
    assert [n.op_type for n in m.graph.node] == ["Scan"] and not m.functions
    body = m.graph.node[0].attribute[0].g
    conv = next(n for n in body.node if n.op_type == "Conv")
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["group"] == 16 and attrs["kernel_shape"] == [7, 7] and attrs["pads"] == [3] * 4
    assert {o.domain for o in m.opset_import} == {""}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("h,w", [(12, 20), (21, 9)])
def test_dynamic_conv_form_equals_pytorch_in_onnxruntime(batch, h, w):
    x, kernel, want = _inputs(batch, 16, h, w, 7)
    got = _session(_conv_model(16, 7)).run(None, {"x": x, "kernel": kernel})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_dynamic_conv_form_float16():
    x, kernel, want = _inputs(3, 8, 10, 14, 7)
    m = _conv_model(8, 7, TensorProto.FLOAT16)
    got = _session(m).run(None, {"x": x.astype(np.float16), "kernel": kernel.astype(np.float16)})
    assert got[0].dtype == np.float16
    np.testing.assert_allclose(got[0].astype(np.float32), want, atol=2e-2, rtol=2e-2)


@needs_openvino
@pytest.mark.parametrize("batch", BATCHES)
def test_dynamic_conv_form_equals_pytorch_in_openvino(batch):
    import openvino as ov

    x, kernel, want = _inputs(batch, 16, 12, 20, 7)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(_conv_model(16, 7).SerializeToString(), b""),
                                  "CPU", {"INFERENCE_NUM_THREADS": 1,
                                          "INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"x": x, "kernel": kernel})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_add_functions_refuses_an_unknown_channel_count():
    node = helper.make_node("DynamicDepthwiseConv", ["x", "kernel"], ["y"], domain="scar",
                            kernel_size=7)
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "C", "H", "W"])
          for n in ("x", "kernel")]
    graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                helper.make_opsetid("scar", 1)])
    with pytest.raises(ValueError, match="channel count"):
        C.add_functions(m)


# --- a whole (small, random) SCAR-Net, plain export --------------------------------------------

TINY = dict(stem_channels=[8, 8], low_channels=[8, 16, 128], block_channels=[32, 32],
            middle_blocks=1, aspp_channels=32, decoder_low_channels=8, decoder_channels=16,
            head_channels=16, at_qk_channels=8, at_v_channels=8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(ScarNetConfig.from_size("small", **TINY)).eval()
    with torch.no_grad():  # BN statistics away from identity, so every layer matters
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    wrapper = export_module(model)
    proto = export_onnx(wrapper)
    return wrapper, proto


def test_plain_export_has_the_fast_form_and_only_standard_ops(tiny):
    _, m = tiny
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Scan") == 1 and not m.functions
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}
    assert all(o.domain in ("", "ai.onnx") for o in m.opset_import)
    # the traced 49-tap sum is gone: far fewer Slice/Mul nodes than 49
    assert ops.count("Slice") < 20 and ops.count("Mul") < 30


@pytest.mark.parametrize("batch", BATCHES)
def test_plain_export_equals_pytorch_at_batch_and_non_square(tiny, batch):
    wrapper, m = tiny
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 1, 64, 96)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in wrapper(torch.from_numpy(x))]
    got = _session(m).run(None, {"image": x})
    for name, g, w in zip(("probs", "heatmaps", "keypoints"), got, want, strict=True):
        assert g.shape == w.shape, name
    np.testing.assert_allclose(got[0], want[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], want[1], atol=1e-4, rtol=0)
    assert (got[0].argmax(1) == want[0].argmax(1)).mean() >= 0.999
