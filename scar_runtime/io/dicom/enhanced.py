"""Enhanced (multi-frame) MR: one file whose frames are the slices, their geometry in the
per-frame and shared functional groups (PS3.3 C.7.6.16), read with pydicom.

A file that is one stack (one orientation, one frame per position, evenly spaced) is read like a
series of single-frame images; several frames at one position (echoes, phases, diffusion
directions, several stacks) are refused in one line, as are several multi-frame files in one
series. Only the functional groups the geometry needs are read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scar_runtime.core.errors import InvalidImageError
from scar_runtime.io.dicom.attrs import attr, file_uid, floats, int_attr, malformed_as_error
from scar_runtime.io.dicom.pixels import read_pixels
from scar_runtime.io.dicom.scan import DicomSeries
from scar_runtime.io.dicom.stack import check_orientation, check_size, image_facts, stack_order
from scar_runtime.io.nifti import Volume

UNSUPPORTED = "multi-frame (enhanced) MR is not supported"


def _first(ds, sequence: str):
    """The first item of ``sequence`` (a functional group macro), None when absent."""
    seq = attr(ds, sequence)
    return seq[0] if seq else None


def _frame_value(shared, frame, sequence: str, keyword: str, n: int):
    """A geometry value of one frame: its own functional group first, else the shared one."""
    for item in (frame, shared):
        if item is None:
            continue
        inner = _first(item, sequence)
        if inner is not None:
            value = floats(inner, keyword, n)
            if value is not None:
                return value
    return None


def shared_orientation(ds) -> np.ndarray | None:
    """The orientation of the first frame (how a series is classified before it is read)."""
    per_frame = attr(ds, "PerFrameFunctionalGroupsSequence")
    return _frame_value(_first(ds, "SharedFunctionalGroupsSequence"),
                        per_frame[0] if per_frame else None,
                        "PlaneOrientationSequence", "ImageOrientationPatient", 6)


def _rescale(shared, frame) -> tuple[float, float]:
    for item in (frame, shared):
        inner = _first(item, "PixelValueTransformationSequence") if item else None
        if inner is not None:
            slope, icpt = floats(inner, "RescaleSlope", 1), floats(inner, "RescaleIntercept", 1)
            if slope is not None and icpt is not None:
                return float(slope[0]), float(icpt[0])
    return 1.0, 0.0


def _geometry(path: Path, ds, n: int):
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = attr(ds, "PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != n:
        raise InvalidImageError(f"{path}: {UNSUPPORTED} without one per-frame functional group "
                                f"a frame ({n} frames)")
    iops, positions, spacings, rescale = [], [], [], []
    for frame in per_frame:
        iops.append(_frame_value(shared, frame, "PlaneOrientationSequence",
                                 "ImageOrientationPatient", 6))
        positions.append(_frame_value(shared, frame, "PlanePositionSequence",
                                      "ImagePositionPatient", 3))
        spacings.append(_frame_value(shared, frame, "PixelMeasuresSequence", "PixelSpacing", 2))
        rescale.append(_rescale(shared, frame))
    if any(v is None for v in iops + positions):
        raise InvalidImageError(f"{path}: {UNSUPPORTED} here: a frame without a plane position "
                                "or orientation")
    iop, ps = iops[0], spacings[0]
    check_orientation(path, iop, ps)
    if np.abs(np.array(iops) - iop).max() > 1e-3 or any(
            s is None or np.abs(s - ps).max() > 1e-4 for s in spacings):
        raise InvalidImageError(f"{path}: {UNSUPPORTED} when its frames differ in orientation or "
                                "pixel spacing (several stacks in one file)")
    pos = np.array(positions)
    distinct = len(np.unique(np.round(pos @ np.cross(iop[:3], iop[3:]), 3)))
    if distinct < n:
        raise InvalidImageError(f"{path}: {UNSUPPORTED} when several frames share a position "
                                f"({n} frames at {distinct} positions: echoes, phases or "
                                "stacks)")
    thick = _frame_value(shared, per_frame[0], "PixelMeasuresSequence", "SliceThickness", 1)
    return iop, ps, pos, np.array(rescale), thick


def enhanced_volume(series: DicomSeries, *, name: str, path: Path | None) -> Volume:
    from scar_runtime.io.dicom.seg_source import seg_source_enhanced
    from scar_runtime.io.dicom.volume import DicomSource, make_volume

    if len(series.files) != 1:
        raise InvalidImageError(f"{series.files[0].parent}: {len(series.files)} multi-frame "
                                f"files in one series; {UNSUPPORTED} split over several files")
    f, ds = series.files[0], series.headers[0]
    with malformed_as_error(f):
        n = int_attr(ds, "NumberOfFrames", 1) or 0
        size, photo = image_facts(f, ds, frames=n)
        check_size(f, n, size)
        iop, ps, pos, rescale, thick = _geometry(f, ds, n)
        order, step = stack_order(pos, iop, [f"frame {i + 1}" for i in range(n)], f,
                                  float(thick[0]) if thick is not None else None)
        seg = seg_source_enhanced(ds, iop=iop, ps=ps, positions=pos, step_mm=step,
                                  series_uid=series.uid,
                                  thickness=float(thick[0]) if thick is not None else None)
        pixels = read_pixels(f, ds, frames=n, rescale=False)
    if n == 1:
        pixels = pixels[None]
    pixels = pixels * rescale[:, 0, None, None] + rescale[:, 1, None, None]
    data = pixels[order].transpose(2, 1, 0).astype(np.float32)  # (column, row, slice)
    if photo == "MONOCHROME1":
        data = (data.max() + data.min()) - data
    uid = file_uid(ds, "SOPInstanceUID")
    source = DicomSource(
        study_instance_uid=series.study_uid, series_instance_uid=series.uid,
        frame_of_reference_uid=file_uid(ds, "FrameOfReferenceUID"),
        sop_instance_uids=[uid] * n, files=[f], seg=seg,
        frame_numbers=[int(i) + 1 for i in order])
    return make_volume(data, iop, ps, step, pos[order[0]], where=f.parent, path=path,
                       name=name, source=source)
