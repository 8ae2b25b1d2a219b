"""Reading medical images into one working layout, and writing results back in their geometry.

One entry point, ``load_volume``, for every input kind: ``nifti.py`` reads NIfTI files, ``dicom.py``
reads a DICOM series from a folder (pydicom, imported only when a folder is read); both produce the
same ``Volume``, so everything downstream (preprocessing, the network, post-processing, writers) is
shared.
"""

from __future__ import annotations

from pathlib import Path

from scar_runtime.io import nifti as _nifti
from scar_runtime.io.dicom import DicomSource, dicom_source, load_dicom
from scar_runtime.io.nifti import (
    MAX_AXIS,
    MAX_VOXELS,
    MIN_INPLANE,
    NIFTI_SUFFIXES,
    WORKING_AXCODES,
    SourceGeometry,
    Volume,
    check_same_grid,
    is_nifti_path,
    is_scar_output,
    labels_to_image,
    load_nifti,
    nifti_stem,
    save_labels,
    save_nifti,
    to_working,
    volume_from_image,
)


def load_volume(path: Path | str, *, as_labels: bool = False,
                series_uid: str | None = None) -> Volume:
    """A NIfTI file, or a folder holding a DICOM series (one study, or ``series_uid``), in the
    working layout, fully validated. Label maps are read from NIfTI only."""
    path = Path(path)
    if path.is_dir() and not as_labels:
        return load_dicom(path, series_uid=series_uid)
    return _nifti.load_volume(path, as_labels=as_labels)


__all__ = [
    "MAX_AXIS", "MAX_VOXELS", "MIN_INPLANE", "NIFTI_SUFFIXES", "WORKING_AXCODES",
    "DicomSource", "SourceGeometry", "Volume", "check_same_grid", "dicom_source", "is_nifti_path",
    "is_scar_output", "labels_to_image", "load_dicom", "load_nifti", "load_volume", "nifti_stem",
    "save_labels", "save_nifti", "to_working", "volume_from_image",
]
