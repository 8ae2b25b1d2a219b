"""Choosing the series of a study to segment: the one sagittal MR stack (not a localizer), or
the one named with ``--series``; anything else is refused in one line that lists the series."""

from __future__ import annotations

from scar_runtime.core.errors import InputFileError, InvalidImageError
from scar_runtime.io.dicom.scan import MIN_SERIES_SLICES, DicomScan, DicomSeries, DicomStudy


def choose_series(study: DicomStudy, series_uid: str | None = None) -> DicomSeries:
    where = study.folder
    if series_uid:
        if series_uid not in study.series:
            raise InputFileError(f"{where}: no series {series_uid} here (series: "
                                 + "; ".join(s.summary() for s in study.series.values()) + ")")
        return study.series[series_uid]
    fits = [s for s in study.series.values() if s.is_candidate]
    if len(fits) == 1:
        return fits[0]
    if len(fits) > 1:
        raise InputFileError(f"{where}: {len(fits)} sagittal MR series fit, choose one with "
                             "--series UID: " + "; ".join(s.summary() for s in fits))
    images = [s for s in study.series.values() if s.is_image]
    if not images:
        kinds = sorted({s.sop_class_name for s in study.series.values()})
        raise InvalidImageError(f"{where}: no image series, only non-image DICOM objects ("
                                + ", ".join(kinds) + ")")
    raise InvalidImageError(
        f"{where}: no sagittal MR image series with at least {MIN_SERIES_SLICES} slices that is "
        "not a localizer (series: " + "; ".join(s.summary() for s in study.series.values())
        + "); pick one with --series UID")


def find_series(scan: DicomScan, series_uid: str) -> DicomStudy:
    """The study holding ``series_uid``, with only that series left in it."""
    for st in scan.studies:
        if series_uid in st.series:
            return DicomStudy(uid=st.uid, name=st.name, folder=st.folder,
                              series={series_uid: st.series[series_uid]}, broken=st.broken)
    found = "; ".join(s.summary() for st in scan.studies for s in st.series.values())
    raise InputFileError(f"{scan.root}: no series {series_uid} here (series: {found or 'none'})")
