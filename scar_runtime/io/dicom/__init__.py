"""Reading a DICOM series into the same working-layout ``Volume`` the NIfTI reader makes.

A folder (flat or nested, files with or without extensions) is scanned header-first
(``scan.py``); its files are grouped by study and series; the one sagittal MR series that fits
is picked, or the one named with ``series_uid`` (``choose.py``); its geometry (``stack.py``, or
``enhanced.py`` for a multi-frame file) and pixels (``pixels.py``) are checked and turned into a
NIfTI-style image in RAS+ world coordinates, which then goes through the very same validation
and reorientation as a NIfTI file (``volume.py``). What a DICOM-SEG of the series will need is
taken from it at the same time (``seg_source.py``), before any inference.

pydicom is an optional dependency (``scar-net[dicom]``): it is imported inside the functions that
need it, so the NIfTI path never loads it.
"""

from __future__ import annotations

from scar_runtime.io.dicom.choose import choose_series, find_series
from scar_runtime.io.dicom.scan import (
    DicomScan,
    DicomSeries,
    DicomStudy,
    describe_empty,
    scan_folder,
)
from scar_runtime.io.dicom.volume import (
    DicomSource,
    dicom_source,
    load_dicom,
    series_volume,
    study_volume,
)

__all__ = ["DicomScan", "DicomSeries", "DicomSource", "DicomStudy", "choose_series",
           "describe_empty", "dicom_source", "find_series", "load_dicom", "scan_folder",
           "series_volume", "study_volume"]
