"""Reading header values of a possibly hostile DICOM file: absent, undecodable or malformed values
become None (or one line naming the file), never a library exception further down.

pydicom is an optional dependency (``scar-net[dicom]``): it is imported inside the functions that
need it, so the NIfTI path never loads it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from scar_runtime.core.errors import InvalidImageError, ScarError, import_extra

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
MULTIFRAME_MR = (ENHANCED_MR_IMAGE_STORAGE, LEGACY_ENHANCED_MR_IMAGE_STORAGE)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# Direction cosines equal within this are one orientation (DS values carry ~6 decimals).
ORIENTATION_ATOL = 1e-3
# LPS (DICOM) <-> RAS (NIfTI): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def pydicom_module():
    return import_extra("pydicom", "reading DICOM needs the optional dependencies: "
                                   "pip install 'scar-net[dicom]'")


def attr(ds, keyword: str):
    """An attribute's value, None when absent or when pydicom cannot decode it (a damaged file:
    the checks that need it then refuse the file in one line)."""
    try:
        return getattr(ds, keyword, None)
    except Exception:  # noqa: BLE001 - decoding a hostile value may raise anything
        return None


def file_uid(ds, keyword: str) -> str:
    return str(attr(ds, keyword) or "").strip()


def floats(ds, keyword: str, n: int) -> np.ndarray | None:
    """``n`` finite numbers from a DS/FD attribute (one value or several), else None."""
    raw = attr(ds, keyword)
    if raw is None:
        return None
    items = raw if hasattr(raw, "__iter__") and not isinstance(raw, str | bytes) else [raw]
    try:
        v = np.array([float(x) for x in items], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


def int_attr(ds, keyword: str, default: int) -> int | None:
    """An integer attribute (IS/US), its default when absent or empty, None when malformed."""
    raw = attr(ds, keyword)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except (TypeError, ValueError, OverflowError):
        return None


def orientation_or_none(ds) -> np.ndarray | None:
    return floats(ds, "ImageOrientationPatient", 6)


def plane_of(iop: np.ndarray | None) -> str:
    """sagittal / coronal / axial / oblique from an orientation."""
    if iop is None:
        return "no orientation"
    normal = np.abs(np.cross(iop[:3], iop[3:]))
    if normal.max() < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[int(normal.argmax())]


def one_line(e: BaseException, limit: int = 160) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


@contextlib.contextmanager
def malformed_as_error(path: Path):
    """pydicom decodes a value when it is first read: a malformed one (a DS that is no number, a
    broken sequence) raises some library error; that is bad input, said in one line."""
    try:
        yield
    except (ScarError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - any decoding error of a hostile file
        raise InvalidImageError(f"{path}: malformed DICOM attribute ({one_line(e)})") from e
