"""The chosen series as the same working-layout ``Volume`` the NIfTI reader makes.

Geometry, once, here: DICOM patient coordinates are LPS+; pixel (row r, column c) of a slice sits
at ``IPP + c * PixelSpacing[1] * row_dir + r * PixelSpacing[0] * col_dir`` with
``row_dir, col_dir = ImageOrientationPatient[:3], [3:]``. The source layout of a DICOM volume is
``array[column, row, slice]`` with slices sorted along the slice normal ``row_dir x col_dir``
(the order of ``DicomSource.sop_instance_uids``); its affine is the LPS one with x and y negated.
The image is then validated and reoriented exactly as a NIfTI file is
(``nifti.volume_from_image``), so everything downstream is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scar_runtime.core.errors import InputFileError
from scar_runtime.io.dicom.attrs import LPS_TO_RAS, file_uid, floats, malformed_as_error
from scar_runtime.io.dicom.choose import choose_series, find_series
from scar_runtime.io.dicom.pixels import read_pixels
from scar_runtime.io.dicom.scan import DicomSeries, DicomStudy, describe_empty, scan_folder
from scar_runtime.io.dicom.seg_source import SegSource, seg_source
from scar_runtime.io.dicom.stack import check_slice_headers, slice_order
from scar_runtime.io.nifti import Volume, volume_from_image


@dataclass
class DicomSource:
    """Where a volume came from in the PACS: what results are joined back with."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: list[str]  # in slice order (the source layout's third axis)
    files: list[Path]
    seg: SegSource = field(repr=False, default_factory=SegSource)  # what a DICOM-SEG copies
    # enhanced (multi-frame) MR: the frame number (1-based) of each slice in its one file
    frame_numbers: list[int] | None = None

    @property
    def notes(self) -> list[str]:
        return self.seg.notes

    def to_json(self) -> dict:
        doc = {"study_instance_uid": self.study_instance_uid,
               "series_instance_uid": self.series_instance_uid,
               "frame_of_reference_uid": self.frame_of_reference_uid,
               "voxel_axes": "(column, row, slice) with slice indexing sop_instance_uids",
               "sop_instance_uids": list(self.sop_instance_uids)}
        if self.frame_numbers is not None:
            doc["voxel_axes"] += " and frame_numbers"
            doc["frame_numbers"] = list(self.frame_numbers)
        return doc


def make_volume(data: np.ndarray, iop: np.ndarray, ps: np.ndarray, step: float,
                origin: np.ndarray, *, where: Path, path: Path | None, name: str,
                source: DicomSource) -> Volume:
    """``data`` (column, row, slice) in the geometry of the stack, as a validated Volume."""
    import nibabel as nib

    row_dir, col_dir = iop[:3], iop[3:]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]  # along a row: the column index grows, by the column spacing
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = np.cross(row_dir, col_dir) * step
    lps[:3, 3] = origin
    affine = LPS_TO_RAS @ lps
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # scanner coordinates
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    vol = volume_from_image(img, name=str(path or where))
    vol.path = path
    vol.meta["name"] = name
    vol.meta["dicom"] = source
    return vol


def series_volume(series: DicomSeries, *, name: str, path: Path | None = None) -> Volume:
    """The chosen series as a ``Volume`` (validated like a NIfTI file, then reoriented)."""
    if series.is_multiframe:
        from scar_runtime.io.dicom.enhanced import enhanced_volume

        return enhanced_volume(series, name=name, path=path)
    iop, ps = check_slice_headers(series)
    order, step = slice_order(series, iop)
    files = [series.files[i] for i in order]
    headers = [series.headers[i] for i in order]
    # what the DICOM-SEG needs, checked now: a problem is found before inference, not after
    with malformed_as_error(files[0]):
        seg = seg_source(headers, step_mm=step, series_uid=series.uid)
    slices = []
    for f, ds in zip(files, headers, strict=True):
        with malformed_as_error(f):
            slices.append(read_pixels(f, ds))
    data = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (column, row, slice)
    del slices
    if str(getattr(headers[0], "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        data = (data.max() + data.min()) - data  # low values are bright: the model expects MR2
    source = DicomSource(
        study_instance_uid=series.study_uid, series_instance_uid=series.uid,
        frame_of_reference_uid=file_uid(headers[0], "FrameOfReferenceUID"),
        sop_instance_uids=[file_uid(ds, "SOPInstanceUID") for ds in headers], files=files,
        seg=seg)
    return make_volume(data, iop, ps, step, floats(headers[0], "ImagePositionPatient", 3),
                       where=files[0].parent, path=path, name=name, source=source)


def study_volume(study: DicomStudy, series_uid: str | None = None) -> Volume:
    """Choose the series of one study and load it."""
    if study.broken:
        path, why = study.broken[0]
        more = f" (and {len(study.broken) - 1} more)" if len(study.broken) > 1 else ""
        raise InputFileError(f"{path}: {why}{more}")
    series = choose_series(study, series_uid)
    return series_volume(series, name=study.name, path=study.folder)


def load_dicom(folder: Path | str, *, series_uid: str | None = None) -> Volume:
    """A DICOM folder holding one study (or naming ``series_uid``) as a ``Volume``."""
    scan = scan_folder(folder)
    if series_uid:
        return study_volume(find_series(scan, series_uid), series_uid)
    if not scan.studies:
        raise InputFileError(describe_empty(scan))
    if len(scan.studies) > 1:
        raise InputFileError(f"{folder}: {len(scan.studies)} studies in this folder ("
                             + ", ".join(s.name for s in scan.studies) + "); load one, or pass "
                             "a series UID")
    return study_volume(scan.studies[0])


def dicom_source(vol: Volume) -> DicomSource | None:
    src = vol.meta.get("dicom")
    return src if isinstance(src, DicomSource) else None
