"""The geometry of a series of single-frame images: every slice checked, all alike, sorted along
the slice normal into one uniform stack (or one line saying what is wrong)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scar_runtime.core.errors import InvalidImageError
from scar_runtime.io.dicom.attrs import (
    ORIENTATION_ATOL,
    file_uid,
    floats,
    int_attr,
    malformed_as_error,
    orientation_or_none,
)
from scar_runtime.io.dicom.scan import DicomSeries
from scar_runtime.io.nifti import MAX_AXIS, MAX_VOXELS

# Slice spacing may vary this much (relative) before the stack is "non-uniform".
SPACING_RTOL = 0.01
POSITION_ATOL_MM = 1e-3


def image_facts(path: Path, ds, *, frames: int = 1):
    """One image's (pixel spacing, size, photometric), or a one-line refusal of what makes it
    unusable as ``frames`` frames of a monochrome MR stack."""
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        raise InvalidImageError(f"{path}: no pixel data" + (f" ({other[0]} is not "
                                                              "supported)" if other else ""))
    n = int_attr(ds, "NumberOfFrames", 1)
    if n != frames:
        raise InvalidImageError(f"{path}: a multi-frame image ({ds.NumberOfFrames} frames) in a "
                                "series of single-frame images")
    if int_attr(ds, "SamplesPerPixel", 1) != 1:
        raise InvalidImageError(f"{path}: a colour image ({ds.SamplesPerPixel} samples per "
                                "pixel), expected a monochrome MR image")
    photo = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip()
    if photo not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidImageError(f"{path}: photometric interpretation {photo}, expected "
                                "MONOCHROME1 or MONOCHROME2")
    size = (int_attr(ds, "Rows", 0) or 0, int_attr(ds, "Columns", 0) or 0)
    if min(size) < 1:
        raise InvalidImageError(f"{path}: no image size (Rows/Columns)")
    return size, photo


def check_orientation(path: Path, iop: np.ndarray | None, ps: np.ndarray | None) -> None:
    if iop is None:
        raise InvalidImageError(f"{path}: no valid ImageOrientationPatient / "
                                "ImagePositionPatient (not a slice with a position)")
    if ps is None or np.any(ps <= 0):
        raise InvalidImageError(f"{path}: no valid PixelSpacing")
    r, c = iop[:3], iop[3:]
    if (abs(np.linalg.norm(r) - 1) > ORIENTATION_ATOL or abs(np.linalg.norm(c) - 1)
            > ORIENTATION_ATOL or abs(r @ c) > ORIENTATION_ATOL):
        raise InvalidImageError(f"{path}: ImageOrientationPatient {iop.tolist()} is not two "
                                "orthogonal unit vectors")


def _slice_facts(path: Path, ds):
    size, photo = image_facts(path, ds)
    iop = orientation_or_none(ds)
    ps = floats(ds, "PixelSpacing", 2)
    if floats(ds, "ImagePositionPatient", 3) is None:
        iop = None
    check_orientation(path, iop, ps)
    return iop, ps, size, photo, file_uid(ds, "FrameOfReferenceUID")


def check_instance_uids(series: DicomSeries) -> None:
    """Each image has its own SOPInstanceUID: a DICOM-SEG's frames point at images by it, so two
    slices sharing one would make them point at one image."""
    seen: dict[str, Path] = {}
    for path, ds in zip(series.files, series.headers, strict=True):
        uid = file_uid(ds, "SOPInstanceUID")
        if not uid:
            raise InvalidImageError(f"{path}: no SOPInstanceUID")
        if uid in seen:
            raise InvalidImageError(f"{path}: duplicate SOPInstanceUID {uid} (also in "
                                    f"{seen[uid].name}): two images cannot share one identity")
        seen[uid] = path


def check_slice_headers(series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """Every slice: a single-frame monochrome image with geometry, all alike. Returns
    (orientation (6,), pixel spacing (2,)) of the stack."""
    check_instance_uids(series)
    ref_iop = ref_ps = ref_size = ref_photo = ref_for = None
    for path, ds in zip(series.files, series.headers, strict=True):
        with malformed_as_error(path):
            iop, ps, size, photo, frame = _slice_facts(path, ds)
        if ref_iop is None:
            ref_iop, ref_ps, ref_size, ref_photo, ref_for = iop, ps, size, photo, frame
            continue
        if np.abs(iop - ref_iop).max() > ORIENTATION_ATOL:
            raise InvalidImageError(f"{path}: slices of different orientation in one series "
                                    f"({np.round(iop, 4).tolist()} vs "
                                    f"{np.round(ref_iop, 4).tolist()})")
        if size != ref_size:
            raise InvalidImageError(f"{path}: slices of different size in one series ({size[0]}x"
                                    f"{size[1]} vs {ref_size[0]}x{ref_size[1]})")
        if np.abs(ps - ref_ps).max() > 1e-4 * max(1.0, float(ref_ps.max())):
            raise InvalidImageError(f"{path}: slices of different pixel spacing in one series "
                                    f"({ps.tolist()} vs {ref_ps.tolist()} mm)")
        if photo != ref_photo:
            raise InvalidImageError(f"{path}: {photo} and {ref_photo} slices in one series")
        if frame != ref_for:
            raise InvalidImageError(f"{path}: slices in different frames of reference")
    check_size(series.files[0].parent, len(series.files), ref_size)
    return ref_iop, ref_ps


def check_size(where: Path, n: int, size: tuple[int, int]) -> None:
    if n * size[0] * size[1] > MAX_VOXELS or max(*size, n) > MAX_AXIS:
        raise InvalidImageError(f"{where}: implausibly large series ({n} slices of {size[0]}x"
                                f"{size[1]})")


def stack_order(positions: np.ndarray, iop: np.ndarray, names: list[str], where: Path,
                thickness: float | None = None) -> tuple[np.ndarray, float]:
    """Sort slices (their ImagePositionPatient, one a row) along the normal; refuse duplicates,
    gaps, uneven or sheared stacks. Returns (order, slice step in mm)."""
    normal = np.cross(iop[:3], iop[3:])
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    dist, pos = dist[order], positions[order]
    names = [names[i] for i in order]
    if len(names) == 1:
        return order, thickness if thickness and thickness > 0 else 1.0
    gaps = np.diff(dist)
    dup = np.nonzero(gaps < POSITION_ATOL_MM)[0]
    if dup.size:
        i = int(dup[0])
        raise InvalidImageError(f"{where}: duplicated slice position ({names[i]} and "
                                f"{names[i + 1]} both at {dist[i]:.3f} mm along the slice "
                                "normal); one series must be one stack of slices")
    step = float(np.median(gaps))
    tol = max(POSITION_ATOL_MM, SPACING_RTOL * step)
    bad = np.nonzero(np.abs(gaps - step) > tol)[0]
    if bad.size:
        i = int(bad[0])
        if gaps[i] > 1.5 * step:
            missing = round(gaps[i] / step) - 1
            raise InvalidImageError(
                f"{where}: missing slice(s): a gap of {gaps[i]:.3f} mm between {names[i]} "
                f"and {names[i + 1]} where slices are {step:.3f} mm apart (about {missing} "
                "slice(s) missing)")
        raise InvalidImageError(f"{where}: non-uniform slice spacing ({gaps.min():.3f} to "
                                f"{gaps.max():.3f} mm, more than {SPACING_RTOL:.0%} apart)")
    # every slice origin on one line along the normal (no shear or in-plane shift)
    drift = pos - pos[0] - np.outer(dist - dist[0], normal)
    worst = float(np.linalg.norm(drift, axis=1).max())
    if worst > max(POSITION_ATOL_MM * 10, 0.1 * step):
        raise InvalidImageError(f"{where}: slice origins are not stacked along the slice normal "
                                f"(shifted by up to {worst:.2f} mm): a sheared or tilted stack")
    return order, (dist[-1] - dist[0]) / (len(names) - 1)


def slice_order(series: DicomSeries, iop: np.ndarray) -> tuple[np.ndarray, float]:
    """The slice order of a series of single-frame images, and its step in mm."""
    pos = np.array([floats(ds, "ImagePositionPatient", 3) for ds in series.headers])
    first = series.headers[0]
    thick = floats(first, "SpacingBetweenSlices", 1)
    if thick is None:
        thick = floats(first, "SliceThickness", 1)
    return stack_order(pos, iop, [f.name for f in series.files], series.files[0].parent,
                       float(thick[0]) if thick is not None else None)
