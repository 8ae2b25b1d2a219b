"""Finding what a folder holds: DICOM studies and series (headers only), NIfTI files, and the
entries that cannot be read, in one walk of the tree.

Nothing found is dropped without a word: a DICOM file whose header cannot be read, and an entry
that is not a readable regular file (a broken link, a FIFO, a file without read permission), is
listed with its reason, beside the study it may belong to. scar-net's own earlier outputs (a
DICOM-SEG or a NIfTI label map whose header says scar-net wrote it) are never inputs.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scar_runtime.core.errors import InputFileError
from scar_runtime.io.dicom.attrs import (
    MEDIA_STORAGE_DIRECTORY,
    MR_IMAGE_STORAGE,
    MULTIFRAME_MR,
    SEGMENTATION_STORAGE,
    attr,
    file_uid,
    int_attr,
    one_line,
    orientation_or_none,
    plane_of,
    pydicom_module,
)
from scar_runtime.io.nifti import is_nifti_path, is_scar_output, nifti_stem

MIN_SERIES_SLICES = 5  # fewer is a localizer or a single slice, not a sagittal stack to segment
# A PACS export of a few studies holds some thousands of files; far more is not one exam.
MAX_DICOM_FILES = 20000
MAX_SCANNED_FILES = 200000


@dataclass
class DicomSeries:
    """One series found while scanning: its files and enough header facts to choose it."""

    uid: str
    study_uid: str
    sop_class_uid: str
    modality: str
    description: str
    number: str
    files: list[Path] = field(default_factory=list)
    headers: list = field(default_factory=list)  # pydicom datasets, pixel data deferred

    @property
    def sop_class_name(self) -> str:
        from pydicom.uid import UID

        return UID(self.sop_class_uid).name if self.sop_class_uid else "no SOP class"

    @property
    def is_image(self) -> bool:
        return "Image Storage" in self.sop_class_name or any("PixelData" in d for d in
                                                             self.headers[:1])

    @property
    def is_multiframe(self) -> bool:
        return self.sop_class_uid in MULTIFRAME_MR

    @property
    def plane(self) -> str:
        """sagittal / coronal / axial / oblique from the first image's orientation."""
        if self.is_multiframe and self.headers:
            from scar_runtime.io.dicom.enhanced import shared_orientation

            return plane_of(shared_orientation(self.headers[0]))
        return plane_of(orientation_or_none(self.headers[0]) if self.headers else None)

    @property
    def n_slices(self) -> int:
        if self.is_multiframe and len(self.headers) == 1:
            return int_attr(self.headers[0], "NumberOfFrames", 1) or 0
        return len(self.files)

    @property
    def localizer_reason(self) -> str | None:
        """Why this series is a localizer (scout), not a stack to segment; None if it is not
        one: ImageType says LOCALIZER, or its images lie in several orientations (3-plane)."""
        kinds = {str(v).strip().upper() for d in self.headers
                 for v in (_values(attr(d, "ImageType")))}
        if "LOCALIZER" in kinds:
            return "localizer"
        # several planes (a 3-plane scout); one tilted slice in a stack is not a localizer but
        # a broken stack, refused as such when the series is read
        planes = {plane_of(orientation_or_none(d)) for d in self.headers} - {"no orientation"}
        if len(planes) > 1:
            return f"mixed orientations: {', '.join(sorted(planes))}"
        return None

    @property
    def is_candidate(self) -> bool:
        """An MR image stack scar-net is made for: sagittal, more than a few slices, not a
        localizer."""
        return (self.sop_class_uid in (MR_IMAGE_STORAGE, *MULTIFRAME_MR)
                and self.plane == "sagittal" and self.n_slices >= MIN_SERIES_SLICES
                and self.localizer_reason is None)

    def summary(self) -> str:
        desc = f" {self.description!r}" if self.description else ""
        loc = self.localizer_reason
        kind = f"{loc}, " if loc else ""
        n = self.n_slices
        unit = "frame" if self.is_multiframe else "image" if self.is_image else "object"
        return (f"{self.uid} ({self.modality or '?'} {self.plane}{desc}, {kind}{n} "
                f"{unit}{'s' if n != 1 else ''})")


def _values(raw) -> list:
    if raw is None:
        return []
    return list(raw) if hasattr(raw, "__iter__") and not isinstance(raw, str | bytes) else [raw]


@dataclass
class DicomStudy:
    uid: str
    name: str  # for output file names: the study's folder below the scanned root
    folder: Path
    series: dict[str, DicomSeries] = field(default_factory=dict)
    broken: list[tuple[Path, str]] = field(default_factory=list)  # DICOM files we cannot read

    @property
    def files(self) -> list[Path]:
        return [f for s in self.series.values() for f in s.files]


@dataclass
class DicomScan:
    root: Path
    studies: list[DicomStudy]
    dicomdirs: list[Path]
    broken: list[tuple[Path, str]]  # unreadable DICOM files or entries that belong to no study
    other_files: int  # files that are not DICOM (and not NIfTI)
    nifti: list[Path] = field(default_factory=list)  # NIfTI files (not scar-net's own outputs)
    own_outputs: int = 0  # scar-net's own earlier results, never inputs


def _part10(path: Path) -> bool | str:
    """True for a DICOM Part-10 file (128-byte preamble then 'DICM', what scanners and PACS
    export), False for another file, or why the file cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return len(head) == 132 and head[128:] == b"DICM"


def _walk_files(root: Path) -> Iterable[Path]:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):  # hidden files, our own temp files
                continue
            n += 1
            if n > MAX_SCANNED_FILES:
                raise InputFileError(f"{root}: more than {MAX_SCANNED_FILES:,} files below this "
                                     "folder; point scar at one study or a folder of studies")
            yield Path(dirpath) / name


def _is_own_nifti(path: Path) -> bool:
    return nifti_stem(path).endswith("_seg") and is_scar_output(path)


def scan_folder(root: Path | str) -> DicomScan:
    """Read the headers of every DICOM file below ``root`` and group them by study and series;
    list the NIfTI files and what cannot be read."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"{root}: not a folder")
    by_study: dict[str, DicomStudy] = {}
    scan = DicomScan(root=root, studies=[], dicomdirs=[], broken=[], other_files=0)
    unreadable: list[tuple[Path, str]] = []
    n_dicom = 0
    for path in _walk_files(root):
        if is_nifti_path(path):
            if path.is_dir():
                continue
            if path.is_file() and _is_own_nifti(path):
                scan.own_outputs += 1  # our result of an earlier run into this folder
            else:  # a link or FIFO named like a volume is a case too: it fails in one line
                scan.nifti.append(path)
            continue
        if not path.is_file():
            unreadable.append((path, "not a readable regular file (a broken link, FIFO or "
                                     "device)"))
            continue
        kind = _part10(path)
        if isinstance(kind, str):
            unreadable.append((path, kind))
            continue
        if not kind:
            scan.other_files += 1
            continue
        n_dicom += 1
        if n_dicom == 1:  # only now: a folder without DICOM files needs no pydicom
            pydicom = pydicom_module()
        if n_dicom > MAX_DICOM_FILES:
            raise InputFileError(f"{root}: more than {MAX_DICOM_FILES:,} DICOM files; point scar "
                                 "at one study or a smaller folder of studies")
        _add_file(pydicom, path, by_study, scan)
    scan.studies = sorted(by_study.values(), key=lambda s: min(s.files))
    _name_studies(root, scan.studies)
    if n_dicom:  # in a NIfTI-only folder an odd entry is no case (it was never one before)
        scan.broken += unreadable
    scan.broken = _assign_broken(scan.broken, scan.studies)
    return scan


def _add_file(pydicom, path: Path, by_study: dict[str, DicomStudy], scan: DicomScan) -> None:
    try:
        # pixel data (and other large values) stay in the file until a series is chosen;
        # pydicom only warns about a file that ends early (and returns what it read)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size="4 KB")
            # values are decoded on first access: a malformed one raises here, not later
            sop_class = file_uid(ds, "SOPClassUID") or file_uid(
                getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
            is_dicomdir = sop_class == MEDIA_STORAGE_DIRECTORY or (
                "DirectoryRecordSequence" in ds)
            ours = sop_class == SEGMENTATION_STORAGE and str(
                getattr(ds, "Manufacturer", "")) == "scar-net"
            study_uid = file_uid(ds, "StudyInstanceUID")
            series_uid = file_uid(ds, "SeriesInstanceUID")
            facts = dict(modality=str(getattr(ds, "Modality", "") or ""),
                         description=str(getattr(ds, "SeriesDescription", "") or "").strip(),
                         number=str(getattr(ds, "SeriesNumber", "") or ""))
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on a damaged file
        scan.broken.append((path, f"unreadable DICOM header ({one_line(e)})"))
        return
    ended = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if ended:
        scan.broken.append((path, f"truncated file ({ended[0].split(' in file ')[0]})"))
        return
    if is_dicomdir:
        scan.dicomdirs.append(path)
        return
    if ours:
        scan.own_outputs += 1  # our own result from an earlier run into this folder
        return
    if not study_uid or not series_uid:
        scan.broken.append((path, "no StudyInstanceUID or SeriesInstanceUID"))
        return
    study = by_study.setdefault(study_uid, DicomStudy(uid=study_uid, name="", folder=scan.root))
    series = study.series.get(series_uid)
    if series is None:
        series = study.series[series_uid] = DicomSeries(
            uid=series_uid, study_uid=study_uid, sop_class_uid=sop_class, **facts)
    series.files.append(path)
    series.headers.append(ds)


def _name_studies(root: Path, studies: list[DicomStudy]) -> None:
    """Name each study by its folder below ``root`` (the root's own name when it is the root)."""
    for st in studies:
        st.folder = Path(os.path.commonpath([f.parent for f in st.files]))
        rel = st.folder.relative_to(root)
        st.name = "_".join(rel.parts) if rel.parts else (root.resolve().name or "dicom")
    seen: dict[str, int] = {}
    for st in studies:
        seen[st.name] = seen.get(st.name, 0) + 1
    for st in studies:  # two studies in one folder: tell them apart by their UID
        if seen[st.name] > 1:
            st.name = f"{st.name}_{hashlib.sha1(st.uid.encode()).hexdigest()[:8]}"


def _assign_broken(broken, studies):
    """An unreadable file belongs to the study beside it (it may be one of its slices)."""
    left = []
    for path, why in broken:
        owners = [st for st in studies if any(f.parent == path.parent for f in st.files)]
        if not owners:
            owners = [st for st in studies if st.folder in path.parents]
        for st in owners:
            st.broken.append((path, why))
        if not owners:
            left.append((path, why))
    return left


def describe_empty(scan: DicomScan) -> str:
    """Why a scanned folder holds no case at all (one line)."""
    root = scan.root
    if scan.broken:
        path, why = scan.broken[0]
        return (f"{root}: {len(scan.broken)} DICOM file(s) that cannot be read, e.g. "
                f"{path.name}: {why}")
    if scan.dicomdirs:
        return (f"{root}: a DICOMDIR but no DICOM image files (copy the whole exported folder, "
                "not only the DICOMDIR)")
    own = (f", only {scan.own_outputs} result(s) scar-net wrote itself"
           if scan.own_outputs else "")
    return (f"{root}: no .nii or .nii.gz files and no DICOM files in this folder "
            f"({scan.other_files} other file(s){own})")
