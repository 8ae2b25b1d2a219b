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

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

from scar_runtime.core.atomic import atomic_write
from scar_runtime.core.errors import (
    GeometryMismatchError,
    InputFileError,
    InvalidImageError,
    library_message,
)
from scar_runtime.io.nifti_header import (  # noqa: F401 - re-exported: the reader's limits
    MAX_AXIS,
    MAX_TRAILING_BYTES,
    MAX_VOXELS,
    NIFTI_SUFFIXES,
    SCAR_DESCRIPTION,
    is_nifti_path,
    is_scar_output,
    read_file,
)

# nibabel reports the header fixes it makes through its own stderr handler; send them through
# logging like every other library's (the CLI shows them only with --verbose).
nib.imageglobals.logger.handlers.clear()

WORKING_AXCODES = ("I", "P", "L")
MIN_INPLANE = 8  # smaller than this in-plane is not an image we can segment


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
# (the header checks before nibabel reads a byte: nifti_header.py)


def _open_header(path: Path) -> nib.Nifti1Image:
    stream, hdr = read_file(path)
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
