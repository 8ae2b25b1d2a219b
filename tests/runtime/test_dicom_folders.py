"""`scar infer` on real folders with the model: a folder holding NIfTI files and DICOM studies
(unusual ones among them) segments every case, each DICOM case agreeing with the NIfTI run in
world space; a re-run into the study folder never takes scar-net's own outputs as inputs;
--force leaves no stale file of the case's set; SIGTERM ends a run with one line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from dicom_series import (  # noqa: E402
    SeriesSpec,
    assert_frames_at_source_slices,
    edit_series,
    nest_patient_sequence,
    write_enhanced,
    write_localizer,
    write_series,
)
from helpers import (  # noqa: E402
    CHU_IMG,
    REPO,
    TEST_DATA,
    assert_one_line_error,
    default_signals,
    run_scar,
)
from test_dicom_seg_sources import SOURCES  # noqa: E402

CHU_DICOM = TEST_DATA / "fcs_vb2_chu_06_2mm_dicom"
STEM = "fcs_vb2_chu_06_2mm_img"


@pytest.fixture(scope="module")
def model(shipped_or_tiny_model):
    return shipped_or_tiny_model


@pytest.fixture(scope="module")
def nifti_run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("nifti_run")
    p = run_scar("infer", CHU_IMG, "-o", out, *_pinned(model), timeout=900)
    assert p.returncode == 0, p.stderr
    return nib.load(str(out / f"{STEM}_seg.nii.gz"))


def _pinned(model):
    return ("--model", model, "--backend", "onnxruntime")


def world_agreement(seg: nib.Nifti1Image, ref: nib.Nifti1Image) -> float:
    """The fraction of voxels with the same label, ``seg`` brought onto ``ref``'s grid by
    reorientation only (the grids must coincide in world space)."""
    xform = nib.orientations.ornt_transform(nib.io_orientation(seg.affine),
                                            nib.io_orientation(ref.affine))
    back = seg.as_reoriented(xform)
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-3)
    return float(np.mean(np.asanyarray(back.dataobj) == np.asanyarray(ref.dataobj)))


def test_a_mixed_folder_segments_every_case_it_holds(model, nifti_run, tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    shutil.copy(CHU_IMG, root / "top.nii.gz")  # a NIfTI at the top ...
    (root / "converted" / "sub-01").mkdir(parents=True)  # ... and one nested
    shutil.copy(CHU_IMG, root / "converted" / "sub-01" / "T2w.nii.gz")
    studies = {}
    for name, key in (("deid", "de-identified"), ("odd", next(k for k in SOURCES if "UTF-8"
                                                                  in k)),
                      ("jp", "Japanese ISO 2022 IR 87"), ("kr", "Korean ISO 2022 IR 149"),
                      ("latin_utf8", "ISO_IR 100 and ISO_IR 192")):
        write_series(CHU_IMG, root / "dicom" / name)
        edit_series(root / "dicom" / name, SOURCES[key][0])
        studies[f"dicom_{name}"] = root / "dicom" / name
    write_series(CHU_IMG, root / "dicom" / "nested_seq")
    nest_patient_sequence(root / "dicom" / "nested_seq", 3000)
    studies["dicom_nested_seq"] = root / "dicom" / "nested_seq"
    write_enhanced(CHU_IMG, root / "dicom" / "enhanced" / "MF.dcm")
    studies["dicom_enhanced"] = root / "dicom" / "enhanced"
    shutil.copytree(CHU_DICOM, root / "dicom" / "with_scout" / "t2")  # + a 3-plane localizer
    study_uid = pydicom.dcmread(next(CHU_DICOM.iterdir())).StudyInstanceUID
    write_localizer(CHU_IMG, root / "dicom" / "with_scout" / "scout", study_uid)
    studies["dicom_with_scout"] = root / "dicom" / "with_scout"
    # a stray converter output inside a study is a case too, never a switch to "NIfTI mode"
    shutil.copy(CHU_IMG, root / "dicom" / "deid" / "converted.nii.gz")
    out = tmp_path / "out"
    p = run_scar("infer", root, "-o", out, *_pinned(model), timeout=1800)
    assert p.returncode == 0, p.stderr
    rows = (out / "results.csv").read_text().splitlines()
    expected = {"top", "converted_sub-01_T2w", "dicom_deid_converted", *studies}
    assert {r.split(",")[0] for r in rows[1:]} == expected
    for name in ("top", "converted_sub-01_T2w", "dicom_deid_converted"):
        assert world_agreement(nib.load(str(out / f"{name}_seg.nii.gz")), nifti_run) == 1.0
    agreement = {}
    for name, folder in studies.items():
        seg = nib.load(str(out / f"{name}_seg.nii.gz"))
        agreement[name] = world_agreement(seg, nifti_run)
        files = [f for f in folder.rglob("*") if f.is_file() and not f.name.endswith(".nii.gz")
                 and "scout" not in f.parts]
        assert_frames_at_source_slices(out / f"{name}_seg.dcm", files)
        stats = json.loads((out / f"{name}_stats.json").read_text())
        assert stats["dicom"]["series_instance_uid"] == pydicom.dcmread(
            files[0]).SeriesInstanceUID
    assert min(agreement.values()) >= 0.999, agreement
    print("world-space agreement with the NIfTI run:", agreement)


def test_a_rerun_into_the_study_folder_never_takes_its_own_outputs(model, nifti_run, tmp_path):
    study = tmp_path / "STUDY"
    shutil.copytree(CHU_DICOM, study)
    p = run_scar("infer", study, *_pinned(model), timeout=900)
    assert p.returncode == 0, p.stderr
    first = sorted(f.name for f in study.iterdir())
    assert {"STUDY_seg.nii.gz", "STUDY_seg.dcm", "STUDY_stats.json"} <= set(first)
    # again: one case (the study), whose outputs exist: refused without --force ...
    assert_one_line_error(run_scar("infer", study, *_pinned(model)), "already exists")
    assert sorted(f.name for f in study.iterdir()) == first
    # ... and replaced with it; never a STUDY_seg_seg.* from segmenting the label map
    p = run_scar("infer", study, *_pinned(model), "--force", timeout=900)
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in study.iterdir()) == first
    assert world_agreement(nib.load(str(study / "STUDY_seg.nii.gz")), nifti_run) >= 0.999


def test_force_removes_a_stale_file_of_the_case_set(model, tmp_path):
    """CD exports are all named DICOM: patient B's run (here without a DICOM-SEG) must not leave
    patient A's DICOM-SEG beside B's stats."""
    a, b = tmp_path / "cd_a" / "DICOM", tmp_path / "cd_b" / "DICOM"
    shutil.copytree(CHU_DICOM, a)
    write_series(CHU_IMG, b, SeriesSpec(patient_id="patient-b"))
    out = tmp_path / "out"
    assert run_scar("infer", a, "-o", out, *_pinned(model), timeout=900).returncode == 0
    assert (out / "DICOM_seg.dcm").is_file()
    # without --force the stale SEG is an existing output like any other
    assert_one_line_error(run_scar("infer", b, "-o", out, *_pinned(model), "--format",
                                   "nifti"), "already exists")
    p = run_scar("infer", b, "-o", out, *_pinned(model), "--format", "nifti", "--force",
                 timeout=900)
    assert p.returncode == 0, p.stderr
    assert not (out / "DICOM_seg.dcm").exists()
    stats = json.loads((out / "DICOM_stats.json").read_text())
    assert stats["dicom"]["series_instance_uid"] == pydicom.dcmread(
        next(b.iterdir())).SeriesInstanceUID
    assert not [f for f in out.iterdir() if f.name.startswith(".")]


def test_sigterm_during_inference_is_one_line_and_non_zero(model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        shutil.copy(CHU_IMG, src / f"c{i}.nii.gz")
    proc = subprocess.Popen([sys.executable, "-m", "scar_runtime", "infer", str(src), "-o",
                             str(tmp_path / "out"), *map(str, _pinned(model))], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    first = proc.stderr.readline()  # "model ... on ...": the run has started segmenting
    assert first.startswith("model "), first + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 130, rest
    lines = rest.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scar: interrupted: terminated by SIGTERM"), \
        rest
    assert "Traceback" not in rest
