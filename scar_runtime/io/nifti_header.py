"""The NIfTI header checked against the standard before nibabel reads anything: a regular file
(a FIFO or device is refused unopened), header size and magic, a known datatype and transform
codes, ``vox_offset`` inside the file, the whole gzip stream read so its CRC is checked, and
bounded trailing data; and the mark scar-net leaves in the label maps it writes.
"""

from __future__ import annotations

import errno
import gzip
import io
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scar_runtime.core.errors import InputFileError, InvalidImageError

SCAR_DESCRIPTION = b"scar-net segmentation"  # header description of every label map we write
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# Refuse before reading: 2**29 voxels is 2 GiB as float32, far above any lumbar MRI (512x512x200 is
# 5e7) yet small enough that a malicious or broken header cannot exhaust memory.
MAX_VOXELS = 2**29
MAX_AXIS = 4096


def is_nifti_path(path: Path | str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)



# NIfTI header layout (the standard's nifti1.h / nifti2.h): size, magic, minimum vox_offset.
_HEADER_SIZES = {348: 1, 540: 2}
_SINGLE_MAGIC = {1: b"n+1\0", 2: b"n+2\0\r\n\x1a\n"}
_PAIR_MAGIC = {1: b"ni1\0", 2: b"ni2\0\r\n\x1a\n"}
_MIN_VOX_OFFSET = {1: 352, 2: 544}  # header + the 4-byte extension flag
# Voxel types a scanner image or a label map can hold (real numbers); complex, RGB and float128
# are refused by name, unknown codes as unknown.
_DATATYPES = {2: "uint8", 4: "int16", 8: "int32", 16: "float32", 64: "float64", 256: "int8",
              512: "uint16", 768: "uint32", 1024: "int64", 1280: "uint64"}
_XFORM_CODES = range(0, 6)  # NIFTI_XFORM_UNKNOWN .. NIFTI_XFORM_TEMPLATE_OTHER
# Extensions between the header and the voxels: more than this is not an image we can use, and
# bounding it bounds what a hostile header can make us read.
MAX_VOX_OFFSET = 16 << 20
# A .nii.gz may carry a little padding after the voxels; more than this beyond what the header
# describes is refused (a gzip bomb behind a small header).
MAX_TRAILING_BYTES = 1 << 20


@dataclass(frozen=True)
class RawHeader:
    """The header fields the NIfTI standard's rules are checked on, straight from the bytes."""

    version: int  # 1 or 2
    shape: tuple[int, ...]
    datatype: int
    vox_offset: int
    qform_code: int
    sform_code: int

    @property
    def nbytes(self) -> int:
        itemsize = np.dtype(_DATATYPES[self.datatype]).itemsize
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file. O_NONBLOCK: opening a
    FIFO named like a volume must not hang; the type is checked on the open descriptor, so the
    file cannot be swapped between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as e:
        if path.is_symlink():
            raise InputFileError(f"{path}: broken symbolic link (its target does not exist)") from e
        raise InputFileError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise InputFileError(f"{path}: is a folder, expected a .nii or .nii.gz file") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputFileError(f"{path}: symbolic link loop") from e
        raise InputFileError(f"{path}: cannot open ({e.strerror})") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise InputFileError(f"{path}: is a folder, expected a .nii or .nii.gz file")
        raise InputFileError(f"{path}: not a regular file (a device, FIFO or socket)")
    os.set_blocking(fd, True)
    return fd


def parse_raw_header(block: bytes, path: Path) -> RawHeader:
    """Check the header bytes against the NIfTI-1/2 standard, before nibabel sees them."""
    if len(block) < 348:
        raise InputFileError(f"{path}: truncated file (ended inside the header)")
    for endian in "<>":
        size = struct.unpack(endian + "i", block[:4])[0]
        if size in _HEADER_SIZES:
            break
    else:
        raise InputFileError(f"{path}: not a NIfTI file (header size field is not 348 or 540)")
    version = _HEADER_SIZES[size]
    if len(block) < size:
        raise InputFileError(f"{path}: truncated file (ended inside the header)")
    if version == 1:
        magic = block[344:348]
        dims = struct.unpack(endian + "8h", block[40:56])
        datatype = struct.unpack(endian + "h", block[70:72])[0]
        vox_offset = struct.unpack(endian + "f", block[108:112])[0]
        qcode, scode = struct.unpack(endian + "2h", block[252:256])
    else:
        magic = block[4:12]
        datatype = struct.unpack(endian + "h", block[12:14])[0]
        dims = struct.unpack(endian + "8q", block[16:80])
        vox_offset = struct.unpack(endian + "q", block[168:176])[0]
        qcode, scode = struct.unpack(endian + "2i", block[344:352])
    if magic == _PAIR_MAGIC[version]:
        raise InputFileError(f"{path}: the header is one of a .hdr/.img pair, not a single-file "
                             "NIfTI (convert it to .nii.gz)")
    if magic != _SINGLE_MAGIC[version]:
        raise InputFileError(f"{path}: not a NIfTI-{version} file (bad magic string)")
    if not 1 <= dims[0] <= 7:
        raise InvalidImageError(f"{path}: dim[0] = {dims[0]} is outside 1..7 (damaged header)")
    shape = tuple(int(d) for d in dims[1:dims[0] + 1])
    if any(d < 1 for d in shape):
        raise InvalidImageError(f"{path}: dimensions {shape} include zero or negative sizes")
    n = int(np.prod(shape, dtype=np.float64))  # float: a hostile product must not wrap around
    if n > MAX_VOXELS or max(shape[:3]) > MAX_AXIS:
        raise InvalidImageError(
            f"{path}: header claims an implausibly large volume {shape} ({n:,} voxels)")
    if datatype not in _DATATYPES:
        kind = {32: "complex", 128: "RGB", 1536: "float128", 1792: "complex", 2048: "complex",
                2304: "RGBA", 1: "1-bit"}.get(datatype, "an unknown code")
        raise InvalidImageError(f"{path}: unsupported voxel type (datatype {datatype}: {kind}; "
                                "expected real numbers)")
    if not math.isfinite(vox_offset) or vox_offset != int(vox_offset):
        raise InvalidImageError(f"{path}: vox_offset {vox_offset} is not a whole byte offset")
    vox_offset = int(vox_offset)
    if vox_offset < _MIN_VOX_OFFSET[version]:
        # vox_offset 0 is only legal for a .hdr/.img pair; in a .nii it would read the header
        # itself as voxels.
        raise InvalidImageError(f"{path}: vox_offset {vox_offset} lies inside the header (a "
                                f"single-file NIfTI-{version} needs at least "
                                f"{_MIN_VOX_OFFSET[version]})")
    if vox_offset > MAX_VOX_OFFSET:
        raise InvalidImageError(f"{path}: vox_offset {vox_offset:,} is implausibly large")
    for name, code in (("qform_code", qcode), ("sform_code", scode)):
        if code not in _XFORM_CODES:
            raise InvalidImageError(f"{path}: {name} {code} is not a NIfTI transform code (0..5)")
    if qcode == 0 and scode == 0:
        # The standard's "method 1": voxel sizes only, no orientation. Guessing one would put
        # the spine on the wrong axes and give an empty segmentation.
        raise InvalidImageError(f"{path}: no orientation (qform_code and sform_code are both 0); "
                                "set the qform or sform of the file")
    return RawHeader(version=version, shape=shape, datatype=int(datatype), vox_offset=vox_offset,
                     qform_code=int(qcode), sform_code=int(scode))


def _read_exactly(f, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), 1 << 24))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_file(path: Path) -> tuple[io.BytesIO, RawHeader]:
    """The header checked first, then exactly the bytes it describes. A .nii.gz is read to its
    end, so the gzip CRC and length are verified (data that no longer matches them is refused)."""
    if path.is_dir():
        raise InputFileError(f"{path}: is a folder, expected a .nii or .nii.gz file")
    if not is_nifti_path(path):
        raise InputFileError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    fd = _open_regular(path)
    with os.fdopen(fd, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        if size == 0:
            raise InputFileError(f"{path}: empty file")
        if not path.name.lower().endswith(".gz"):
            block = raw.read(540)
            hdr = parse_raw_header(block, path)
            need = hdr.vox_offset + hdr.nbytes
            if size < need:
                raise InputFileError(f"{path}: truncated file (the header describes {need:,} "
                                     f"bytes, the file has {size:,})")
            raw.seek(0)
            return io.BytesIO(_read_exactly(raw, need)), hdr
        if raw.read(2) != b"\x1f\x8b":
            raise InputFileError(f"{path}: not a gzip file, although named .gz")
        raw.seek(0)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                block = _read_exactly(gz, 540)
                hdr = parse_raw_header(block, path)
                need = hdr.vox_offset + hdr.nbytes
                out = io.BytesIO()
                out.write(block)
                out.write(_read_exactly(gz, need - len(block)))
                if out.tell() < need:
                    raise InputFileError(f"{path}: truncated file (the header describes {need:,} "
                                         f"bytes, the data ends at {out.tell():,})")
                # Read to the end: the CRC and length check happen there.
                extra = len(_read_exactly(gz, MAX_TRAILING_BYTES + 1))
                if extra > MAX_TRAILING_BYTES:
                    raise InputFileError(f"{path}: holds far more data than its header "
                                         "describes (refused)")
        except (gzip.BadGzipFile, zlib.error) as e:
            raise InputFileError(f"{path}: corrupt gzip data ({e})") from e
        except EOFError as e:
            raise InputFileError(f"{path}: truncated gzip file") from e
    out.seek(0)
    return out, hdr


def is_scar_output(path: Path | str) -> bool:
    """Whether ``path`` is a segmentation written by scar-net (its header description says so):
    how a folder run tells its own earlier outputs from a user's reference masks."""
    path = Path(path)
    try:
        fd = _open_regular(path)
    except InputFileError:
        return False
    try:
        with os.fdopen(fd, "rb") as raw:
            if path.name.lower().endswith(".gz"):
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    block = _read_exactly(gz, 540)
            else:
                block = raw.read(540)
    except (OSError, EOFError, zlib.error):
        return False
    for endian in "<>":
        size = struct.unpack(endian + "i", block[:4])[0] if len(block) >= 4 else 0
        if size in _HEADER_SIZES and len(block) >= size:
            start = 148 if size == 348 else 240
            return block[start:start + 80].rstrip(b"\0") == SCAR_DESCRIPTION
    return False

