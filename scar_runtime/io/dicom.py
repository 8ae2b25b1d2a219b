"""Reading a DICOM series into the same working-layout ``Volume`` the NIfTI reader makes.

A folder (flat or nested, files with or without extensions) is scanned header-first; its files
are grouped by study and series; the one sagittal MR series that fits is picked (or the one named
with ``series_uid``); its geometry and pixels are checked and turned into a NIfTI-style image in
RAS+ world coordinates, which then goes through the very same validation and reorientation as a
NIfTI file (``nifti.volume_from_image``). Everything downstream is shared.

Geometry, once, here: DICOM patient coordinates are LPS+; pixel (row r, column c) of a slice sits
at ``IPP + c * PixelSpacing[1] * row_dir + r * PixelSpacing[0] * col_dir`` with
``row_dir, col_dir = ImageOrientationPatient[:3], [3:]``. The source layout of a DICOM volume is
``array[column, row, slice]`` with slices sorted along the slice normal ``row_dir x col_dir``
(the order of ``DicomSource.sop_instance_uids``); its affine is the LPS one with x and y negated.

pydicom is an optional dependency (``scar-net[dicom]``): it is imported inside the functions that
need it, so the NIfTI path never loads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scar_runtime.errors import ConfigError, InputFileError, InvalidImageError, ScarError
from scar_runtime.io.nifti import MAX_AXIS, MAX_VOXELS, Volume, is_nifti_path, volume_from_image

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

MIN_SERIES_SLICES = 5  # fewer is a localizer or a single slice, not a sagittal stack to segment
# A PACS export of a few studies holds some thousands of files; far more is not one exam.
MAX_DICOM_FILES = 20000
MAX_SCANNED_FILES = 200000
# Direction cosines equal within this are one orientation (DS values carry ~6 decimals).
ORIENTATION_ATOL = 1e-3
# Slice spacing may vary this much (relative) before the stack is "non-uniform".
SPACING_RTOL = 0.01
POSITION_ATOL_MM = 1e-3
# LPS (DICOM) <-> RAS (NIfTI): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _pydicom():
    try:
        import pydicom
    except ImportError as e:
        raise ConfigError("reading DICOM needs the optional dependencies: "
                          "pip install 'scar-net[dicom]'") from e
    return pydicom


def _attr(ds, keyword: str):
    """An attribute's value, None when absent or when pydicom cannot decode it (a damaged file:
    the checks that need it then refuse the file in one line)."""
    try:
        return getattr(ds, keyword, None)
    except Exception:  # noqa: BLE001 - decoding a hostile value may raise anything
        return None


def _file_uid(ds, keyword: str) -> str:
    return str(_attr(ds, keyword) or "").strip()


# --------------------------------------------------------------------------- scanning


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
    def plane(self) -> str:
        """sagittal / coronal / axial / oblique from the first image's orientation."""
        iop = _orientation_or_none(self.headers[0]) if self.headers else None
        if iop is None:
            return "no orientation"
        normal = np.abs(np.cross(iop[:3], iop[3:]))
        if normal.max() < 0.8:
            return "oblique"
        return ("sagittal", "coronal", "axial")[int(normal.argmax())]

    @property
    def is_candidate(self) -> bool:
        """An MR image stack scar-net is made for: sagittal, more than a few slices."""
        return (self.sop_class_uid == MR_IMAGE_STORAGE and self.plane == "sagittal"
                and len(self.files) >= MIN_SERIES_SLICES)

    def summary(self) -> str:
        desc = f" {self.description!r}" if self.description else ""
        return (f"{self.uid} ({self.modality or '?'} {self.plane}{desc}, {len(self.files)} "
                f"{'image' if self.is_image else 'object'}{'s' if len(self.files) != 1 else ''})")


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
    broken: list[tuple[Path, str]]  # unreadable DICOM files that belong to no study
    other_files: int  # files that are not DICOM (and not NIfTI)


def _is_part10(path: Path) -> bool:
    """A DICOM Part-10 file: 128-byte preamble then 'DICM' (what scanners and PACS export)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
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


def scan_folder(root: Path | str) -> DicomScan:
    """Read the headers of every DICOM file below ``root`` and group them by study and series."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"{root}: not a folder")
    by_study: dict[str, DicomStudy] = {}
    dicomdirs: list[Path] = []
    broken: list[tuple[Path, str]] = []
    other = n_dicom = 0
    for path in _walk_files(root):
        if not path.is_file():
            continue
        if not _is_part10(path):
            other += not is_nifti_path(path)
            continue
        n_dicom += 1
        if n_dicom == 1:  # only now: a folder without DICOM files needs no pydicom
            pydicom = _pydicom()
        if n_dicom > MAX_DICOM_FILES:
            raise InputFileError(f"{root}: more than {MAX_DICOM_FILES:,} DICOM files; point scar "
                                 "at one study or a smaller folder of studies")
        try:
            # pixel data (and other large values) stay in the file until a series is chosen;
            # pydicom only warns about a file that ends early (and returns what it read)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(path, defer_size="4 KB")
                # values are decoded on first access: a malformed one raises here, not later
                sop_class = _file_uid(ds, "SOPClassUID") or _file_uid(
                    getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
                is_dicomdir = sop_class == MEDIA_STORAGE_DIRECTORY or (
                    "DirectoryRecordSequence" in ds)
                ours = sop_class == SEGMENTATION_STORAGE and str(
                    getattr(ds, "Manufacturer", "")) == "scar-net"
                study_uid = _file_uid(ds, "StudyInstanceUID")
                series_uid = _file_uid(ds, "SeriesInstanceUID")
                facts = dict(modality=str(getattr(ds, "Modality", "") or ""),
                             description=str(getattr(ds, "SeriesDescription", "") or "").strip(),
                             number=str(getattr(ds, "SeriesNumber", "") or ""))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on a damaged file
            broken.append((path, f"unreadable DICOM header ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:160]})"))
            continue
        ended = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
        if ended:
            broken.append((path, f"truncated file ({ended[0].split(' in file ')[0]})"))
            continue
        if is_dicomdir:
            dicomdirs.append(path)
            continue
        if ours:
            continue  # our own result from an earlier run into this folder
        if not study_uid or not series_uid:
            broken.append((path, "no StudyInstanceUID or SeriesInstanceUID"))
            continue
        study = by_study.setdefault(study_uid, DicomStudy(uid=study_uid, name="", folder=root))
        series = study.series.get(series_uid)
        if series is None:
            series = study.series[series_uid] = DicomSeries(
                uid=series_uid, study_uid=study_uid, sop_class_uid=sop_class, **facts)
        series.files.append(path)
        series.headers.append(ds)
    studies = sorted(by_study.values(), key=lambda s: min(s.files))
    _name_studies(root, studies)
    broken = _assign_broken(broken, studies)
    return DicomScan(root=root, studies=studies, dicomdirs=dicomdirs, broken=broken,
                     other_files=other)


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
    """Why a scanned folder holds no study at all (one line)."""
    root = scan.root
    if scan.broken:
        path, why = scan.broken[0]
        return (f"{root}: {len(scan.broken)} DICOM file(s) that cannot be read, e.g. "
                f"{path.name}: {why}")
    if scan.dicomdirs:
        return (f"{root}: a DICOMDIR but no DICOM image files (copy the whole exported folder, "
                "not only the DICOMDIR)")
    return (f"{root}: no .nii or .nii.gz files and no DICOM files in this folder "
            f"({scan.other_files} other file(s))")


# --------------------------------------------------------------------------- choosing a series


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
        f"{where}: no sagittal MR image series with at least {MIN_SERIES_SLICES} slices (series: "
        + "; ".join(s.summary() for s in study.series.values()) + "); pick one with --series UID")


def find_series(scan: DicomScan, series_uid: str) -> DicomStudy:
    """The study holding ``series_uid``, with only that series left in it."""
    for st in scan.studies:
        if series_uid in st.series:
            return DicomStudy(uid=st.uid, name=st.name, folder=st.folder,
                              series={series_uid: st.series[series_uid]}, broken=st.broken)
    found = "; ".join(s.summary() for st in scan.studies for s in st.series.values())
    raise InputFileError(f"{scan.root}: no series {series_uid} here (series: {found or 'none'})")


# --------------------------------------------------------------------------- geometry and pixels


@dataclass
class DicomSource:
    """Where a volume came from in the PACS: what results are joined back with."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: list[str]  # in slice order (the source layout's third axis)
    files: list[Path]
    datasets: list = field(repr=False, default_factory=list)  # headers, for the DICOM-SEG

    def to_json(self) -> dict:
        return {"study_instance_uid": self.study_instance_uid,
                "series_instance_uid": self.series_instance_uid,
                "frame_of_reference_uid": self.frame_of_reference_uid,
                "voxel_axes": "(column, row, slice) with slice indexing sop_instance_uids",
                "sop_instance_uids": list(self.sop_instance_uids)}


def _floats(ds, keyword: str, n: int) -> np.ndarray | None:
    """``n`` finite numbers from a DS/FD attribute (one value or several), else None."""
    raw = _attr(ds, keyword)
    if raw is None:
        return None
    items = raw if hasattr(raw, "__iter__") and not isinstance(raw, str | bytes) else [raw]
    try:
        v = np.array([float(x) for x in items], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


def _int(ds, keyword: str, default: int) -> int | None:
    """An integer attribute (IS/US), its default when absent or empty, None when malformed."""
    raw = _attr(ds, keyword)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except (TypeError, ValueError, OverflowError):
        return None


def _orientation_or_none(ds) -> np.ndarray | None:
    return _floats(ds, "ImageOrientationPatient", 6)


@contextlib.contextmanager
def _malformed_as_error(path: Path):
    """pydicom decodes a value when it is first read: a malformed one (a DS that is no number, a
    broken sequence) raises some library error; that is bad input, said in one line."""
    try:
        yield
    except (ScarError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - any decoding error of a hostile file
        raise InvalidImageError(f"{path}: malformed DICOM attribute ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:160]})") from e


def _slice_facts(path: Path, ds):
    """One slice's (orientation, pixel spacing, size, photometric, frame of reference), or a
    one-line refusal of what makes it unusable."""
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        raise InvalidImageError(f"{path}: no pixel data" + (f" ({other[0]} is not "
                                                              "supported)" if other else ""))
    frames = _int(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise InvalidImageError(f"{path}: a multi-frame image ({ds.NumberOfFrames} frames); "
                                "scar reads series of single-frame images")
    if _int(ds, "SamplesPerPixel", 1) != 1:
        raise InvalidImageError(f"{path}: a colour image ({ds.SamplesPerPixel} samples per "
                                "pixel), expected a monochrome MR image")
    photo = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip()
    if photo not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidImageError(f"{path}: photometric interpretation {photo}, expected "
                                "MONOCHROME1 or MONOCHROME2")
    iop = _orientation_or_none(ds)
    ipp = _floats(ds, "ImagePositionPatient", 3)
    ps = _floats(ds, "PixelSpacing", 2)
    if iop is None or ipp is None:
        raise InvalidImageError(f"{path}: no valid ImageOrientationPatient / "
                                "ImagePositionPatient (not a slice with a position)")
    if ps is None or np.any(ps <= 0):
        raise InvalidImageError(f"{path}: no valid PixelSpacing")
    r, c = iop[:3], iop[3:]
    if (abs(np.linalg.norm(r) - 1) > ORIENTATION_ATOL or abs(np.linalg.norm(c) - 1)
            > ORIENTATION_ATOL or abs(r @ c) > ORIENTATION_ATOL):
        raise InvalidImageError(f"{path}: ImageOrientationPatient {iop.tolist()} is not two "
                                "orthogonal unit vectors")
    size = (_int(ds, "Rows", 0) or 0, _int(ds, "Columns", 0) or 0)
    if min(size) < 1:
        raise InvalidImageError(f"{path}: no image size (Rows/Columns)")
    return iop, ps, size, photo, _file_uid(ds, "FrameOfReferenceUID")


def _check_slice_headers(series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """Every slice: a single-frame monochrome image with geometry, all alike. Returns
    (orientation (6,), pixel spacing (2,)) of the stack."""
    ref_iop = ref_ps = ref_size = ref_photo = ref_for = None
    for path, ds in zip(series.files, series.headers, strict=True):
        with _malformed_as_error(path):
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
    n = len(series.files)
    if n * ref_size[0] * ref_size[1] > MAX_VOXELS or max(*ref_size, n) > MAX_AXIS:
        raise InvalidImageError(f"{series.files[0].parent}: implausibly large series ({n} slices "
                                f"of {ref_size[0]}x{ref_size[1]})")
    return ref_iop, ref_ps


def _slice_order(series: DicomSeries, iop: np.ndarray) -> tuple[np.ndarray, float]:
    """Sort slices along the normal; refuse duplicates, gaps, uneven or sheared stacks.
    Returns (order, slice step in mm)."""
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([_floats(ds, "ImagePositionPatient", 3) for ds in series.headers])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    dist, pos = dist[order], pos[order]
    files = [series.files[i] for i in order]
    where = files[0].parent
    if len(files) == 1:
        thick = _floats(series.headers[0], "SpacingBetweenSlices", 1)
        if thick is None:
            thick = _floats(series.headers[0], "SliceThickness", 1)
        return order, float(thick[0]) if thick is not None and thick[0] > 0 else 1.0
    gaps = np.diff(dist)
    dup = np.nonzero(gaps < POSITION_ATOL_MM)[0]
    if dup.size:
        i = int(dup[0])
        raise InvalidImageError(f"{where}: duplicated slice position ({files[i].name} and "
                                f"{files[i + 1].name} both at {dist[i]:.3f} mm along the slice "
                                "normal); one series must be one stack of slices")
    step = float(np.median(gaps))
    tol = max(POSITION_ATOL_MM, SPACING_RTOL * step)
    bad = np.nonzero(np.abs(gaps - step) > tol)[0]
    if bad.size:
        i = int(bad[0])
        if gaps[i] > 1.5 * step:
            missing = round(gaps[i] / step) - 1
            raise InvalidImageError(
                f"{where}: missing slice(s): a gap of {gaps[i]:.3f} mm between {files[i].name} "
                f"and {files[i + 1].name} where slices are {step:.3f} mm apart (about {missing} "
                "slice(s) missing)")
        raise InvalidImageError(f"{where}: non-uniform slice spacing ({gaps.min():.3f} to "
                                f"{gaps.max():.3f} mm, more than {SPACING_RTOL:.0%} apart)")
    # every slice origin on one line along the normal (no shear or in-plane shift)
    drift = pos - pos[0] - np.outer(dist - dist[0], normal)
    worst = float(np.linalg.norm(drift, axis=1).max())
    if worst > max(POSITION_ATOL_MM * 10, 0.1 * step):
        raise InvalidImageError(f"{where}: slice origins are not stacked along the slice normal "
                                f"(shifted by up to {worst:.2f} mm): a sheared or tilted stack")
    return order, (dist[-1] - dist[0]) / (len(files) - 1)


def _decoder_problem(ds) -> str | None:
    """Why this file's pixel data cannot be decoded here (None when it can)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    ts = UID(_file_uid(meta, "TransferSyntaxUID") or "1.2.840.10008.1.2")
    try:
        dec = get_decoder(ts)
    except (NotImplementedError, ValueError):
        return (f"transfer syntax {ts.name if ts.is_transfer_syntax else ts} cannot be decoded "
                "(no pixel data decoder exists for it in pydicom)")
    if not dec.is_available:
        return (f"transfer syntax {ts.name} needs a decoder that is not installed "
                f"(pip install 'scar-net[dicom]'): {'; '.join(dec.missing_dependencies)}")
    return None


def _read_pixels(path: Path, ds) -> np.ndarray:
    from pydicom.pixels import apply_rescale

    why = _decoder_problem(ds)
    if why:
        raise InvalidImageError(f"{path}: {why}")
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise anything from ValueError to their own
        raise InvalidImageError(f"{path}: truncated or corrupt pixel data ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]})") from e
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    if arr.shape != (rows, cols):
        raise InvalidImageError(f"{path}: pixel data of shape {arr.shape}, header says "
                                f"{rows}x{cols}")
    try:
        # Rescale Slope/Intercept (or a Modality LUT): stored values -> real MR intensities
        return np.asarray(apply_rescale(arr, ds), dtype=np.float32)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged value may raise anything
        raise InvalidImageError(f"{path}: invalid rescale slope/intercept ({e})") from e


def series_volume(series: DicomSeries, *, name: str, path: Path | None = None) -> Volume:
    """The chosen series as a ``Volume`` (validated like a NIfTI file, then reoriented)."""
    import nibabel as nib

    iop, ps = _check_slice_headers(series)
    order, step = _slice_order(series, iop)
    files = [series.files[i] for i in order]
    headers = [series.headers[i] for i in order]
    slices = []
    for f, ds in zip(files, headers, strict=True):
        with _malformed_as_error(f):
            slices.append(_read_pixels(f, ds))
    data = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (column, row, slice)
    del slices
    if str(getattr(headers[0], "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        data = (data.max() + data.min()) - data  # low values are bright: the model expects MR2
    row_dir, col_dir = iop[:3], iop[3:]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]  # along a row: the column index grows, by the column spacing
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = np.cross(row_dir, col_dir) * step
    lps[:3, 3] = _floats(headers[0], "ImagePositionPatient", 3)
    affine = LPS_TO_RAS @ lps
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # scanner coordinates
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    vol = volume_from_image(img, name=str(path or files[0].parent))
    vol.path = path
    vol.meta["name"] = name
    vol.meta["dicom"] = DicomSource(
        study_instance_uid=series.study_uid, series_instance_uid=series.uid,
        frame_of_reference_uid=_file_uid(headers[0], "FrameOfReferenceUID"),
        sop_instance_uids=[_file_uid(ds, "SOPInstanceUID") for ds in headers], files=files,
        datasets=headers)
    return vol


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
