"""DICOM-SEG out: a real label map (the fixture's reference mask) on a real DICOM series, written
with the other outputs, read back with highdicom and pydicom, checked with dciodvfy when it is
installed (no model needed: the writer is what is tested)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from dicom_series import seg_in_world  # noqa: E402
from helpers import CHU_IMG, CHU_SEG, TEST_DATA  # noqa: E402

from scar_runtime import __version__  # noqa: E402
from scar_runtime import labels as L  # noqa: E402
from scar_runtime.core.errors import ConfigError  # noqa: E402
from scar_runtime.io import dicom_source, load_volume  # noqa: E402
from scar_runtime.io.case_writer import write_case  # noqa: E402
from scar_runtime.io.dicom_seg import AlgorithmInfo, make_segmentation, segment_label  # noqa: E402
from scar_runtime.pipeline.segmenter import SegmentationResult, default_model_path  # noqa: E402

CHU_DICOM = TEST_DATA / "fcs_vb2_chu_06_2mm_dicom"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def algorithm() -> AlgorithmInfo:
    model = default_model_path()
    assert model is not None, "scar-net ships a model"
    return AlgorithmInfo.for_model(model)


def reference_result(series: Path) -> SegmentationResult:
    """The fixture's own reference mask (VerSe ids -> model classes) as the 'result' for the
    DICOM series: real anatomy, known answer."""
    vol = load_volume(series)
    ref = load_volume(CHU_SEG, as_labels=True)
    assert np.allclose(ref.affine, vol.affine, atol=1e-4)  # same grid in the working layout
    return SegmentationResult(volume=vol, labels=L.verse_to_model(ref.data), keypoints=[])


def test_dicom_seg_matches_the_nifti_output_and_the_reference(tmp_path, algorithm):
    result = reference_result(CHU_DICOM)
    out = tmp_path / "out"
    out.mkdir()
    written = write_case(result, out, name="chu06", formats=("nifti", "dicom-seg"),
                         algorithm=algorithm)
    assert {p.name for p in written} >= {"chu06_seg.nii.gz", "chu06_seg.dcm"}
    nifti = nib.load(str(out / "chu06_seg.nii.gz"))
    # NIfTI for DICOM input: the series' own geometry (column, row, slice), world-equal to the
    # NIfTI the series was made from
    src = dicom_source(result.volume)
    first = pydicom.dcmread(src.files[0])
    assert nifti.shape == (first.Columns, first.Rows, len(src.files))
    ref = nib.load(str(CHU_SEG))
    ras = nib.orientations
    back = nifti.as_reoriented(ras.ornt_transform(nib.io_orientation(nifti.affine),
                                                  nib.io_orientation(ref.affine)))
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj),
                                  L.verse_to_model(np.asanyarray(ref.dataobj)))
    # the DICOM-SEG: same masks at the same world positions as the NIfTI output
    seg = hd.seg.segread(out / "chu06_seg.dcm")
    np.testing.assert_array_equal(seg_in_world(seg, nifti), np.asanyarray(nifti.dataobj))


def test_dicom_seg_is_a_valid_segmentation_with_coded_levels(tmp_path, algorithm):
    result = reference_result(CHU_DICOM)
    ds = make_segmentation(result, algorithm)
    path = tmp_path / "seg.dcm"
    ds.save_as(path, enforce_file_format=True)
    seg = pydicom.dcmread(path)
    src = dicom_source(result.volume)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == src.study_instance_uid
    assert seg.FrameOfReferenceUID == src.frame_of_reference_uid
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == src.series_instance_uid
    assert {r.ReferencedSOPInstanceUID for r in refs.ReferencedInstanceSequence} <= set(
        src.sop_instance_uids)
    present = sorted(int(v) for v in np.unique(result.labels) if v)
    assert len(seg.SegmentSequence) == len(present) >= 5  # one segment per structure found
    sct = {"L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002",
           "L5": "49668003", "T12": "23215003"}
    for d, cls in zip(seg.SegmentSequence, present, strict=True):
        s = L.BY_ID[cls]
        assert d.SegmentLabel == segment_label(s) == f"{s.name} vertebral body"
        assert s.name in d.SegmentDescription
        cat, typ = d.SegmentedPropertyCategoryCodeSequence[0], \
            d.SegmentedPropertyTypeCodeSequence[0]
        assert (cat.CodingSchemeDesignator, cat.CodeValue) == ("SCT", "91723000")
        assert typ.CodingSchemeDesignator == "SCT" and typ.CodeValue == sct[s.name]
        assert d.SegmentAlgorithmType == "AUTOMATIC"
        algo = d.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "scar-net" and algo.AlgorithmVersion == __version__
        assert algorithm.model_sha256 in algo.AlgorithmParameters
    assert seg.DeviceSerialNumber == algorithm.model_sha256
    assert seg.SoftwareVersions == __version__
    # the same source and model give the same SEG identity (a PACS replaces, not duplicates)
    again = make_segmentation(result, algorithm)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (seg.SeriesInstanceUID,
                                                               seg.SOPInstanceUID)


def test_disc_segments_are_coded_as_discs(tmp_path, algorithm):
    from dicom_series import SeriesSpec, write_series
    from helpers import IVD_IMG, IVD_SEG

    write_series(IVD_IMG, tmp_path / "ivd", SeriesSpec(axcodes=("I", "P", "R")))
    vol = load_volume(tmp_path / "ivd")
    labels = L.verse_to_model(load_volume(IVD_SEG, as_labels=True).data)
    ds = make_segmentation(SegmentationResult(volume=vol, labels=labels, keypoints=[]),
                           algorithm)
    codes = {d.SegmentLabel: d.SegmentedPropertyTypeCodeSequence[0].CodeValue
             for d in ds.SegmentSequence}
    assert codes["L3/L4 intervertebral disc"] == "62551000"
    assert codes["L5/S1 intervertebral disc"] == "715056000"
    assert len(codes) == 5


def test_dciodvfy_finds_no_error(tmp_path, algorithm):
    # dicom3tools (the dev extra) puts it beside the interpreter of the venv
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    if not Path(exe).is_file():
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    path = tmp_path / "seg.dcm"
    make_segmentation(reference_result(CHU_DICOM), algorithm).save_as(
        path, enforce_file_format=True)
    p = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    report = (p.stdout + p.stderr).splitlines()
    assert report and report[0].strip() == "Segmentation"
    errors = [line for line in report if line.startswith("Error")]
    assert not errors, "\n".join(report)


def test_no_structure_no_dicom_seg_and_nifti_input_refused(tmp_path, algorithm):
    vol = load_volume(CHU_DICOM)
    empty = SegmentationResult(volume=vol, labels=np.zeros(vol.shape, np.uint8), keypoints=[])
    out = tmp_path / "out"
    out.mkdir()
    written = write_case(empty, out, name="x", formats=("dicom-seg",), algorithm=algorithm)
    assert not (out / "x_seg.dcm").exists() and (out / "x_stats.json") in written
    stats = json.loads((out / "x_stats.json").read_text())
    assert stats["dicom"]["series_instance_uid"] == dicom_source(vol).series_instance_uid
    nifti_vol = load_volume(CHU_IMG)
    with pytest.raises(ConfigError, match="DICOM series"):
        make_segmentation(SegmentationResult(volume=nifti_vol, labels=np.ones(
            nifti_vol.shape, np.uint8), keypoints=[]), algorithm)
