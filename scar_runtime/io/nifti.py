"""Reading NIfTI volumes safely and bringing them to one working layout.

Working layout (documented in docs/conventions.md): array axes ``("I", "P", "L")`` in nibabel's
axis codes: axis 0 runs superior->inferior (image rows, head at the top), axis 1 anterior->posterior
(image columns), axis 2 is the sagittal slice axis (right->left). ``vol.data[:, :, k]`` is one
sagittal slice as a radiologist views it. Any input orientation is reached by axis permutations and
flips only (no interpolation), so going back to the input grid is exact.

Everything is validated from the header BEFORE the voxel data is read, so a header claiming a
gigantic volume is refused without allocating it.
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
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

from scar_runtime.atomic import atomic_write
from scar_runtime.errors import (
    GeometryMismatchError,
    InputFileError,
    InvalidImageError,
    library_message,
)

# nibabel reports the header fixes it makes through its own stderr handler; send them through
# logging like every other library's (the CLI shows them only with --verbose).
nib.imageglobals.logger.handlers.clear()

WORKING_AXCODES = ("I", "P", "L")
SCAR_DESCRIPTION = b"scar-net segmentation"  # header description of every label map we write
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# Refuse before reading: 2**29 voxels is 2 GiB as float32, far above any lumbar MRI (512x512x200 is
# 5e7) yet small enough that a malicious or broken header cannot exhaust memory.
MAX_VOXELS = 2**29
MAX_AXIS = 4096
MIN_INPLANE = 8  # smaller than this in-plane is not an image we can segment


def is_nifti_path(path: Path | str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path | str) -> str:
    """File name without .nii / .nii.gz."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


@dataclass
class SourceGeometry:
    """What is needed to write a result back in the input's exact geometry."""

    shape: tuple[int, ...]  # the file's shape (4D with a singleton 4th axis is kept as such)
    affine: np.ndarray
    header: nib.Nifti1Header
    to_working: np.ndarray  # nibabel orientation transform: source axes -> working axes

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(self.shape[:3])  # type: ignore[return-value]

    def from_working(self, array: np.ndarray) -> np.ndarray:
        """Bring an array in the working layout back to the source layout (exact)."""
        back = ornt_mod.ornt_transform(ornt_mod.axcodes2ornt(WORKING_AXCODES),
                                       ornt_mod.io_orientation(self.affine))
        out = ornt_mod.apply_orientation(array, back)
        if out.shape != self.shape3d:
            raise GeometryMismatchError(
                f"array of shape {array.shape} does not match the working grid of {self.shape3d}")
        return np.ascontiguousarray(out).reshape(self.shape)


@dataclass
class Volume:
    """A 3D image in the working layout, plus its way back to the source file."""

    data: np.ndarray  # working layout
    affine: np.ndarray  # working voxel -> world (mm)
    source: SourceGeometry
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the working axes."""
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def inplane_spacing(self) -> tuple[float, float]:
        s = self.spacing
        return (s[0], s[1])

    @property
    def name(self) -> str:
        return nifti_stem(self.path) if self.path else "volume"


# --------------------------------------------------------------------------- reading

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


def _read_file(path: Path) -> tuple[io.BytesIO, RawHeader]:
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


def _open_header(path: Path) -> nib.Nifti1Image:
    stream, hdr = _read_file(path)
    klass = nib.Nifti2Image if hdr.version == 2 else nib.Nifti1Image
    try:
        img = klass.from_stream(stream)
        img.affine  # noqa: B018 - nibabel computes it from qform/sform here, and may refuse
    except Exception as e:  # noqa: BLE001 - nibabel's refusals have many types; all mean this
        raise InputFileError(f"{path}: {library_message(e, 'the NIfTI header is unusable')}") from e
    return img


def _check_header(img: nib.Nifti1Image, path: Path) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3:
        raise InvalidImageError(f"{path}: {len(shape)}D image {shape}, expected a 3D volume")
    if len(shape) == 4 and shape[3] != 1:
        raise InvalidImageError(
            f"{path}: 4D image {shape} (a time series or multi-channel), expected one 3D volume")
    if len(shape) > 4:
        raise InvalidImageError(f"{path}: {len(shape)}D image {shape}, expected a 3D volume")
    shape3 = shape[:3]
    if min(shape3) < 1:
        raise InvalidImageError(f"{path}: empty volume {shape3}")
    n = int(np.prod(shape3, dtype=np.int64))
    if n > MAX_VOXELS or max(shape3) > MAX_AXIS:
        raise InvalidImageError(
            f"{path}: header claims an implausibly large volume {shape3} ({n:,} voxels)")
    dtype = img.header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InvalidImageError(f"{path}: unsupported voxel type {dtype} (expected real numbers)")
    affine = img.affine
    if affine is None:
        raise InvalidImageError(f"{path}: the image has no affine (no orientation)")
    if not np.all(np.isfinite(affine)):
        raise InvalidImageError(f"{path}: affine contains NaN or infinity")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9 * np.prod(zooms + 1e-12):
        raise InvalidImageError(f"{path}: singular affine (zero spacing or collapsed axes)")
    hdr_zooms = img.header.get_zooms()[:3]
    if any(not np.isfinite(z) or z <= 0 for z in hdr_zooms):
        raise InvalidImageError(f"{path}: voxel spacing {tuple(hdr_zooms)} is zero or invalid")
    return shape3  # type: ignore[return-value]


def _read_data(img: nib.Nifti1Image, path: Path, as_labels: bool) -> np.ndarray:
    try:
        # labels keep their integer type; images are read as float32 with the header scaling
        with np.errstate(all="ignore"):  # overflow to inf is reported below, in one line
            data = np.asanyarray(img.dataobj) if as_labels else img.get_fdata(dtype=np.float32)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel/numpy refusals of the voxel data
        raise InputFileError(f"{path}: {library_message(e, 'cannot read the voxel data')}") from e
    if data.ndim == 4:
        data = data[..., 0]
    return data


def load_nifti(path: Path | str, *, as_labels: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read and validate a 3D NIfTI; returns (data in file layout, image)."""
    path = Path(path)
    img = _open_header(path)
    return _validated_data(img, path, as_labels), img


def _validated_data(img: nib.Nifti1Image, where: Path, as_labels: bool) -> np.ndarray:
    """Header checks, then the voxel data read and checked (files and in-memory images alike)."""
    shape3 = _check_header(img, where)
    data = _read_data(img, where, as_labels)
    if as_labels:
        return _as_label_array(data, where)
    if not np.all(np.isfinite(data)):
        bad = int((~np.isfinite(data)).sum())
        raise InvalidImageError(f"{where}: {bad:,} voxels are NaN or infinite")
    if min(shape3[:3]) < 2 and sorted(shape3)[1] < MIN_INPLANE:
        raise InvalidImageError(f"{where}: volume {shape3} is too small to segment")
    if float(data.max()) == float(data.min()):
        raise InvalidImageError(f"{where}: constant image (every voxel is {data.flat[0]:g})")
    return data


def _as_label_array(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise InvalidImageError(f"{path}: label image contains NaN or infinity")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise InvalidImageError(f"{path}: label image has non-integer values")
        data = rounded
    if data.size and data.min() < 0:
        raise InvalidImageError(f"{path}: label image has negative values")
    if data.size and data.max() > 65535:
        raise InvalidImageError(f"{path}: label values above 65535")
    return data.astype(np.uint16 if data.max(initial=0) > 255 else np.uint8)


def to_working(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient a 3D array to the working layout: returns (array, working affine, transform)."""
    xform = ornt_mod.ornt_transform(ornt_mod.io_orientation(affine),
                                    ornt_mod.axcodes2ornt(WORKING_AXCODES))
    out = np.ascontiguousarray(ornt_mod.apply_orientation(data, xform))
    new_affine = affine @ ornt_mod.inv_ornt_aff(xform, data.shape[:3])
    return out, new_affine, xform


def load_volume(path: Path | str, *, as_labels: bool = False) -> Volume:
    """Load a NIfTI file (any orientation) into the working layout, fully validated."""
    path = Path(path)
    data, img = load_nifti(path, as_labels=as_labels)
    return _to_volume(data, img, path=path)


def _to_volume(data: np.ndarray, img: nib.Nifti1Image, **kw) -> Volume:
    work, work_affine, xform = to_working(data, img.affine)
    source = SourceGeometry(shape=tuple(int(s) for s in img.shape), affine=img.affine.copy(),
                            header=img.header.copy(), to_working=xform)
    return Volume(data=work, affine=work_affine, source=source, **kw)


def volume_from_image(img: nib.Nifti1Image, *, name: str = "volume") -> Volume:
    """Same as :func:`load_volume` for an in-memory nibabel image (the Python API)."""
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidImageError(f"expected a nibabel NIfTI image, got {type(img).__name__}")
    data = _validated_data(img, Path(name), as_labels=False)
    return _to_volume(data, img, path=None, meta={"name": name})


def check_same_grid(a: Volume, b: Volume, *, atol: float = 1e-3) -> None:
    """Refuse two volumes on different voxel grids (shape or world position)."""
    an, bn = a.path or "first image", b.path or "second image"
    if a.source.shape3d != b.source.shape3d:
        raise GeometryMismatchError(
            f"{an} has shape {a.source.shape3d} but {bn} has {b.source.shape3d}")
    if not np.allclose(a.source.affine, b.source.affine, atol=atol):
        raise GeometryMismatchError(f"{an} and {bn} have different affines (not the same grid)")


# --------------------------------------------------------------------------- writing


# The header fields that place the grid in the world. They are copied from the input byte for
# byte: recomputing them through nibabel would change a qform the input had (or fail on a
# quaternion nibabel cannot read beside a valid sform, which the standard lets the sform overrule).
_GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z")


def labels_to_image(labels_working: np.ndarray, source: SourceGeometry) -> nib.Nifti1Image:
    """A uint8 label image in the source's exact geometry (shape, affine, qform/sform + codes),
    in the source's format (NIfTI-2 stays NIfTI-2)."""
    if labels_working.max(initial=0) > 255:
        raise ValueError("label values above 255 do not fit uint8")
    data = source.from_working(np.asarray(labels_working).astype(np.uint8, copy=False))
    hdr = source.header.copy()
    hdr.set_data_dtype(np.uint8)
    # Nifti2Header is a subclass of Nifti1Header: test for it first.
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(data, source.affine, header=hdr)
    for key in _GEOMETRY_FIELDS:
        img.header[key] = source.header[key]
    img.header["pixdim"][0] = source.header["pixdim"][0]  # qfac, the qform's handedness
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, int(data.max(initial=0))
    img.header["descrip"] = SCAR_DESCRIPTION
    return img


def save_nifti(img: nib.Nifti1Image, path: Path | str, *, force: bool = False,
               inputs: tuple[Path, ...] = ()) -> Path:
    """Write a NIfTI atomically (temp file + rename)."""
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), force=force, inputs=inputs)


def save_labels(labels_working: np.ndarray, source: SourceGeometry, path: Path | str, *,
                force: bool = False, inputs: tuple[Path, ...] = ()) -> Path:
    return save_nifti(labels_to_image(labels_working, source), path, force=force, inputs=inputs)
