"""The `scar` CLI as users run it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from helpers import (
    CHU_IMG,
    CHU_SEG,
    IVD_SEG,
    REPO,
    assert_one_line_error,
    make_bad_inputs,
    run_scar,
)


def test_evaluate_seg_with_itself(tmp_path):
    out = tmp_path / "scores.json"
    p = run_scar("evaluate", CHU_SEG, CHU_SEG, "--json", out)
    assert p.returncode == 0, p.stderr
    for name in ("L1", "L2", "L3", "L4", "L5"):
        line = next(x for x in p.stdout.splitlines() if f" {name} " in x)
        assert "1.000" in line
    for name in ("L1/L2", "L5/S1"):
        line = next(x for x in p.stdout.splitlines() if f" {name} " in x)
        assert "not labelled" in line
    doc = json.loads(out.read_text())
    st = {s["name"]: s for s in doc["cases"][0]["structures"]}
    assert st["L3"]["dice_3d"] == 1.0 and st["L3/L4"]["status"] == "not labelled"
    assert st["L3/L4"]["dice_3d"] is None
    # an existing --json is not replaced without --force
    p = run_scar("evaluate", CHU_SEG, CHU_SEG, "--json", out)
    assert_one_line_error(p, "already exists")
    assert run_scar("evaluate", CHU_SEG, CHU_SEG, "--json", out, "--force").returncode == 0


def test_evaluate_folders_matched_by_name(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    seg = nib.load(str(CHU_SEG))
    data = np.asanyarray(seg.dataobj).copy()
    nib.save(seg, str(gt / "06_seg.nii.gz"))
    data[data == 22] = 0  # the prediction missed L3
    nib.save(nib.Nifti1Image(data, seg.affine, seg.header), str(pred / "06_img_seg.nii.gz"))
    nib.save(nib.load(str(IVD_SEG)), str(gt / "25_seg.nii.gz"))  # no prediction for this one
    p = run_scar("evaluate", pred, gt, "--json", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    assert "no prediction" in p.stderr and "25" in p.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    st = {s["name"]: s for s in doc["cases"][0]["structures"]}
    assert st["L3"]["dice_3d"] == 0.0 and st["L4"]["dice_3d"] == 1.0
    assert doc["missing"] == ["25"]


@pytest.mark.parametrize("kind", ["missing", "text named .nii.gz", "truncated gzip", "2D", "4D",
                                  "gzip of garbage", "empty file", "complex", "singular affine",
                                  "gigantic header", "not NIfTI extension"])
def test_evaluate_bad_inputs_one_line(tmp_path, kind):
    path, word = make_bad_inputs(tmp_path)[kind]
    assert_one_line_error(run_scar("evaluate", path, CHU_SEG), word)
    assert_one_line_error(run_scar("evaluate", CHU_SEG, path), word)


def test_evaluate_shape_mismatch(tmp_path):
    assert_one_line_error(run_scar("evaluate", CHU_SEG, IVD_SEG), "shape")


def test_evaluate_image_is_not_labels():
    # an intensity image passed as a label map: values above 255 are not VerSe ids either
    p = run_scar("evaluate", CHU_IMG, CHU_SEG, "--pred-labels", "model")
    assert_one_line_error(p, "not a model class")


def test_import_does_not_pull_torch():
    code = ("import sys, scar_runtime, scar_runtime.commands.cli, scar_runtime.io, "
            "scar_runtime.evaluation.metrics, scar_runtime.pipeline.preprocess, "
            "scar_runtime.evaluation.dataset, scar_runtime.evaluation.evaluate, "
            "scar_runtime.evaluation.model_card, "
            "scar_runtime.evaluation.tables, scar_runtime.pipeline.segmenter, "
            "scar_runtime.commands.infer, "
            "scar_runtime.io.case_writer, scar_runtime.io.preview, scar_runtime.postprocess, "
            "scar_runtime.backends.onnxruntime, scar_runtime.backends.tensorrt; "
            "from scar_runtime import Segmenter; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'scar_train', 'scar_export')]; print(bad); assert not bad")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


def test_help_lists_commands_and_time_is_reported():
    t0 = time.perf_counter()
    p = run_scar("--help")
    elapsed = time.perf_counter() - t0
    assert p.returncode == 0
    for cmd in ("train", "export", "evaluate", "labels"):
        assert cmd in p.stdout
    # Measured, not asserted (wall-clock bounds belong to benchmarks/): shown with -rA / -s.
    print(f"scar --help took {elapsed:.3f} s (subprocess, including interpreter start)")


def test_unknown_command_and_version():
    p = run_scar("frobnicate")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = run_scar("--version")
    assert p.returncode == 0 and "scar-net" in p.stdout
