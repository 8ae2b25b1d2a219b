"""DICOM that must be refused at once, in one line, with nothing written (no model needed: a bad
series is refused before any model is loaded), and DICOM that must NOT be refused: 3-plane
localizers beside the real series, enhanced multi-frame MR, unreadable entries listed."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from dicom_series import (  # noqa: E402
    SeriesSpec,
    edit_series,
    write_enhanced,
    write_localizer,
    write_series,
)
from helpers import (  # noqa: E402
    CHU_IMG,
    TEST_DATA,
    assert_one_line_error,
    run_scar,
)
from pydicom.uid import generate_uid  # noqa: E402

from scar_runtime.core.errors import InvalidImageError  # noqa: E402
from scar_runtime.io import dicom_source, load_volume  # noqa: E402

CHU_DICOM = TEST_DATA / "fcs_vb2_chu_06_2mm_dicom"


def _native(folder):
    return write_series(CHU_IMG, folder, SeriesSpec(shuffle=None))


def _one_column_too_few(folder):
    # the pixels stay, the header says one column less: pydicom alone reads a sheared image
    def narrow(ds):
        ds.Columns = ds.Columns - 1
    _native(folder)
    edit_series(folder, narrow)
    return "pixel data of"


def _one_row_too_few(folder):
    def shrink(ds):  # every slice: pydicom alone would drop the last row silently
        ds.Rows = ds.Rows - 1
    _native(folder)
    edit_series(folder, shrink)
    return "does not describe the pixels"


def _duplicate_sop_instance_uid(folder):
    files = _native(folder)
    uid = pydicom.dcmread(files[3]).SOPInstanceUID

    def same(ds):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds = pydicom.dcmread(files[9])
    same(ds)
    ds.save_as(files[9], enforce_file_format=True)
    return "duplicate SOPInstanceUID"


def _localizer_only(folder):
    write_localizer(CHU_IMG, folder, generate_uid())
    return "localizer"


def _enhanced_multi_echo(folder):
    # two frames at every position (two echoes): not one stack
    n = 39
    write_enhanced(CHU_IMG, folder / "MF.dcm", frame_order=list(range(n)) + list(range(n)))
    return "multi-frame (enhanced) MR is not supported"


REFUSED = {
    "one column too few in the header": _one_column_too_few,
    "one row too few in the header": _one_row_too_few,
    "two slices sharing a SOPInstanceUID": _duplicate_sop_instance_uid,
    "a 3-plane localizer only": _localizer_only,
    "enhanced MR with two echoes": _enhanced_multi_echo,
}
# Each is run through `scar infer` with test_dicom_cli's broken series (BAD_DICOM): one line,
# nothing written, the input untouched.


def test_a_3_plane_localizer_is_not_a_second_sagittal_series(tmp_path):
    study = pydicom.dcmread(next(CHU_DICOM.iterdir())).StudyInstanceUID
    shutil.copytree(CHU_DICOM, tmp_path / "study" / "t2")
    write_localizer(CHU_IMG, tmp_path / "study" / "loc", study)
    vol = load_volume(tmp_path / "study")
    assert len(dicom_source(vol).sop_instance_uids) == 39
    np.testing.assert_array_equal(vol.data, load_volume(CHU_IMG).data)


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_enhanced_multi_frame_mr_is_read_from_its_functional_groups(tmp_path, order):
    frames = list(range(39))[::-1] if order == "reversed" else list(
        np.random.default_rng(3).permutation(39))
    write_enhanced(CHU_IMG, tmp_path / "mf" / "MF.dcm", frame_order=[int(i) for i in frames])
    vol, ref = load_volume(tmp_path / "mf"), load_volume(CHU_IMG)
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    src = dicom_source(vol)
    # slice k of the volume is frame frames[k] of the file... in slice order along the normal
    assert sorted(src.frame_numbers) == list(range(1, 40))


def test_unreadable_entries_of_a_dicom_folder_are_listed(tmp_path):
    root = tmp_path / "studies"
    shutil.copytree(CHU_DICOM, root / "good")
    shutil.copytree(CHU_DICOM, root / "locked")
    edit_series(root / "locked", lambda ds: setattr(ds, "StudyInstanceUID", "1.2.3.4.5"))
    os.symlink(root / "nowhere", root / "locked" / "IM9999")  # a broken link among the slices
    os.mkfifo(root / "stray_fifo")  # beside no study: a failed case of its own
    p = run_scar("infer", root, "-o", tmp_path / "out", "--format", "nifti", "--model",
                 "/nonexistent.onnx")
    # the model is checked before any case runs, so this run ends there: list the cases instead
    assert p.returncode == 1 and "Traceback" not in p.stderr
    from scar_runtime.commands.infer import find_cases

    cases = {c.name: c for c in find_cases(root)}
    assert set(cases) == {"good", "locked", "studies"}  # the FIFO: a case of the top folder
    with pytest.raises(Exception, match="IM9999"):
        cases["locked"].load()
    with pytest.raises(Exception, match="not a readable regular file"):
        cases["studies"].load()
    assert dicom_source(cases["good"].load()) is not None


def test_an_undefined_length_sequence_too_deep_to_parse_is_one_line(tmp_path):
    """pydicom parses undefined-length sequences as it reads, recursively: 3000 levels cannot be
    read at all, and that is said in one line (defined-length ones are segmented:
    test_dicom_seg_sources.py)."""
    _native(tmp_path / "in")
    level = b"\x10\x00\x02\x10SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    marker = b"\x10\x00\x02\x10SQ\x00\x00\x00\x00\x00\x00"
    for f in (tmp_path / "in").iterdir():
        ds = pydicom.dcmread(f)
        ds.OtherPatientIDsSequence = []
        ds.save_as(f, enforce_file_format=True)
        f.write_bytes(f.read_bytes().replace(marker, level * 3000 + close * 3000))
    out = tmp_path / "out"
    p = run_scar("infer", tmp_path / "in", "-o", out)
    assert_one_line_error(p, "RecursionError")
    assert p.returncode not in (0, 70)
    assert not out.exists() or not list(out.iterdir())


def test_a_localizer_alone_is_refused_by_the_reader_too(tmp_path):
    write_localizer(CHU_IMG, tmp_path / "loc", generate_uid())
    with pytest.raises(InvalidImageError, match="localizer"):
        load_volume(tmp_path / "loc")
