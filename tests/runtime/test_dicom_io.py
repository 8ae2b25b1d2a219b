"""DICOM series in: the same Volume as the NIfTI the series was made from, whatever the
acquisition layout, transfer syntax, file names or folder nesting (no model needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from dicom_series import SeriesSpec, write_series  # noqa: E402
from helpers import (  # noqa: E402
    CHU_IMG,
    REPO,
    SHARED_DATA,
    TEST_DATA,
    assert_one_line_error,
    needs_shared,
)
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from scar_runtime.core.errors import InputFileError, InvalidImageError  # noqa: E402
from scar_runtime.io import dicom_source, load_volume  # noqa: E402
from scar_runtime.io.dicom import scan_folder  # noqa: E402

CHU_DICOM = TEST_DATA / "fcs_vb2_chu_06_2mm_dicom"

# (column direction, row direction, slice direction) of the stored images, nibabel codes
LAYOUTS = {
    "sagittal, rows head->feet": ("P", "I", "L"),
    "rows/columns swapped, slices reversed": ("I", "P", "R"),
    "both in-plane axes flipped, slices reversed": ("A", "S", "R"),
    "swapped and flipped": ("S", "A", "L"),
}


def assert_same_volume(vol, ref, *, atol=1e-4):
    assert vol.shape == ref.shape
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=atol)


def test_the_fixture_is_the_nifti_it_was_made_from():
    vol, ref = load_volume(CHU_DICOM), load_volume(CHU_IMG)
    assert_same_volume(vol, ref, atol=1e-5)
    src = dicom_source(vol)
    assert src is not None and len(src.sop_instance_uids) == 39 == len(set(src.sop_instance_uids))
    first = pydicom.dcmread(src.files[0])
    assert src.series_instance_uid == first.SeriesInstanceUID
    assert src.study_instance_uid == first.StudyInstanceUID
    assert first.file_meta.TransferSyntaxUID == JPEG2000Lossless  # a compressed, real-world form
    # the source layout is the series' own: (column, row, slice)
    assert vol.source.shape3d == (int(first.Columns), int(first.Rows), 39)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_any_acquisition_layout_gives_the_same_volume(tmp_path, layout):
    spec = SeriesSpec(axcodes=LAYOUTS[layout], reverse_instances="reversed" in layout,
                      layout="nested" if "swapped" in layout else "noext")
    write_series(CHU_IMG, tmp_path / "series", spec)
    vol = load_volume(tmp_path / "series")
    assert_same_volume(vol, load_volume(CHU_IMG))
    # the source layout is the series' own: columns and rows as stored, slices sorted along the
    # normal row x column (whatever order the instances were numbered or the files named in)
    assert nib.aff2axcodes(vol.source.affine)[:2] == LAYOUTS[layout][:2]


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless,
                                    DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         ids=lambda s: s.name)
def test_transfer_syntaxes_decode_to_the_same_pixels(tmp_path, syntax):
    write_series(CHU_IMG, tmp_path / "s", SeriesSpec(transfer_syntax=syntax))
    assert pydicom.dcmread(next((tmp_path / "s").iterdir())).file_meta.TransferSyntaxUID == syntax
    assert_same_volume(load_volume(tmp_path / "s"), load_volume(CHU_IMG))


def test_oblique_series(tmp_path):
    """A sagittal stack tilted 12 degrees about the left-right axis (real MR is often oblique)."""
    img = nib.load(str(CHU_IMG))
    a = np.deg2rad(12)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    tilted = nib.Nifti1Image(np.asanyarray(img.dataobj), rot @ img.affine)
    nib.save(tilted, str(tmp_path / "tilted.nii.gz"))
    write_series(tilted, tmp_path / "s", SeriesSpec(axcodes=("P", "I", "L")))
    assert_same_volume(load_volume(tmp_path / "s"), load_volume(tmp_path / "tilted.nii.gz"))


def test_rescale_slope_intercept_and_monochrome1(tmp_path):
    ref = load_volume(CHU_IMG)
    write_series(CHU_IMG, tmp_path / "r", SeriesSpec(rescale=(0.5, -10.0)))
    vol = load_volume(tmp_path / "r")
    np.testing.assert_allclose(vol.data, ref.data * 0.5 - 10.0, rtol=0, atol=1e-5)
    write_series(CHU_IMG, tmp_path / "m1", SeriesSpec(photometric="MONOCHROME1"))
    # stored inverted (low = bright); read back as the MONOCHROME2 image the model knows
    assert_same_volume(load_volume(tmp_path / "m1"), ref)


def test_a_study_with_two_fitting_series_needs_series_uid(tmp_path):
    study = pydicom.uid.generate_uid()
    for i, uid in enumerate(("1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72")):
        write_series(CHU_IMG, tmp_path / "study" / f"s{i}",
                     SeriesSpec(study_uid=study, series_uid=uid, series_number=i + 1))
    # an axial localizer beside them does not count
    write_series(CHU_IMG, tmp_path / "study" / "loc", SeriesSpec(study_uid=study,
                                                                 axcodes=("L", "P", "I")))
    with pytest.raises(InputFileError, match="--series") as e:
        load_volume(tmp_path / "study")
    assert "498.71" in str(e.value) and "498.72" in str(e.value)
    vol = load_volume(tmp_path / "study", series_uid="1.2.826.0.1.3680043.8.498.72")
    assert dicom_source(vol).series_instance_uid == "1.2.826.0.1.3680043.8.498.72"
    assert_same_volume(vol, load_volume(CHU_IMG))


def test_a_folder_of_studies_is_one_case_per_study(tmp_path):
    shutil.copytree(CHU_DICOM, tmp_path / "root" / "patientA" / "exam1" / "sag")
    write_series(CHU_IMG, tmp_path / "root" / "patientB", SeriesSpec(layout="nested"))
    (tmp_path / "root" / "notes.txt").write_text("not DICOM")
    scan = scan_folder(tmp_path / "root")
    assert [s.name for s in scan.studies] == ["patientA_exam1_sag", "patientB"]
    assert scan.other_files == 1 and not scan.broken
    with pytest.raises(InputFileError, match="2 studies"):
        load_volume(tmp_path / "root")


@needs_shared
def test_a_shared_data_case_at_native_resolution(tmp_path):
    """0.7 x 0.7 x 4 mm, 512 x 512 slices: a case as a scanner stores it, in two layouts."""
    src = SHARED_DATA / "kp_zukic2014" / "AKs5_img.nii.gz"
    ref = load_volume(src)
    for codes in (("P", "I", "L"), ("I", "P", "R")):
        write_series(src, tmp_path / "".join(codes), SeriesSpec(axcodes=codes))
        vol = load_volume(tmp_path / "".join(codes))
        assert_same_volume(vol, ref)
        assert vol.spacing == pytest.approx((0.7, 0.7, 4.0), abs=1e-4)


def test_the_nifti_path_needs_neither_pydicom_nor_highdicom(tmp_path):
    """With both made unimportable (as without the [dicom] extra), NIfTI input works, and a DICOM
    folder is refused in one line naming the extra. (nibabel itself imports pydicom when it is
    installed, so "not in sys.modules" would test nibabel, not scar-net.)"""
    code = ("import sys; sys.modules['pydicom'] = None; sys.modules['highdicom'] = None\n"
            "import scar_runtime, scar_runtime.commands.cli, scar_runtime.io, "
            "scar_runtime.commands.infer, scar_runtime.io.case_writer, "
            "scar_runtime.pipeline.segmenter, scar_runtime.io.dicom_seg, scar_runtime.io.dicom\n"
            "from scar_runtime.io import load_volume\n"
            f"load_volume({str(CHU_IMG)!r})\n"
            "from scar_runtime.commands.cli import run\n"
            f"sys.exit(run(['infer', {str(CHU_DICOM)!r}, '-o', {str(tmp_path / 'out')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert_one_line_error(p, "scar-net[dicom]")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    p = subprocess.run([sys.executable, "-c", "import sys, scar_runtime.commands.cli, "
                        "scar_runtime.commands.infer, scar_runtime.io.case_writer, "
                        "scar_runtime.io; print(sorted({m.split('.')[0] for m in sys.modules} & "
                        "{'highdicom', 'torch'}))"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_a_single_slice_is_chosen_only_by_uid(tmp_path):
    """One sagittal slice is not a stack to pick on its own, but --series takes it (through-plane
    spacing from SliceThickness, as there is no neighbour)."""
    (tmp_path / "one").mkdir()
    shutil.copy(sorted(CHU_DICOM.iterdir())[20], tmp_path / "one" / "x.dcm")
    uid = pydicom.dcmread(tmp_path / "one" / "x.dcm").SeriesInstanceUID
    with pytest.raises(InvalidImageError, match="no sagittal MR image series"):
        load_volume(tmp_path / "one")
    vol = load_volume(tmp_path / "one", series_uid=uid)
    assert vol.shape == (144, 49, 1) and vol.spacing == pytest.approx((2.0, 2.0, 2.0))
    ref = load_volume(CHU_IMG)
    assert any(np.array_equal(vol.data[:, :, 0], ref.data[:, :, k]) for k in range(39))
