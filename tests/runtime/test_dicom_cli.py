"""`scar infer` on DICOM folders, as a user runs it: the same segmentation in world space as for
the NIfTI the series was made from, DICOM-SEG beside it, UIDs in the JSON, a folder of studies
that goes on past a bad study, and bad DICOM input refused in one line with nothing written."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from dicom_series import SeriesSpec, seg_in_world, write_series  # noqa: E402
from helpers import (  # noqa: E402
    CHU_IMG,
    TEST_DATA,
    assert_infer_refuses,
    assert_one_line_error,
    run_scar,
)
from PIL import Image  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from test_dicom_refusals import REFUSED  # noqa: E402

CHU_DICOM = TEST_DATA / "fcs_vb2_chu_06_2mm_dicom"
MPEG2 = "1.2.840.10008.1.2.4.100"  # a video transfer syntax no pixel decoder reads


@pytest.fixture(scope="module")
def model(shipped_or_tiny_model):
    return shipped_or_tiny_model


def _run_model(model):
    # one named backend for every run: the comparisons are between identical computations, and
    # "auto" may first time the installed backends on this machine
    return ("--model", model, "--backend", "onnxruntime")


def in_layout_of(img, ref):
    xform = nib.orientations.ornt_transform(nib.io_orientation(img.affine),
                                            nib.io_orientation(ref.affine))
    return img.as_reoriented(xform)


def test_dicom_and_nifti_give_the_same_segmentation_in_world_space(model, tmp_path):
    p = run_scar("infer", CHU_IMG, "-o", tmp_path / "nifti", *_run_model(model), timeout=900)
    assert p.returncode == 0, p.stderr
    stem = "fcs_vb2_chu_06_2mm_img"
    ref = nib.load(str(tmp_path / "nifti" / f"{stem}_seg.nii.gz"))
    ref_kp = json.loads((tmp_path / "nifti" / f"{stem}_keypoints.json").read_text())
    swapped = tmp_path / "swapped"  # rows/columns swapped, slices reversed, nested, no extension
    write_series(CHU_IMG, swapped, SeriesSpec(axcodes=("I", "P", "R"), reverse_instances=True,
                                              layout="nested"))
    for series, name in ((CHU_DICOM, CHU_DICOM.name), (swapped, "swapped")):
        out = tmp_path / f"out_{name}"
        p = run_scar("infer", series, "-o", out, *_run_model(model), timeout=900)
        assert p.returncode == 0, p.stderr
        seg = nib.load(str(out / f"{name}_seg.nii.gz"))
        first = pydicom.dcmread(next(f for f in series.rglob("*") if f.is_file()))
        assert seg.shape[:2] == (first.Columns, first.Rows)  # the series' own geometry
        back = in_layout_of(seg, ref)
        np.testing.assert_allclose(back.affine, ref.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(ref.dataobj))
        kp = json.loads((out / f"{name}_keypoints.json").read_text())
        assert kp["dicom"]["series_instance_uid"] == first.SeriesInstanceUID
        assert kp["dicom"]["study_instance_uid"] == first.StudyInstanceUID
        for a, b in zip(kp["keypoints"], ref_kp["keypoints"], strict=True):
            assert a["name"] == b["name"]
            np.testing.assert_allclose(a["world_mm"], b["world_mm"], atol=0.05)
            assert a["sop_instance_uid"] in kp["dicom"]["sop_instance_uids"]
            np.testing.assert_allclose(nib.affines.apply_affine(seg.affine, a["voxel"]),
                                       a["world_mm"], atol=0.05)
        stats = json.loads((out / f"{name}_stats.json").read_text())
        assert stats["dicom"]["series_instance_uid"] == first.SeriesInstanceUID
        if np.asanyarray(ref.dataobj).any():
            dcm = hd.seg.segread(out / f"{name}_seg.dcm")
            assert dcm.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
            np.testing.assert_array_equal(seg_in_world(dcm, seg), np.asanyarray(seg.dataobj))
        assert not [f for f in out.iterdir() if f.name.startswith(".")]
    # a second run refuses to replace the DICOM-SEG and the rest without --force
    assert_one_line_error(run_scar("infer", swapped, "-o", tmp_path / "out_swapped", "--model",
                                   model), "already exists")


def test_a_folder_of_studies_goes_past_a_bad_study(model, tmp_path):
    root = tmp_path / "studies"
    shutil.copytree(CHU_DICOM, root / "good")
    write_series(CHU_IMG, root / "bad", SeriesSpec(shuffle=None))
    (root / "bad" / "IM0019.dcm").unlink()  # a missing slice
    out = tmp_path / "out"
    p = run_scar("infer", root, "-o", out, *_run_model(model), "--format", "nifti",
                 timeout=900)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "1 of 2 case(s) failed: bad" in last, p.stderr
    assert "missing slice" in p.stderr
    assert (out / "good_seg.nii.gz").is_file() and (out / "good_keypoints.json").is_file()
    assert not list(out.glob("*.dcm")), "--format nifti writes no DICOM-SEG"
    assert not list(out.glob("bad*"))


def test_series_option_and_dicom_seg_only(model, tmp_path):
    study = generate_uid()
    uids = [generate_uid() for _ in range(2)]
    for i, uid in enumerate(uids):
        write_series(CHU_IMG, tmp_path / "study" / f"s{i}",
                     SeriesSpec(study_uid=study, series_uid=uid, series_number=i + 1))
    out = tmp_path / "out"
    p = run_scar("infer", tmp_path / "study", "-o", out, *_run_model(model))
    assert_one_line_error(p, "--series", uids[0], uids[1])
    assert not out.exists() or not list(out.iterdir())
    p = run_scar("infer", tmp_path / "study", "-o", out, *_run_model(model), "--series", uids[1],
                 "--format", "dicom-seg", timeout=900)
    assert p.returncode == 0, p.stderr
    assert not list(out.glob("*.nii.gz"))
    kp = json.loads(next(out.glob("*_keypoints.json")).read_text())
    assert kp["dicom"]["series_instance_uid"] == uids[1]
    for f in out.glob("*_seg.dcm"):
        assert hd.seg.segread(f).ReferencedSeriesSequence[0].SeriesInstanceUID == uids[1]


def test_format_options_that_cannot_work(tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--format", "dicom-seg"),
                          "needs a DICOM series")
    assert_one_line_error(run_scar("infer", CHU_DICOM, "-o", out, "--format", "dicomseg"),
                          "unknown --format")
    assert_one_line_error(run_scar("infer", CHU_IMG, "-o", out, "--series", "1.2.3"),
                          "--series")
    assert not out.exists() or not list(out.iterdir())


# --------------------------------------------------------------------------- bad DICOM input


def _fixture_copy(folder):
    shutil.copytree(CHU_DICOM, folder)
    return sorted(folder.iterdir())


def _edit(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _mixed(folder):
    study = generate_uid()
    for i in range(2):
        write_series(CHU_IMG, folder / f"series{i}", SeriesSpec(study_uid=study,
                                                                series_number=i + 1))
    return "--series"


def _truncated(folder):
    files = _fixture_copy(folder)
    files[10].write_bytes(files[10].read_bytes()[: files[10].stat().st_size * 2 // 3])
    return files[10].name


def _missing_slice(folder):
    files = _fixture_copy(folder)
    files[19].unlink()
    return "missing slice"


def _duplicated(folder):
    files = _fixture_copy(folder)
    dup = folder / "IM9999.dcm"
    shutil.copy(files[5], dup)
    _edit(dup, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    return "duplicated slice position"


def _non_image_only(folder):
    folder.mkdir()
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "SR"
    ds.PatientID, ds.ValueType = "scar-test", "CONTAINER"
    ds.save_as(folder / "report.dcm", enforce_file_format=True)
    return "non-image"


def _dicomdir_only(folder):
    from pydicom.fileset import FileSet

    fs = FileSet()
    for f in sorted(CHU_DICOM.iterdir())[:3]:
        fs.add(pydicom.dcmread(f))
    fs.write(folder)
    for f in folder.rglob("*"):
        if f.is_file() and f.name != "DICOMDIR":
            f.unlink()
    return "DICOMDIR"


def _no_pixel_data(folder):
    for f in _fixture_copy(folder):
        _edit(f, lambda ds: delattr(ds, "PixelData"))
    return "no pixel data"


def _undecodable(folder):
    def mpeg(ds):
        ds.file_meta.TransferSyntaxUID = MPEG2
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(400)])
        ds["PixelData"].VR = "OB"

    for f in write_series(CHU_IMG, folder):
        _edit(f, mpeg)
    return "transfer syntax"


def _inconsistent_orientation(folder):
    files = _fixture_copy(folder)
    a = np.deg2rad(20)
    _edit(files[7], lambda ds: setattr(ds, "ImageOrientationPatient",
                                       [0, np.cos(a), np.sin(a), 0, np.sin(a), -np.cos(a)]))
    return "different orientation"


def _jpegs(folder):
    folder.mkdir()
    data = np.asanyarray(nib.load(str(CHU_IMG)).dataobj)
    for k in range(3):
        Image.fromarray(data[:, :, 10 + k].astype(np.uint8)).save(folder / f"slice{k}.jpg")
    return "no DICOM files"


def _non_uniform(folder):
    files = _fixture_copy(folder)

    def shift(ds):  # 0.8 mm along the slice normal, within a 2 mm stack
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) - 0.8,
                                   *map(float, ds.ImagePositionPatient[1:])]
    _edit(files[10], shift)
    return "non-uniform slice spacing"


def _different_size(folder):
    files = write_series(CHU_IMG, folder)

    def crop(ds):
        px = ds.pixel_array[:-4]
        ds.Rows, ds.PixelData = px.shape[0], px.tobytes()
    _edit(files[3], crop)
    return "different size"


def _malformed_value(folder):
    files = _fixture_copy(folder)
    raw = files[4].read_bytes()
    spacing = b"\x28\x00\x30\x00DS\x08\x002.0\\2.0 "  # (0028,0030) PixelSpacing 2.0, 2.0
    assert raw.count(spacing) == 1
    files[4].write_bytes(raw.replace(spacing, spacing[:8] + b"abc\\2.0 "))  # not a number
    return "PixelSpacing"


def _axial_only(folder):
    write_series(CHU_IMG, folder, SeriesSpec(axcodes=("L", "P", "I")))
    return "no sagittal MR"


BAD_DICOM = {
    "mixed series without --series": _mixed,
    "one truncated file in a series": _truncated,
    "a missing slice": _missing_slice,
    "duplicated positions": _duplicated,
    "a non-image object only": _non_image_only,
    "a DICOMDIR only": _dicomdir_only,
    "no pixel data": _no_pixel_data,
    "an undecodable transfer syntax": _undecodable,
    "inconsistent orientation": _inconsistent_orientation,
    "a folder of JPEGs": _jpegs,
    "non-uniform slice spacing": _non_uniform,
    "slices of different size": _different_size,
    "an axial series only": _axial_only,
    "a malformed attribute value": _malformed_value,
    **REFUSED,  # test_dicom_refusals.py: pixel data length, duplicate UIDs, localizers, echoes
}


@pytest.mark.parametrize("kind", list(BAD_DICOM))
def test_bad_dicom_one_line_and_nothing_written(tmp_path, kind):
    # a bad series is refused before any model is loaded, so the default model is fine here
    assert_infer_refuses(tmp_path, BAD_DICOM[kind])


def test_unknown_series_uid(tmp_path):
    out = tmp_path / "out"
    p = run_scar("infer", CHU_DICOM, "-o", out, "--series", "1.2.3.4.5")
    assert_one_line_error(p, "no series 1.2.3.4.5")
    assert not out.exists() or not list(out.iterdir())
