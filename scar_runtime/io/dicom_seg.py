"""The DICOM-SEG writer: a result as a DICOM Segmentation that references its source series.

highdicom builds the object; this module only says what goes in it: one binary segment per
structure the network found, coded with the DICOM standard's anatomy codes (CID 7602 "Vertebral
Anatomic Structure": e.g. SCT 36470004 "L3 vertebra", SCT 62551000 "L3/L4 disc"), the level in the
segment label and description, and the algorithm identified as scar-net with its version and the
model file's SHA-256. OHIF, 3D Slicer (QuantitativeReporting) and PACS viewers display it over the
series it references.

highdicom and pydicom are optional (``scar-net[dicom]``) and imported only when a DICOM-SEG is made.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scar_runtime import __version__
from scar_runtime import labels as L
from scar_runtime.core.errors import ConfigError, OutputError, import_extra
from scar_runtime.core.hashing import file_sha256
from scar_runtime.io.dicom import dicom_source

MANUFACTURER = "scar-net"
CONTENT_LABEL = "SCARNET"  # CS: upper case, at most 16 characters
SERIES_NUMBER_OFFSET = 1000  # the SEG series is numbered after its source series
# What each kind of structure is called in a segment label; the level name goes in front.
KIND_LABELS = {"vertebra": "vertebral body", "disc": "intervertebral disc", "sacrum": "sacrum"}


@dataclass(frozen=True)
class AlgorithmInfo:
    """Which algorithm made a segmentation: goes into every segment's Algorithm Identification."""

    model_name: str
    model_sha256: str
    version: str = __version__
    name: str = "scar-net"

    @classmethod
    def for_model(cls, model: Path | str) -> AlgorithmInfo:
        model = Path(model)
        return cls(model_name=model.name, model_sha256=file_sha256(model))


def _highdicom():
    return import_extra("highdicom", "writing DICOM-SEG needs the optional dependencies: "
                                     "pip install 'scar-net[dicom]'")


def property_type(structure: L.Structure):
    """The SNOMED CT code of one structure, from pydicom's copy of the DICOM standard's codes:
    the level-specific vertebra or disc code (CID 7602) where the standard has one."""
    from pydicom.sr.codedict import codes

    level = structure.name.replace("/", "").replace("-", "")
    keyword = {"vertebra": f"{level}Vertebra", "disc": f"{level}Disc",
               "sacrum": "Sacrum"}.get(structure.kind, "")
    try:
        return getattr(codes.SCT, keyword)
    except AttributeError:  # a level the standard has no code for: say what kind it is
        return codes.SCT.Vertebra if structure.kind == "vertebra" else codes.SCT.Spine


def segment_label(structure: L.Structure) -> str:
    return f"{structure.name} {KIND_LABELS.get(structure.kind, structure.kind)}"


def _uid(*parts: str) -> str:
    """Deterministic UIDs: the same source series and model give the same SEG identity, so a PACS
    replaces a re-sent result instead of piling up copies."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["scar-net dicom-seg", *parts]))


def _segment_descriptions(hd, structures: list[L.Structure], algorithm: AlgorithmInfo,
                          series_uid: str) -> list:
    from pydicom.sr.codedict import codes

    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version,
        family=codes.cid7162.ArtificialIntelligence, source=algorithm.model_name,
        parameters={"model_sha256": algorithm.model_sha256})
    out = []
    for number, s in enumerate(structures, start=1):
        d = hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment_label(s),
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=property_type(s),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, tracking_id=s.name,
            tracking_uid=_uid(series_uid, "segment", s.name),
            anatomic_regions=[codes.SCT.Spine],
            display_color=hd.color.CIELabColor.from_rgb(*s.color))
        d.SegmentDescription = (f"{segment_label(s)}, level {s.name}, segmented by "
                                f"{algorithm.name} {algorithm.version}")[:64]
        out.append(d)
    return out


def make_segmentation(result, algorithm: AlgorithmInfo):
    """The DICOM-SEG dataset of ``result`` (a ``SegmentationResult`` of a DICOM series), or None
    when no structure was found (a SEG must hold at least one segment)."""
    source = dicom_source(result.volume)
    if source is None:
        raise ConfigError("a DICOM-SEG needs a DICOM series as input (it references the source "
                          "images); use --format nifti for NIfTI input")
    hd = _highdicom()
    labels = result.volume.source.from_working(result.labels)  # (column, row, slice)
    present = [int(v) for v in np.unique(labels) if v != L.BACKGROUND]
    unknown = [v for v in present if v not in L.BY_ID]
    if unknown:
        raise OutputError(f"label values {unknown} are not in the label map")
    if not present:
        return None
    structures = [L.BY_ID[v] for v in present]
    lut = np.zeros(int(labels.max()) + 1, np.uint8)
    for number, v in enumerate(present, start=1):
        lut[v] = number
    frames = lut[labels].transpose(2, 1, 0)  # (slice, row, column)
    if source.frame_numbers is not None:  # enhanced MR: the SEG's frames in the source's order
        frames = frames[np.argsort(source.frame_numbers)]
    frames = np.ascontiguousarray(frames)
    # the bounded, normalised stand-ins made when the series was read (io/dicom/seg_source.py),
    # never the source headers themselves
    images = source.seg.headers
    first = images[0]
    series_uid = _uid(source.series_instance_uid, algorithm.model_sha256, algorithm.version)
    try:
        number = int(getattr(first, "SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        number = SERIES_NUMBER_OFFSET
    try:
        return hd.seg.Segmentation(
            source_images=images, pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(hd, structures, algorithm, series_uid),
            series_instance_uid=series_uid, series_number=number,
            sop_instance_uid=_uid(series_uid, "instance"), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=f"SCAR-Net {algorithm.model_name}"
            [:64], software_versions=algorithm.version,
            device_serial_number=algorithm.model_sha256[:64], content_label=CONTENT_LABEL,
            content_description="Lumbar vertebral bodies and intervertebral discs",
            series_description="scar-net segmentation")
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError) as e:
        raise OutputError(f"cannot make a DICOM-SEG for {source.series_instance_uid}: "
                          f"{type(e).__name__}: {e}") from e


def segmentation_bytes(result, algorithm: AlgorithmInfo) -> bytes | None:
    """The DICOM-SEG as a Part-10 file in memory (None when no structure was found)."""
    import pydicom

    seg = make_segmentation(result, algorithm)
    if seg is None:
        return None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, seg, enforce_file_format=True)
    return buf.getvalue()
