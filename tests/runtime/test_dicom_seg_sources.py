"""De-identified and unusual source series always get a DICOM-SEG: absent type-2 attributes
become empty ones, odd values are normalised or dropped with a note in stats.json, multi-byte
character sets are carried over as UTF-8, deeply nested sequences are never copied, enhanced MR
is referenced frame by frame. Each series is built with pydicom from the real fixture; the
"result" is the fixture's reference mask (no model needed: the writer is what is tested; the
same series segmented by the model: test_dicom_folders.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("highdicom")  # the SEG writer's dependency
pydicom = pytest.importorskip("pydicom")

from dicom_series import (  # noqa: E402
    assert_frames_at_source_slices,
    edit_series,
    nest_patient_sequence,
    write_enhanced,
    write_series,
)
from helpers import CHU_IMG, CHU_SEG  # noqa: E402

from scar_runtime import labels as L  # noqa: E402
from scar_runtime.io import dicom_source, load_volume  # noqa: E402
from scar_runtime.io.case_writer import write_case  # noqa: E402
from scar_runtime.io.dicom_seg import AlgorithmInfo  # noqa: E402
from scar_runtime.pipeline.segmenter import SegmentationResult, default_model_path  # noqa: E402

DEIDENTIFIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "SliceThickness",
                "FrameOfReferenceUID", "ReferringPhysicianName")


def _deidentified(ds):
    for kw in DEIDENTIFIED:
        if kw in ds:
            delattr(ds, kw)


def _setter(**values):
    def change(ds):
        if "SpecificCharacterSet" in values:  # first: the names are encoded with it
            ds.SpecificCharacterSet = values["SpecificCharacterSet"]
        for kw, v in values.items():
            setattr(ds, kw, v)
    return change


# name -> (change to every file, words expected among the notes of stats.json)
SOURCES = {
    "de-identified": (_deidentified, ["FrameOfReferenceUID absent", "SliceThickness absent"]),
    "sex U, ISO dates and times, year-only birth date, two names, charset UTF-8": (
        _setter(PatientSex="U", StudyDate="2026-01-01", StudyTime="12:00:00",
                PatientBirthDate="1970", PatientName=["Doe^John", "Roe^Jane"],
                SpecificCharacterSet="UTF-8"),
        ["PatientSex 'U'", "StudyDate '2026-01-01' written as 20260101",
         "StudyTime '12:00:00' written as 120000", "PatientBirthDate '1970'",
         "PatientName has 2 values", "'UTF-8' is not a DICOM term"]),
    "sex f": (_setter(PatientSex="f"), ["PatientSex 'f' written as F"]),
    "sex MALE": (_setter(PatientSex="MALE"), ["PatientSex 'MALE' written as M"]),
    "Japanese ISO 2022 IR 87": (_setter(SpecificCharacterSet=["", "ISO 2022 IR 87"],
                                        PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう"), []),
    "Korean ISO 2022 IR 149": (_setter(SpecificCharacterSet=["", "ISO 2022 IR 149"],
                                       PatientName="Hong^Gildong=洪^吉洞=홍^길동"), []),
    "ISO_IR 100 and ISO_IR 192": (_setter(SpecificCharacterSet=["ISO_IR 100", "ISO_IR 192"],
                                          PatientName="Müller^Jürgen"), []),
}
MULTI_BYTE = {"Japanese ISO 2022 IR 87": "山田", "Korean ISO 2022 IR 149": "홍",
              "ISO_IR 100 and ISO_IR 192": "Müller"}


@pytest.fixture(scope="module")
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo.for_model(default_model_path())


def _write(series: Path, out: Path, algorithm) -> tuple[SegmentationResult, dict]:
    vol = load_volume(series)
    labels = L.verse_to_model(load_volume(CHU_SEG, as_labels=True).data)
    result = SegmentationResult(volume=vol, labels=labels, keypoints=[])
    out.mkdir(parents=True)
    write_case(result, out, name="case", formats=("nifti", "dicom-seg"), algorithm=algorithm)
    return result, json.loads((out / "case_stats.json").read_text())


def _dciodvfy_errors(path: Path) -> list[str] | None:
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    if not Path(exe).is_file():
        return None
    p = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    report = (p.stdout + p.stderr).splitlines()
    assert "Segmentation" in [line.strip() for line in report], report
    return [line for line in report if line.startswith("Error")]


@pytest.mark.parametrize("kind", list(SOURCES))
def test_unusual_sources_get_a_valid_dicom_seg_with_notes(tmp_path, algorithm, kind):
    change, words = SOURCES[kind]
    write_series(CHU_IMG, tmp_path / "in")
    edit_series(tmp_path / "in", change)
    result, stats = _write(tmp_path / "in", tmp_path / "out", algorithm)
    seg_path = tmp_path / "out" / "case_seg.dcm"
    assert_frames_at_source_slices(seg_path, dicom_source(result.volume).files)
    notes = " | ".join(stats["dicom"]["notes"])
    for w in words:
        assert w in notes, notes
    seg = pydicom.dcmread(seg_path)
    if kind in MULTI_BYTE:
        assert seg.SpecificCharacterSet == "ISO_IR 192"
        assert MULTI_BYTE[kind] in str(seg.PatientName)
    if kind == "de-identified":
        for kw in ("PatientName", "PatientID", "StudyDate", "AccessionNumber"):
            assert kw in seg and not seg[kw].value  # type 2: present, empty
    errors = _dciodvfy_errors(seg_path)
    if errors is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("depth", [250, 3000])
def test_a_deeply_nested_patient_sequence_is_never_copied(tmp_path, algorithm, depth):
    write_series(CHU_IMG, tmp_path / "in")
    nest_patient_sequence(tmp_path / "in", depth)
    start = time.perf_counter()
    result, _ = _write(tmp_path / "in", tmp_path / "out", algorithm)
    assert time.perf_counter() - start < 60
    seg = pydicom.dcmread(tmp_path / "out" / "case_seg.dcm")
    assert "OtherPatientIDsSequence" not in seg
    assert_frames_at_source_slices(tmp_path / "out" / "case_seg.dcm",
                                   dicom_source(result.volume).files)


def test_enhanced_mr_seg_references_its_frames(tmp_path, algorithm):
    write_enhanced(CHU_IMG, tmp_path / "in" / "MF.dcm")
    result, _ = _write(tmp_path / "in", tmp_path / "out", algorithm)
    assert_frames_at_source_slices(tmp_path / "out" / "case_seg.dcm",
                                   dicom_source(result.volume).files)
    errors = _dciodvfy_errors(tmp_path / "out" / "case_seg.dcm")
    assert not errors, errors


def test_force_keeps_the_old_set_whole_when_the_new_one_cannot_be_written(tmp_path, algorithm):
    """A stale file of the set (a DICOM-SEG this run will not write) is removed only once the
    new set is complete: when writing fails, it is back in place, byte for byte."""
    from scar_runtime.core.errors import OutputError

    write_series(CHU_IMG, tmp_path / "in")
    _write(tmp_path / "in", tmp_path / "out", algorithm)
    stale = (tmp_path / "out" / "case_seg.dcm").read_bytes()
    (tmp_path / "out" / "case_preview.png").unlink()
    (tmp_path / "out" / "case_preview.png").mkdir()  # the new set cannot be written
    vol = load_volume(tmp_path / "in")
    labels = L.verse_to_model(load_volume(CHU_SEG, as_labels=True).data)
    result = SegmentationResult(volume=vol, labels=labels, keypoints=[])
    with pytest.raises(OutputError, match="is a folder"):
        write_case(result, tmp_path / "out", name="case", formats=("nifti",),
                   algorithm=algorithm, force=True)
    assert (tmp_path / "out" / "case_seg.dcm").read_bytes() == stale
    (tmp_path / "out" / "case_preview.png").rmdir()
    write_case(result, tmp_path / "out", name="case", formats=("nifti",), algorithm=algorithm,
               force=True)
    assert not (tmp_path / "out" / "case_seg.dcm").exists()
    assert not [f for f in (tmp_path / "out").iterdir() if f.name.startswith(".")]
