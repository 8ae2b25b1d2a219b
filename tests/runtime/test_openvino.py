"""The OpenVINO runner: equals ONNX Runtime on real slices (FP32, tight), BF16 only where the CPU
has it and the recorded parity gate passed, ``--backend auto`` measures once and caches.

The FP32 checks use a small SCAR-Net with random weights exported here (any model shows whether
two backends compute the same function; the shipped model's label map may not match the runtime
while the label map changes); the BF16 gate needs a trained model: the shipped one."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from helpers import CHU_IMG, CHU_SEG, IVD_IMG, IVD_SEG, assert_one_line_error, run_scar

from scar_runtime import labels as L
from scar_runtime.backends import create_runner
from scar_runtime.backends.onnxruntime import OnnxRuntimeRunner
from scar_runtime.backends.precision import gate_passed, parity_record_path, require_gate
from scar_runtime.core.errors import ConfigError, ModelError
from scar_runtime.evaluation.metrics import dice
from scar_runtime.io import load_volume
from scar_runtime.pipeline.preprocess import PreprocessConfig, image_to_slices, slices_to_labels
from scar_runtime.pipeline.segmenter import Segmenter, default_model_path

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                 reason="openvino is not installed (pip install "
                                 "'scar-net[openvino]')"),
              # one worker builds this module's fixtures (make test: pytest-xdist loadgroup)
              pytest.mark.xdist_group("openvino")]

TINY = dict(stem_channels=[8, 8], low_channels=[8, 16, 128], block_channels=[32, 32],
            middle_blocks=1, aspp_channels=32, decoder_low_channels=8, decoder_channels=16,
            head_channels=16, at_qk_channels=8, at_v_channels=8)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A plain export (the Scan form of the dynamic conv) of a small random SCAR-Net, with the
    runtime's metadata: a real ONNX file both backends load exactly as they load the shipped
    one."""
    torch = pytest.importorskip("torch", reason="exporting the test model needs torch")
    from scar_export.model import export_module
    from scar_export.onnx_export import export_onnx, save_onnx, set_metadata
    from scar_runtime.model_meta import ModelMetadata
    from scar_train.model import ScarNetConfig, build_model

    torch.manual_seed(1)
    cfg = ScarNetConfig.from_size("small", num_classes=L.NUM_CLASSES, **TINY)
    model = build_model(cfg).eval()
    proto = export_onnx(export_module(model))
    set_metadata(proto, ModelMetadata(preprocess=PreprocessConfig(), model_config=cfg.to_dict()))
    path = tmp_path_factory.mktemp("ov") / "tiny.onnx"
    save_onnx(proto, path)
    return path


def _real_slices(image, n: int = 3) -> np.ndarray:
    vol = load_volume(image)
    x, _ = image_to_slices(vol.data, vol.inplane_spacing, PreprocessConfig())
    mid = x.shape[0] // 2
    return x[mid - n // 2: mid - n // 2 + n]


def _ov(model, **kw):
    from scar_runtime.backends.openvino import OpenVinoRunner

    return OpenVinoRunner(model, threads=1, **kw)


def test_openvino_equals_onnxruntime_on_a_real_slice(random_model):
    x = _real_slices(CHU_IMG, 1)
    with OnnxRuntimeRunner(random_model, device="cpu", threads=1) as ort_r, \
            _ov(random_model, precision="fp32") as ov_r:
        assert ov_r.metadata == ort_r.metadata and ov_r.precision == "fp32"
        want, got = ort_r.infer(x), ov_r.infer(x)
    assert ov_r.description == "openvino (cpu, fp32)"
    for name in ("probs", "heatmaps", "keypoints"):
        assert got[name].shape == want[name].shape and got[name].dtype == np.float32
    np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["heatmaps"], want["heatmaps"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["keypoints"], want["keypoints"], atol=1e-2, rtol=0)
    assert (got["probs"].argmax(1) == want["probs"].argmax(1)).mean() >= 0.9999


def test_openvino_in_the_segmenter_matches_onnxruntime(random_model):
    """Whole volumes at batch 1 and 3 (a short last batch: another input shape)."""
    labels = {}
    for backend in ("onnxruntime", "openvino"):
        for batch in (1, 3):
            with Segmenter(random_model, backend=backend, device="cpu", batch=batch, threads=1,
                           precision="fp32", use_postprocess=False) as seg:
                labels[backend, batch] = seg.segment(CHU_IMG).labels
    ref = labels["onnxruntime", 1]
    for key, lab in labels.items():
        assert lab.shape == ref.shape
        assert (lab == ref).mean() >= 0.9999, key


def test_bf16_is_refused_without_native_bf16_or_a_passed_gate(random_model):
    from scar_runtime.backends.openvino import cpu_capabilities

    runner = _ov(random_model, precision="bf16")
    what = "no native BF16" if "BF16" not in cpu_capabilities() else "parity record"
    with pytest.raises(ConfigError, match=what):
        runner.activate()
    # auto never picks an unchecked BF16
    with _ov(random_model, precision="auto") as auto:
        assert auto.precision == "fp32"
    with pytest.raises(ConfigError, match="no BF16 path"):
        create_runner(random_model, backend="onnxruntime", precision="bf16")


def _gate_doc(**entry) -> dict:
    return {"passed": True, "reduced_precision": {"openvino-bf16": entry}}


@pytest.mark.parametrize("doc,ok,needle", [
    (None, False, "no openvino-bf16 parity record"),
    (_gate_doc(skipped="this CPU has no native BF16"), False, "skipped"),
    (_gate_doc(passed=False, label_agreement=0.99, dice_difference=0.2,
               failures=["label_agreement 0.99000 < 0.995"]), False, "failed its parity gate"),
    # a record that says passed but whose numbers break the limits is not trusted
    (_gate_doc(passed=True, label_agreement=0.99, dice_difference=0.2), False, "failed"),
    (_gate_doc(passed=True, label_agreement=0.998, dice_difference=0.7), False, "failed"),
    (_gate_doc(passed=True, label_agreement=0.998, dice_difference=0.2, finite=True), True, ""),
])
def test_gate_record(tmp_path, doc, ok, needle):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    if doc is not None:
        parity_record_path(model).write_text(json.dumps(doc))
    entry = (doc or {}).get("reduced_precision", {}).get("openvino-bf16")
    assert gate_passed(entry) is ok
    if ok:
        assert require_gate(model, "openvino-bf16") == entry
    else:
        with pytest.raises(ConfigError, match=needle):
            require_gate(model, "openvino-bf16")


def test_auto_measures_once_then_uses_the_cached_choice(random_model, tmp_path, monkeypatch):
    from scar_runtime.backends import choose

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = choose.fastest_cpu_runner(random_model, threads=1, precision="auto")
    assert not first.is_active and first.name in ("onnxruntime", "openvino")
    doc = json.loads(choose.choice_cache_path().read_text())
    (key, entry), = doc.items()
    assert entry["backend"] == first.name and set(entry["seconds"]) == {"onnxruntime",
                                                                         "openvino"}
    assert key == choose.choice_key(random_model, 1, "auto")
    first.deactivate()
    again = create_runner(random_model, backend="auto", device="cpu", threads=1)
    assert again.name == first.name and not again.is_active  # no second measurement
    # another thread count is another key: measured again
    other = choose.fastest_cpu_runner(random_model, threads=2, precision="auto")
    assert len(json.loads(choose.choice_cache_path().read_text())) == 2
    other.deactivate()


def test_openvino_errors_are_one_line(tmp_path):
    text = tmp_path / "not_a_model.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(ModelError, match="not a model OpenVINO can read"):
        _ov(text).activate()
    with pytest.raises(ModelError, match="no such model file"):
        _ov(tmp_path / "missing.onnx").activate()
    out = tmp_path / "out"
    out.mkdir()
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model", text,
                                   "--backend", "openvino"), "OpenVINO")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--precision", "fp8"),
                          "precision")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--backend", "onnxruntime",
                                   "--precision", "bf16"), "bf16")


def test_bf16_passes_the_gate_on_real_slices():
    """BF16 vs FP32 (both OpenVINO, the shipped trained model) on every slice of two real
    volumes, the gate of the issue and of scar_export.parity where reference masks exist: label
    agreement with FP32 >= 0.995, and Dice against the reference masks within 0.5 point of
    FP32's (mean over the labelled structures). First run on a BF16 CPU (this workplace's
    AVX-512/AMX Xeon VM): agreement 0.9988 on the input grids, Dice vs reference FP32 - BF16
    -0.007 points over 11 structures. The BF16-vs-FP32 Dice of the bare labels themselves (every
    flipped boundary pixel a loss, no reference) is 0.65 points on average, most of it on the
    2 mm menezes fixture's small discs: printed here, not the gate (an earlier form of this
    test asserted it <= 0.5 before any BF16 CPU had run it)."""
    from scar_runtime.backends.openvino import cpu_capabilities

    if "BF16" not in cpu_capabilities():
        pytest.skip(f"this CPU has no native BF16 (OpenVINO: {cpu_capabilities()})")
    model = default_model_path()
    fp32 = _ov(model, precision="fp32")
    try:
        fp32.activate()
    except ModelError as e:
        pytest.skip(f"the shipped model does not load in this runtime: {e}")
    bf16 = _ov(model, precision="bf16", require_gate_record=False)
    bf16.activate()
    agree = total = 0
    pairwise, dice_diff = [], []
    for image, seg in ((CHU_IMG, CHU_SEG), (IVD_IMG, IVD_SEG)):
        vol = load_volume(image)
        cfg = fp32.metadata.preprocess
        x, grid = image_to_slices(vol.data, vol.inplane_spacing, cfg)
        # network-grid labels, mapped back onto the input grid to meet the reference mask
        lab = {name: slices_to_labels(np.concatenate(
                   [r.infer(x[i:i + 4])["probs"].argmax(1) for i in range(0, len(x), 4)]
               ).astype(np.uint8), grid) for name, r in (("fp32", fp32), ("bf16", bf16))}
        ref = L.verse_to_model(load_volume(seg, as_labels=True).data)  # VerSe ids -> classes
        assert ref.shape == lab["fp32"].shape
        agree += int((lab["fp32"] == lab["bf16"]).sum())
        total += lab["fp32"].size
        for c in range(1, L.NUM_CLASSES):
            a, b = lab["fp32"] == c, lab["bf16"] == c
            if a.any() or b.any():
                pairwise.append(100.0 * (1 - dice(a, b)))
            y = ref == c
            if y.any():
                dice_diff.append(100.0 * (dice(a, y) - dice(b, y)))
    fp32.deactivate()
    bf16.deactivate()
    print(f"label agreement {agree / total:.5f}; Dice vs reference, FP32 - BF16: mean "
          f"{np.mean(dice_diff):+.3f} points over {len(dice_diff)} structures; BF16-vs-FP32 "
          f"label Dice loss {np.mean(pairwise):.2f} points")
    assert dice_diff, "no labelled structure in the fixtures"
    assert agree / total >= 0.995
    assert abs(float(np.mean(dice_diff))) <= 0.5
