"""NIfTI loading, reorientation to the working layout and exact write-back, on real data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from helpers import (
    CERVICAL_IMG,
    CERVICAL_SEG,
    CHU_IMG,
    CHU_SEG,
    IVD_IMG,
    SHARED_DATA,
    assert_same_geometry,
    make_bad_inputs,
    needs_shared,
)

from scar_runtime.core.errors import (
    GeometryMismatchError,
    InputFileError,
    InvalidImageError,
    ScarError,
)
from scar_runtime.io import (
    WORKING_AXCODES,
    check_same_grid,
    labels_to_image,
    load_volume,
    save_labels,
    volume_from_image,
)


def _resave(src, dst, axcodes):
    """Re-save a real image in another orientation (exact: permutations and flips only)."""
    img = nib.load(str(src))
    cur = nib.io_orientation(img.affine)
    xform = nib.orientations.ornt_transform(cur, nib.orientations.axcodes2ornt(axcodes))
    out = img.as_reoriented(xform)
    nib.save(out, str(dst))
    assert nib.aff2axcodes(nib.load(str(dst)).affine) == tuple(axcodes)
    return dst


def _roundtrip(path, as_labels):
    src = nib.load(str(path))
    vol = load_volume(path, as_labels=as_labels)
    assert nib.aff2axcodes(vol.affine) == WORKING_AXCODES
    # the working affine maps working voxels to the SAME world points as the source
    ijk = np.array([[0, 0, 0], [3, 5, 7], [s - 1 for s in src.shape[:3]]])
    world_src = nib.affines.apply_affine(src.affine, ijk)
    w_ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(vol.affine), world_src)).astype(int)
    expect = np.asanyarray(src.dataobj)
    for a, b in zip(ijk, w_ijk, strict=True):
        assert vol.data[tuple(b)] == pytest.approx(float(expect[tuple(a)]))
    back = vol.source.from_working(vol.data)
    assert back.shape == src.shape
    np.testing.assert_array_equal(back, expect.astype(back.dtype))
    return vol


@pytest.mark.parametrize("path,as_labels", [(CHU_IMG, False), (CHU_SEG, True), (IVD_IMG, False),
                                            (CERVICAL_IMG, False), (CERVICAL_SEG, True)])
def test_reorient_roundtrip_is_exact(path, as_labels):
    _roundtrip(path, as_labels)


def test_cervical_fixture_is_not_working_layout():
    src = nib.load(str(CERVICAL_IMG))
    assert nib.aff2axcodes(src.affine) == ("P", "I", "R")
    vol = load_volume(CERVICAL_IMG)
    assert vol.shape == (src.shape[1], src.shape[0], src.shape[2])
    assert vol.spacing == pytest.approx((1.5, 1.5, 1.5), abs=1e-3)


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("A", "S", "L")])
def test_same_working_volume_from_any_orientation(tmp_path, axcodes):
    ref = load_volume(CHU_IMG)
    other = load_volume(_resave(CHU_IMG, tmp_path / "re.nii.gz", axcodes))
    np.testing.assert_array_equal(other.data, ref.data)
    np.testing.assert_allclose(other.affine, ref.affine, atol=1e-4)
    _roundtrip(tmp_path / "re.nii.gz", False)


@needs_shared
@pytest.mark.parametrize("rel", ["vb_chu2015/14_seg.nii.gz", "ivd_menezes2016/42_seg.nii.gz",
                                 "vb_myosegmentum/01_seg.nii.gz"])
def test_real_sets_roundtrip(rel):
    vol = _roundtrip(SHARED_DATA / rel, True)
    # these sets are stored in the working layout already: reorientation is the identity
    np.testing.assert_array_equal(vol.data, np.asanyarray(nib.load(str(SHARED_DATA / rel)).dataobj))


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S")])
def test_write_back_keeps_exact_geometry(tmp_path, axcodes):
    src_path = _resave(CHU_SEG, tmp_path / "in.nii.gz", axcodes)
    src = nib.load(str(src_path))
    src.header.set_qform(src.affine, code=1)
    src.header.set_sform(src.affine, code=2)
    nib.save(nib.Nifti1Image(np.asanyarray(src.dataobj), None, src.header), str(src_path))
    src = nib.load(str(src_path))
    vol = load_volume(src_path, as_labels=True)
    out = save_labels(vol.data, vol.source, tmp_path / "out.nii.gz")
    res = nib.load(str(out))
    assert_same_geometry(res, src)
    np.testing.assert_array_equal(np.asanyarray(res.dataobj), np.asanyarray(src.dataobj))
    assert res.header.get_zooms() == pytest.approx(src.header.get_zooms())


def test_singleton_4d_is_squeezed_and_written_back_4d(tmp_path):
    img = nib.load(str(CHU_SEG))
    data = np.asanyarray(img.dataobj)[..., None]
    p = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), str(p))
    vol = load_volume(p, as_labels=True)
    assert vol.data.ndim == 3
    out = nib.load(str(save_labels(vol.data, vol.source, tmp_path / "o.nii.gz")))
    assert out.shape == data.shape


def test_save_refuses_existing_and_input(tmp_path):
    vol = load_volume(CHU_SEG, as_labels=True)
    p = save_labels(vol.data, vol.source, tmp_path / "o.nii.gz")
    with pytest.raises(ScarError, match="already exists"):
        save_labels(vol.data, vol.source, p)
    save_labels(vol.data, vol.source, p, force=True)
    with pytest.raises(ScarError, match="input"):
        save_labels(vol.data, vol.source, p, force=True, inputs=(p,))
    assert [f.name for f in tmp_path.iterdir()] == ["o.nii.gz"]  # no temp file left


def test_labels_to_image_rejects_wrong_grid():
    vol = load_volume(CHU_SEG, as_labels=True)
    with pytest.raises(GeometryMismatchError):
        labels_to_image(np.zeros((3, 3, 3), np.uint8), vol.source)


def test_check_same_grid():
    a = load_volume(CHU_SEG, as_labels=True)
    b = load_volume(IVD_IMG)
    with pytest.raises(GeometryMismatchError, match="shape"):
        check_same_grid(a, b)


def test_volume_from_image_matches_file():
    a = load_volume(CHU_IMG)
    b = volume_from_image(nib.load(str(CHU_IMG)))
    np.testing.assert_array_equal(a.data, b.data)


BAD_FOR_IMAGES = ["missing", "empty file", "text named .nii.gz", "truncated gzip",
                  "gzip of garbage", "not NIfTI extension", "2D", "4D", "NaN voxels", "constant",
                  "1x1x1", "complex", "singular affine", "gigantic header"]


@pytest.mark.parametrize("kind", BAD_FOR_IMAGES)
def test_bad_images_raise_scar_errors(tmp_path, kind):
    path, word = make_bad_inputs(tmp_path)[kind]
    with pytest.raises((InputFileError, InvalidImageError)) as e:
        load_volume(path)
    assert word.lower() in str(e.value).lower()
    assert "\n" not in str(e.value)


def test_gigantic_header_is_refused_before_reading(tmp_path):
    # The file holds 1 KB of data; reading 4000^3 floats would need 256 GB. Refusal must be fast
    # and come from the header check (the message says so), not from a failed read.
    path, _ = make_bad_inputs(tmp_path)["gigantic header"]
    with pytest.raises(InvalidImageError, match="implausibly large"):
        load_volume(path)


def test_manifest_orientation_claim():
    # The shared sets say they are I,P,L; our fixtures are copies of them.
    for p in (CHU_IMG, IVD_IMG):
        assert nib.aff2axcodes(nib.load(str(p)).affine) == ("I", "P", "L")
