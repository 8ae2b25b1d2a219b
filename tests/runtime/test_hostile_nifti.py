"""Hostile NIfTI input, one test per class of the issue-13 probe, on the real fixtures: the reader
checks the header against the standard before the data, verifies the gzip CRC, and writes
results back in the input's own format and geometry."""

from __future__ import annotations

import gzip
import os
import struct
import time
import zlib

import nibabel as nib
import numpy as np
import pytest
from helpers import CHU_IMG, CHU_SEG, assert_same_geometry

from scar_runtime.core.errors import InputFileError, InvalidImageError, ScarError
from scar_runtime.io import is_scar_output, labels_to_image, load_volume, save_labels
from scar_runtime.io.nifti import MAX_TRAILING_BYTES


def _raw(path=CHU_IMG) -> bytearray:
    return bytearray(gzip.decompress(path.read_bytes()))


def _put(raw: bytearray, offset: int, fmt: str, value) -> bytearray:
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack("<" + fmt, value)
    return raw


def _one_line(e: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w.lower() in msg.lower(), msg


def test_uncompressed_vox_offset_zero_is_refused_not_read_as_voxels(tmp_path):
    # The probe: a .nii with vox_offset 0 was read with its own header as the first voxels.
    p = tmp_path / "v0.nii"
    p.write_bytes(_put(_raw(), 108, "f", 0.0))
    with pytest.raises(InvalidImageError) as e:
        load_volume(p)
    _one_line(e, "vox_offset 0", "inside the header")


@pytest.mark.parametrize("offset", [-352.0, 100.0, 351.0, 352.5, float("nan"), 1e12])
def test_vox_offset_outside_the_rules_is_refused(tmp_path, offset):
    p = tmp_path / "vo.nii.gz"
    p.write_bytes(gzip.compress(bytes(_put(_raw(), 108, "f", offset))))
    with pytest.raises(InvalidImageError) as e:
        load_volume(p)
    _one_line(e, "vox_offset")


def test_gzip_whose_data_no_longer_matches_its_crc_is_refused(tmp_path):
    # The deflate stream is valid, only the voxels differ from what the CRC was made for: a
    # reader that stops after the bytes it needs never notices. Ours reads to the end.
    raw = CHU_IMG.read_bytes()
    crc_and_size = raw[-8:]
    data = _raw()
    data[352 + 1000] ^= 0xFF
    p = tmp_path / "crc.nii.gz"
    p.write_bytes(gzip.compress(bytes(data), mtime=0)[:-8] + crc_and_size)
    with pytest.raises(InputFileError) as e:
        load_volume(p)
    _one_line(e, "corrupt gzip", "crc")
    # the same bytes with their own CRC are fine: the check is the CRC, not the content
    p.write_bytes(gzip.compress(bytes(data), mtime=0))
    load_volume(p)


def test_no_orientation_is_refused_instead_of_an_empty_segmentation(tmp_path):
    raw = _put(_put(_raw(), 252, "h", 0), 254, "h", 0)  # qform_code = sform_code = 0
    p = tmp_path / "noxform.nii.gz"
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InvalidImageError) as e:
        load_volume(p)
    _one_line(e, "no orientation", "qform_code and sform_code are both 0")


def test_bad_qform_beside_a_valid_sform_reads_and_writes_back_unchanged(tmp_path):
    # quatern_b = quatern_c = 0.9: b^2 + c^2 > 1, no rotation. The standard lets the sform rule;
    # nibabel cannot compute this qform, so it must be copied, not recomputed, on write.
    raw = _put(_put(_put(_raw(CHU_SEG), 252, "h", 1), 256, "f", 0.9), 260, "f", 0.9)
    p = tmp_path / "badq.nii.gz"
    p.write_bytes(gzip.compress(bytes(raw)))
    vol = load_volume(p, as_labels=True)
    out = nib.load(str(save_labels(vol.data, vol.source, tmp_path / "out.nii.gz")))
    src = nib.load(str(p))
    np.testing.assert_array_equal(out.affine, src.affine)
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "srow_x",
                "srow_y", "srow_z"):
        np.testing.assert_array_equal(out.header[key], src.header[key])
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.asanyarray(src.dataobj))


def test_bad_qform_without_sform_is_refused(tmp_path):
    raw = _put(_put(_put(_put(_raw(), 252, "h", 1), 254, "h", 0), 256, "f", 0.9), 260, "f", 0.9)
    p = tmp_path / "badq_only.nii.gz"
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputFileError) as e:
        load_volume(p)
    _one_line(e, "header is unusable")


@pytest.mark.parametrize("offset,fmt,value,words", [
    (70, "h", 9999, ("datatype 9999",)),      # unknown datatype code
    (70, "h", 32, ("complex",)),              # complex64
    (70, "h", 128, ("rgb",)),                 # RGB24
    (40, "h", 0, ("dim[0] = 0",)),            # dim[0] out of range
    (40, "h", 9, ("dim[0] = 9",)),
    (40, "h", -3, ("dim[0] = -3",)),
    (46, "h", -5, ("zero or negative",)),     # a negative axis length
    (252, "h", 77, ("qform_code 77",)),       # not a transform code
    (0, "i", 999, ("header size",)),          # sizeof_hdr
    (344, "B", ord("x"), ("magic",)),
])
def test_header_fields_nibabel_rejects_are_scar_errors(tmp_path, offset, fmt, value, words):
    p = tmp_path / "h.nii.gz"
    p.write_bytes(gzip.compress(bytes(_put(_raw(), offset, fmt, value))))
    with pytest.raises(ScarError) as e:
        load_volume(p)
    _one_line(e, *words)


def test_hdr_img_pair_magic_in_a_single_file_is_refused(tmp_path):
    raw = _raw()
    raw[344:348] = b"ni1\0"
    p = tmp_path / "pair.nii.gz"
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputFileError) as e:
        load_volume(p)
    _one_line(e, ".hdr/.img pair")


@pytest.mark.parametrize("kind", ["fifo", "devnull", "dangling", "loop"])
def test_special_files_named_like_volumes_fail_fast(tmp_path, kind):
    p = tmp_path / "x.nii.gz"
    if kind == "fifo":
        os.mkfifo(p)  # opening it for reading without O_NONBLOCK would wait for a writer
    elif kind == "devnull":
        p.symlink_to("/dev/null")
    elif kind == "dangling":
        p.symlink_to(tmp_path / "gone.nii.gz")
    else:
        p.symlink_to(tmp_path / "y.nii.gz")
        (tmp_path / "y.nii.gz").symlink_to(p)
    t0 = time.perf_counter()
    with pytest.raises(InputFileError) as e:
        load_volume(p)
    assert time.perf_counter() - t0 < 30  # generous: a hang is what this guards against
    words = {"fifo": "not a regular file", "devnull": "not a regular file",
             "dangling": "broken symbolic link", "loop": "symbolic link loop"}[kind]
    _one_line(e, words)


def test_gzip_bomb_behind_a_small_header_is_refused_without_reading_it_all(tmp_path):
    raw = _raw()
    p = tmp_path / "bomb.nii.gz"
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    chunk = b"\0" * (1 << 20)
    with open(p, "wb") as f:
        f.write(z.compress(bytes(raw)))
        for _ in range(4 * (MAX_TRAILING_BYTES >> 20) + 60):  # far more than the slack
            f.write(z.compress(chunk))
        f.write(z.flush())
    assert p.stat().st_size < 2 << 20  # small on disk
    with pytest.raises(InputFileError) as e:
        load_volume(p)
    _one_line(e, "far more data than its header describes")


def test_truncated_uncompressed_file_is_refused(tmp_path):
    raw = _raw()
    p = tmp_path / "short.nii"
    p.write_bytes(bytes(raw[:-1000]))
    with pytest.raises(InputFileError) as e:
        load_volume(p)
    _one_line(e, "truncated")


def test_nifti2_input_is_written_back_as_nifti2(tmp_path):
    src1 = nib.load(str(CHU_SEG))
    img2 = nib.Nifti2Image(np.asanyarray(src1.dataobj), src1.affine)
    img2.header.set_qform(src1.affine, code=1)
    img2.header.set_sform(src1.affine, code=2)
    p = tmp_path / "two.nii.gz"
    nib.save(img2, str(p))
    vol = load_volume(p, as_labels=True)
    out_path = save_labels(vol.data, vol.source, tmp_path / "out.nii.gz")
    assert struct.unpack("<i", gzip.decompress(out_path.read_bytes())[:4])[0] == 540
    out = nib.load(str(out_path))
    assert isinstance(out, nib.Nifti2Image)
    assert_same_geometry(out, nib.load(str(p)))
    assert is_scar_output(out_path) and not is_scar_output(p)


def test_written_label_map_keeps_a_negative_qfac_and_codes(tmp_path):
    img = nib.load(str(CHU_SEG))
    flipped = img.as_reoriented(np.array([[0, 1], [1, 1], [2, -1]]))  # left-handed voxel axes
    flipped.header.set_qform(flipped.affine, code=1)
    flipped.header.set_sform(flipped.affine, code=4)
    p = tmp_path / "lh.nii.gz"
    nib.save(flipped, str(p))
    vol = load_volume(p, as_labels=True)
    out = labels_to_image(vol.data, vol.source)
    src = nib.load(str(p))
    assert out.header["pixdim"][0] == src.header["pixdim"][0]
    assert_same_geometry(nib.Nifti1Image.from_bytes(out.to_bytes()), src)
