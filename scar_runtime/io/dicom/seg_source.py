"""What a DICOM-SEG takes from its source series: a bounded, normalised copy, made when the
series is read (before inference), so that every series scar-net can segment gets its SEG.

highdicom copies the whole Patient and Study modules of the first source image, nested sequences
included (a 3000-level sequence is a RecursionError, 250 levels gigabytes of copies), and refuses
values real archives hold: de-identified files lack type-2 attributes (PatientName, StudyDate...),
scanners write PatientSex "U" or "MALE", dates as "2026-01-01", character sets as "UTF-8". So the
SEG is given small stand-in source datasets holding only what it needs: the identity and geometry
of each image, and the patient and study attributes as plain text, absent ones empty, odd values
normalised or dropped with a note (which stats.json carries), all text written as UTF-8.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from scar_runtime.io.dicom.attrs import attr, file_uid

# Patient and General Study module attributes a SEG repeats (type 2: present, maybe empty).
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
MAX_CHARS = {"PatientName": 64, "ReferringPhysicianName": 64, "PatientID": 64, "StudyID": 16,
             "AccessionNumber": 16}
SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}
UTF8 = "ISO_IR 192"


@dataclass
class SegSource:
    """The stand-in source datasets of a series (slice order) and what was changed on the way."""

    headers: list = field(repr=False, default_factory=list)
    notes: list[str] = field(default_factory=list)
    frame_of_reference_uid: str = ""


def _raw_text(ds, keyword: str) -> str | list[str] | None:
    value = attr(ds, keyword)
    if value is None:
        return None
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]  # a multi-valued element
    return str(value)


def _date(raw: str, keyword: str, notes: list[str]) -> str:
    digits = re.fullmatch(r"(\d{4})[-./]?(\d{2})[-./]?(\d{2})", raw.strip())
    if digits:
        try:
            dt.date(*map(int, digits.groups()))
        except ValueError:
            digits = None
    if not digits:
        notes.append(f"{keyword} {raw!r} is not a date: left empty in the DICOM-SEG")
        return ""
    value = "".join(digits.groups())
    if value != raw:
        notes.append(f"{keyword} {raw!r} written as {value}")
    return value


def _time(raw: str, keyword: str, notes: list[str]) -> str:
    m = re.fullmatch(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?", raw.strip())
    if not m or int(m[1]) > 23 or int(m[2] or 0) > 59 or int(m[3] or 0) > 60:
        notes.append(f"{keyword} {raw!r} is not a time: left empty in the DICOM-SEG")
        return ""
    value = "".join(g for g in m.groups() if g)
    if value != raw:
        notes.append(f"{keyword} {raw!r} written as {value}")
    return value


def _sex(raw: str, notes: list[str]) -> str:
    value = SEX.get(raw.strip().upper(), "")
    if value != raw:
        notes.append(f"PatientSex {raw!r} " + (f"written as {value}" if value else
                                               "is not M, F or O: left empty in the DICOM-SEG"))
    return value


def _text(raw: str, keyword: str, notes: list[str]) -> str:
    value = "".join(c for c in raw if c.isprintable() or c in "=^").strip()
    limit = MAX_CHARS.get(keyword, 64)
    if len(value) > limit:
        notes.append(f"{keyword} longer than {limit} characters: cut to {limit}")
        value = value[:limit]
    return value


def patient_and_study(ds, notes: list[str]) -> dict[str, str]:
    """The Patient and Study attributes of ``ds`` as values a SEG may hold."""
    out = {}
    for kw in PATIENT_STUDY:
        raw = _raw_text(ds, kw)
        if raw is None and kw in ds:
            notes.append(f"{kw} cannot be decoded: left empty in the DICOM-SEG")
        if isinstance(raw, list):
            if raw:
                notes.append(f"{kw} has {len(raw)} values: the first is kept")
            raw = raw[0] if raw else ""
        raw = raw or ""
        if not raw:
            out[kw] = ""
        elif kw.endswith("Date"):
            out[kw] = _date(raw, kw, notes)
        elif kw.endswith("Time"):
            out[kw] = _time(raw, kw, notes)
        elif kw == "PatientSex":
            out[kw] = _sex(raw, notes)
        else:
            out[kw] = _text(raw, kw, notes)
    return out


def _charset_note(ds, notes: list[str]) -> None:
    """pydicom decoded the text with the source's character set; the SEG is written in UTF-8.
    Say so where the source named a set that is not a DICOM term (pydicom then guesses)."""
    from pydicom.charset import python_encoding

    raw = _raw_text(ds, "SpecificCharacterSet") or ""
    terms = [t.strip() for t in (raw if isinstance(raw, list) else [raw])]
    odd = [t for t in terms if t and t not in python_encoding]
    if odd:
        joined = "\\".join(terms)
        notes.append(f"SpecificCharacterSet {joined!r} is not a DICOM term "
                     "(read as pydicom guessed); the DICOM-SEG is written in UTF-8 (ISO_IR 192)")


def _common(first, *, step_mm: float, series_uid: str, notes: list[str],
            thickness=None) -> dict:
    """The attributes every stand-in shares: patient, study, frame of reference, thickness."""
    _charset_note(first, notes)
    common = patient_and_study(first, notes)
    for kw in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
               "SeriesNumber", "Rows", "Columns"):
        value = attr(first, kw)
        if value is not None and value != "":
            common[kw] = value
    frame = file_uid(first, "FrameOfReferenceUID")
    if not frame:
        from pydicom.uid import generate_uid

        frame = str(generate_uid(entropy_srcs=["scar-net frame of reference", series_uid]))
        notes.append("FrameOfReferenceUID absent in the source: the DICOM-SEG names the frame of"
                     f" reference {frame} (derived from the series UID)")
    common["FrameOfReferenceUID"] = frame
    thickness = attr(first, "SliceThickness") if thickness is None else thickness
    if not thickness or _positive(thickness) is None:
        from pydicom.valuerep import format_number_as_ds

        thickness = format_number_as_ds(float(step_mm))
        notes.append("SliceThickness absent or invalid in the source: the slice spacing "
                     f"{thickness} mm is used in the DICOM-SEG")
    common["SliceThickness"] = thickness
    if any(isinstance(v, str) and not v.isascii() for v in common.values()):
        common["SpecificCharacterSet"] = UTF8
    return common


def _stand_in(values: dict):
    from pydicom.dataset import Dataset

    ds = Dataset()
    if "SpecificCharacterSet" in values:  # first: pydicom encodes the text with it
        ds.SpecificCharacterSet = values["SpecificCharacterSet"]
    for kw, value in values.items():
        setattr(ds, kw, value)
    return ds


def seg_source(headers: list, *, step_mm: float, series_uid: str) -> SegSource:
    """Stand-in source datasets for the images ``headers`` (slice order, already checked)."""
    notes: list[str] = []
    common = _common(headers[0], step_mm=step_mm, series_uid=series_uid, notes=notes)
    out = []
    for ds in headers:
        own = {kw: attr(ds, kw) for kw in ("SOPInstanceUID", "ImageOrientationPatient",
                                           "ImagePositionPatient", "PixelSpacing")}
        out.append(_stand_in({**common, **own}))
    return SegSource(headers=out, notes=notes,
                     frame_of_reference_uid=common["FrameOfReferenceUID"])


def seg_source_enhanced(ds, *, iop, ps, positions, step_mm: float, series_uid: str,
                        thickness: float | None) -> SegSource:
    """A stand-in enhanced MR image: its frames' geometry as functional groups, nothing else."""
    from pydicom.valuerep import format_number_as_ds as ds_text

    notes: list[str] = []
    common = _common(ds, step_mm=step_mm, series_uid=series_uid, notes=notes,
                     thickness=ds_text(thickness) if thickness else "")
    common["SOPInstanceUID"] = attr(ds, "SOPInstanceUID")
    common["NumberOfFrames"] = len(positions)
    measures = _stand_in({"PixelSpacing": [ds_text(float(v)) for v in ps],
                          "SliceThickness": common["SliceThickness"]})
    orientation = _stand_in({"ImageOrientationPatient": [ds_text(float(v)) for v in iop]})
    shared = _stand_in({"PixelMeasuresSequence": [measures],
                        "PlaneOrientationSequence": [orientation]})
    per_frame = [_stand_in({"PlanePositionSequence": [_stand_in(
        {"ImagePositionPatient": [ds_text(float(v)) for v in p]})]}) for p in positions]
    common["SharedFunctionalGroupsSequence"] = [shared]
    common["PerFrameFunctionalGroupsSequence"] = per_frame
    return SegSource(headers=[_stand_in(common)], notes=notes,
                     frame_of_reference_uid=common["FrameOfReferenceUID"])


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if v > 0 else None
