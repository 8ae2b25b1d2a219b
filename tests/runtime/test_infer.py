"""`scar infer` on real volumes with a really exported model: geometry, orientation invariance,
outputs, bad input, SIGKILL safety."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from helpers import (
    CHU_IMG,
    REPO,
    SHARED_DATA,
    assert_one_line_error,
    assert_same_geometry,
    make_bad_inputs,
    needs_shared,
    run_scar,
)
from PIL import Image

from scar_runtime import Segmenter
from scar_runtime.labels import ALL_STRUCTURES, KEYPOINT_NAMES

SAMPLE = REPO / "scar_runtime" / "sample" / "chu2015_14_crop_img.nii.gz"


def _resave(src, dst, axcodes):
    img = nib.load(str(src))
    xform = nib.orientations.ornt_transform(nib.io_orientation(img.affine),
                                            nib.orientations.axcodes2ornt(axcodes))
    nib.save(img.as_reoriented(xform), str(dst))
    return dst


def _in_layout_of(img, ref):
    """``img`` reoriented to ``ref``'s axis order (exact for axis-aligned images)."""
    xform = nib.orientations.ornt_transform(nib.io_orientation(img.affine),
                                            nib.io_orientation(ref.affine))
    return img.as_reoriented(xform)


def test_outputs_and_geometry(tmp_path):
    # the shipped model: a 2-step tiny model finds no lumbar spine (exit 3, tested elsewhere)
    p = run_scar("infer", SAMPLE, "-o", tmp_path)
    assert p.returncode == 0, p.stderr
    name = "chu2015_14_crop_img"
    src = nib.load(str(SAMPLE))
    seg = nib.load(str(tmp_path / f"{name}_seg.nii.gz"))
    assert_same_geometry(seg, src)
    assert np.asanyarray(seg.dataobj).max() <= 13
    kp = json.loads((tmp_path / f"{name}_keypoints.json").read_text())
    assert [k["name"] for k in kp["keypoints"]] == list(KEYPOINT_NAMES)
    for k in kp["keypoints"]:
        assert len(k["voxel"]) == 3 and len(k["world_mm"]) == 3 and 0 <= k["confidence"] <= 1
        # world and voxel coordinates agree through the input affine
        np.testing.assert_allclose(nib.affines.apply_affine(src.affine, k["voxel"]),
                                   k["world_mm"], atol=0.05)
    stats = json.loads((tmp_path / f"{name}_stats.json").read_text())
    assert stats["lumbar_spine_found"] is True and stats["level_naming"]["anchor"]
    assert set(stats["structures"]) == {s.name for s in ALL_STRUCTURES}
    for s in stats["structures"].values():
        if s["present"]:
            assert s["volume_mm3"] > 0 and s["n_slices"] >= 1
    with Image.open(tmp_path / f"{name}_preview.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["classes"][1]["name"] == "L1"
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]
    # a second run refuses to replace the results without --force
    p = run_scar("infer", SAMPLE, "-o", tmp_path)
    assert_one_line_error(p, "already exists")
    p = run_scar("infer", SAMPLE, "-o", tmp_path, "--force")
    assert p.returncode == 0, p.stderr


def _orientation_check(model, src, tmp_path):
    seg = Segmenter(model)
    ref_img = nib.load(str(src))
    ref = seg.segment(src).to_nifti()
    assert ref.shape == ref_img.shape
    np.testing.assert_array_equal(ref.affine, ref_img.affine)
    for codes in (("R", "A", "S"), ("L", "P", "S")):
        moved = _resave(src, tmp_path / f"{''.join(codes)}.nii.gz", codes)
        out = seg.segment(moved).to_nifti()
        assert nib.aff2axcodes(out.affine) == codes
        back = _in_layout_of(out, ref)
        np.testing.assert_allclose(back.affine, ref.affine, atol=1e-4)
        # the same voxels in world space: equal labels (reorientation is exact, so the network
        # sees identical slices; allow nothing more than boundary-voxel differences)
        agree = (np.asanyarray(back.dataobj) == np.asanyarray(ref.dataobj)).mean()
        assert agree >= 0.999, agree
    seg.close()


def test_same_segmentation_in_any_orientation(tiny_model, tmp_path):
    _orientation_check(tiny_model["onnx"], CHU_IMG, tmp_path)


@needs_shared
def test_same_segmentation_for_an_anisotropic_case_in_any_orientation(tiny_model, tmp_path):
    src = SHARED_DATA / "kp_zukic2014" / "AKs5_img.nii.gz"  # 0.7 x 0.7 x 4 mm
    assert nib.load(str(src)).header.get_zooms() == pytest.approx((0.7, 0.7, 4.0), abs=1e-3)
    _orientation_check(tiny_model["onnx"], src, tmp_path)


BAD_INPUTS = ["missing", "empty file", "text named .nii.gz", "truncated gzip", "gzip of garbage",
              "2D", "4D", "NaN voxels", "constant", "1x1x1", "complex", "singular affine",
              "gigantic header"]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_one_line_and_nothing_written(tiny_model, tmp_path, kind):
    path, word = make_bad_inputs(tmp_path / "in")[kind]
    out = tmp_path / "out"
    out.mkdir()
    p = run_scar("infer", path, "-o", out, "--model", tiny_model["onnx"])
    assert_one_line_error(p, word)
    assert list(out.iterdir()) == []


def test_more_bad_invocations(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("x")
    assert_one_line_error(run_scar("infer", empty_dir, "-o", out, "--model",
                                   tiny_model["onnx"]), "no .nii")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(os.urandom(1000))
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model", not_onnx),
                          "not a loadable ONNX model")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model",
                                   tmp_path / "none.onnx"), "no such model")
    # an ONNX model without scar metadata
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Identity", ["image"], ["probs"])], "g",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)])
    plain = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    plain.ir_version = 8
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model",
                                   tmp_path / "plain.onnx"), "not a scar-net model")
    # an output folder that cannot be created (as root, permissions do not stop writes)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", blocker / "sub", "--model",
                                   tiny_model["onnx"]), "output folder")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", blocker, "--model",
                                   tiny_model["onnx"]), "is a file")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model", tiny_model["onnx"],
                                   "--backend", "magic"), "unknown backend")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model", tiny_model["onnx"],
                                   "--device", "cuda"), "cuda")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model", engine), "engine")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model", tiny_model["onnx"],
                                   "--batch", "0"), "batch")
    assert list(out.iterdir()) == []


def test_folder_run_goes_past_a_bad_case(tiny_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CHU_IMG, src / "good.nii.gz")
    (src / "bad.nii.gz").write_text("not an image")
    out = tmp_path / "out"
    p = run_scar("infer", src, "-o", out, "--model", tiny_model["onnx"])
    assert p.returncode != 0
    assert "bad.nii.gz" in p.stderr and "Traceback" not in p.stderr
    assert "1 of 2 case(s) failed" in p.stderr.strip().splitlines()[-1]
    assert (out / "good_seg.nii.gz").is_file()
    assert not list(out.glob("bad*"))


def _complete(path) -> bool:
    name = path.name
    try:
        if name.endswith(".nii.gz"):
            np.asanyarray(nib.load(str(path)).dataobj).sum()
            gzip.decompress(path.read_bytes())
        elif name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".png"):
            with Image.open(path) as im:
                im.load()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("delay", [0.0, 0.4])
def test_sigkill_leaves_no_partial_file(tiny_model, tmp_path, delay):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        shutil.copy(CHU_IMG, src / f"case{i}.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "scar_runtime", "infer", str(src), "-o",
                             str(out), "--model", str(tiny_model["onnx"]), "--batch", "4"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.is_dir() and list(out.glob("*_seg.nii.gz")):
            break
        time.sleep(0.01)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    files = list(out.iterdir())
    assert files, "the run was killed before writing anything: the test proves nothing"
    assert not [f for f in files if f.name.startswith(".")], "temp files left behind"
    bad = [f.name for f in files if not _complete(f)]
    assert not bad, f"partial files: {bad}"


def test_model_whose_metadata_and_graph_disagree_on_channels_is_refused(tiny_model, tmp_path):
    """A 1-channel graph whose metadata claims 2.5D input (3 channels): both CPU backends refuse
    it on load, in one line, instead of failing on the first slice."""
    import onnx

    from scar_runtime.backends.onnxruntime import OnnxRuntimeRunner
    from scar_runtime.backends.openvino import OpenVinoRunner
    from scar_runtime.core.errors import ModelError

    proto = onnx.load(str(tiny_model["onnx"]))
    for p in proto.metadata_props:
        if p.key == "scar.preprocess":
            p.value = json.dumps({**json.loads(p.value), "context_slices": 1})
        if p.key == "scar.format_version":
            p.value = "2"
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    for runner in (OnnxRuntimeRunner(bad), OpenVinoRunner(bad, use_cache=False)):
        with pytest.raises(ModelError, match="takes 1 input channel"):
            runner.activate()
    out = tmp_path / "out"
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--model", bad),
                          "input channel")
    assert not out.exists() or not list(out.iterdir())
