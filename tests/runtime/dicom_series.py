"""Build a DICOM MR series from a real NIfTI volume, as a scanner would store it.

The pixels are the NIfTI's own (stored exactly), the geometry is the NIfTI affine in DICOM's LPS
patient coordinates, and the acquisition layout is free: which volume axis runs along the image
rows, along the columns and across slices (``axcodes`` in nibabel's codes for (column, row,
slice)), file order, names, folder nesting, transfer syntax. Used by the tests and to make the
fixture in tests/data (``python tests/runtime/dicom_series.py``).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    generate_uid,
)

from scar_runtime.labels import BY_NAME

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class SeriesSpec:
    axcodes: tuple[str, str, str] = ("P", "I", "L")  # (column dir, row dir, slice dir)
    transfer_syntax: str = ExplicitVRLittleEndian
    study_uid: str | None = None
    series_uid: str | None = None
    frame_uid: str | None = None
    series_number: int = 3
    description: str = "T2 SAG"
    reverse_instances: bool = False  # instance numbers run against the slice direction
    layout: str = "flat"  # flat | noext | nested
    shuffle: int | None = 7  # file-name order shuffled with this seed (None: in order)
    photometric: str = "MONOCHROME2"
    rescale: tuple[float, float] | None = None  # (slope, intercept) declared on stored values
    patient_id: str = "scar-test"


def reoriented(img: nib.Nifti1Image, axcodes) -> nib.Nifti1Image:
    xform = nib.orientations.ornt_transform(nib.io_orientation(img.affine),
                                            nib.orientations.axcodes2ornt(axcodes))
    return img.as_reoriented(xform)


def series_datasets(img: nib.Nifti1Image, spec: SeriesSpec) -> list[Dataset]:
    """One MR Image Storage dataset per slice of ``img`` in the layout ``spec.axcodes``."""
    src = reoriented(img, spec.axcodes)
    data = np.asanyarray(src.dataobj)
    if not np.array_equal(data, np.rint(data)) or data.min() < 0 or data.max() > 65535:
        raise ValueError("the NIfTI must hold unsigned 16-bit integer values")
    data = data.astype(np.uint16)
    lps = LPS_FROM_RAS @ src.affine
    col_step, row_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_dir, col_dir = lps[:3, 0] / col_step, lps[:3, 1] / row_step
    slice_step = float(np.linalg.norm(lps[:3, 2]))
    study = spec.study_uid or generate_uid()
    series = spec.series_uid or generate_uid()
    frame = spec.frame_uid or generate_uid()
    n = data.shape[2]
    if spec.photometric == "MONOCHROME1":
        data = (int(data.max()) + int(data.min()) - data.astype(np.int32)).astype(np.uint16)
    out = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MRImageStorage
        ds.PatientName, ds.PatientID = "Test^Anonymous", spec.patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study, "20200101", "120000"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series, spec.series_number
        ds.SeriesDescription = spec.description
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "LSPINE"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer = "scar-net test fixture"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.InstanceNumber = (n - k) if spec.reverse_instances else (k + 1)
        ds.ContentDate, ds.ContentTime = "20200101", "120000"
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [_ds(v) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.PixelSpacing = [_ds(row_step), _ds(col_step)]
        ds.SliceThickness = _ds(slice_step)
        ds.SpacingBetweenSlices = _ds(slice_step)
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "3000", "100", 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, spec.photometric
        pixels = np.ascontiguousarray(data[:, :, k].T)  # (rows, columns)
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if spec.rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = _ds(spec.rescale[0]), _ds(spec.rescale[1])
            ds.RescaleType = "US"
        ds.PixelData = pixels.tobytes()
        if spec.transfer_syntax != ExplicitVRLittleEndian:
            if spec.transfer_syntax in pydicom.uid.UncompressedTransferSyntaxes:
                ds.file_meta.TransferSyntaxUID = spec.transfer_syntax
            else:
                ds.compress(spec.transfer_syntax, pixels)
        out.append(ds)
    return out


def _ds(v: float) -> str:
    """A DS string exactly as a scanner writes them (at most 16 characters)."""
    return pydicom.valuerep.format_number_as_ds(float(v))


def write_series(img: nib.Nifti1Image | Path | str, folder: Path,
                 spec: SeriesSpec | None = None) -> list[Path]:
    spec = spec or SeriesSpec()
    if not isinstance(img, nib.Nifti1Image):
        img = nib.load(str(img))
    datasets = series_datasets(img, spec)
    order = list(range(len(datasets)))
    if spec.shuffle is not None:
        random.Random(spec.shuffle).shuffle(order)
    paths = []
    for i, idx in enumerate(order):
        ds = datasets[idx]
        name = f"IM{i:04d}" + ("" if spec.layout == "noext" else ".dcm")
        sub = folder / (f"part{i % 3}" if spec.layout == "nested" else "")
        sub.mkdir(parents=True, exist_ok=True)
        ds.save_as(sub / name, enforce_file_format=True)
        paths.append(sub / name)
    return paths


def edit_series(folder: Path, change) -> None:
    """Apply ``change(ds)`` to every file of a series, as an archive or a tool would."""
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f, enforce_file_format=True)


def deep_sequence(depth: int) -> bytes:
    """An OtherPatientIDsSequence (0010,1002) nested ``depth`` levels, explicit VR little
    endian, defined lengths (as pydicom writes them): built as bytes from the inside out, since
    pydicom's writer recurses per level."""
    import struct

    inner = b""
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
        inner = b"\x10\x00\x02\x10SQ\x00\x00" + struct.pack("<I", len(item)) + item
    return inner


def nest_patient_sequence(folder: Path, depth: int) -> None:
    """Every file of an explicit-VR series gets a ``depth``-level sequence in its Patient
    module (where de-identification and RIS tools put other IDs)."""
    marker = b"\x10\x00\x02\x10SQ\x00\x00\x00\x00\x00\x00"  # an empty (0010,1002)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(f)
        ds.OtherPatientIDsSequence = []
        ds.save_as(f, enforce_file_format=True)
        raw = f.read_bytes()
        assert raw.count(marker) == 1
        f.write_bytes(raw.replace(marker, deep_sequence(depth)))


def write_localizer(img: nib.Nifti1Image | Path | str, folder: Path, study_uid: str) -> None:
    """A 3-plane localizer of ``img``'s study: 3 sagittal, 3 coronal and 3 axial images in one
    series (the first sagittal), ImageType LOCALIZER, as scanners make before the real scans."""
    if not isinstance(img, nib.Nifti1Image):
        img = nib.load(str(img))
    series, n = generate_uid(), 0
    for codes in (("P", "I", "L"), ("L", "I", "P"), ("L", "P", "I")):
        ds_all = series_datasets(img, SeriesSpec(axcodes=codes, study_uid=study_uid,
                                                 series_uid=series, series_number=1,
                                                 description="3-plane loc"))
        mid = len(ds_all) // 2
        for ds in ds_all[mid - 1: mid + 2]:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = n = n + 1
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"LOC{n:02d}", enforce_file_format=True)


def write_enhanced(img: nib.Nifti1Image | Path | str, path: Path,
                   spec: SeriesSpec | None = None, frame_order: list[int] | None = None):
    """The series as ONE Enhanced MR Image Storage file (PS3.3 A.36.2): the frames' geometry in
    the per-frame (position) and shared (orientation, pixel measures) functional groups; the
    frames stored in ``frame_order`` (default: reversed, so order must come from geometry)."""
    if not isinstance(img, nib.Nifti1Image):
        img = nib.load(str(img))
    slices = series_datasets(img, spec or SeriesSpec())
    order = frame_order if frame_order is not None else list(range(len(slices)))[::-1]
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for kw in ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate",
               "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber", "Modality",
               "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "FrameOfReferenceUID",
               "PositionReferenceIndicator", "Manufacturer", "SamplesPerPixel",
               "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
               "HighBit", "PixelRepresentation"):
        setattr(ds, kw, getattr(first, kw))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber, ds.NumberOfFrames = 1, len(order)
    ds.ContentDate, ds.ContentTime = "20200101", "120000"
    measures, orient = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    orient.ImageOrientationPatient = first.ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        pos, item = Dataset(), Dataset()
        pos.ImagePositionPatient = slices[k].ImagePositionPatient
        item.PlanePositionSequence = [pos]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = b"".join(slices[k].PixelData for k in order)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def seg_in_world(seg, into: nib.Nifti1Image) -> np.ndarray:
    """The SEG's label map (segment labels -> model ids) resampled by exact index arithmetic onto
    the grid of ``into``; fails if a SEG voxel centre is not on one of its voxel centres."""
    vol = seg.get_volume(combine_segments=True)
    to_id = np.zeros(len(seg.SegmentSequence) + 1, np.uint8)
    for d in seg.SegmentSequence:
        to_id[d.SegmentNumber] = BY_NAME[d.SegmentLabel.split(" ")[0]].model_id
    ijk = np.argwhere(np.ones(vol.array.shape, bool))
    world = (np.linalg.inv(LPS_FROM_RAS) @ vol.affine @ np.c_[ijk, np.ones(len(ijk))].T)
    target = np.linalg.inv(into.affine) @ world
    idx = np.rint(target[:3]).astype(int)
    assert np.abs(target[:3] - idx).max() < 1e-3, "SEG voxels are off the NIfTI grid"
    out = np.zeros(into.shape, np.uint8)
    out[tuple(idx)] = to_id[vol.array[tuple(ijk.T)]]
    return out


def assert_frames_at_source_slices(seg_path: Path, source_files) -> None:
    """highdicom reads the SEG back; each of its frames references a source image (and frame)
    and lies exactly where that image does; the masks agree with the NIfTI output beside it
    (``X_seg.nii.gz``) in world space."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    position = {}
    for f in source_files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if "PerFrameFunctionalGroupsSequence" in ds:
            for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
                ipp = item.PlanePositionSequence[0].ImagePositionPatient
                position[(ds.SOPInstanceUID, n)] = np.array(ipp, float)
        else:
            position[(ds.SOPInstanceUID, None)] = np.array(ds.ImagePositionPatient, float)
    assert seg.NumberOfFrames > 0
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None
        where = position[(ref.ReferencedSOPInstanceUID, frame)]
        np.testing.assert_allclose(np.array(item.PlanePositionSequence[0].ImagePositionPatient,
                                            float), where, atol=1e-3)
    nifti = nib.load(str(seg_path.with_name(seg_path.name.replace(".dcm", ".nii.gz"))))
    np.testing.assert_array_equal(seg_in_world(seg, nifti), np.asanyarray(nifti.dataobj))


def main(argv: list[str]) -> int:
    """Regenerate the committed fixture: NIFTI OUT_FOLDER."""
    src, out = Path(argv[0]), Path(argv[1])
    uid = "1.2.826.0.1.3680043.8.498.1" + "".join(str(ord(c) % 10) for c in src.name[:20])
    spec = SeriesSpec(axcodes=("P", "I", "L"), transfer_syntax=JPEG2000Lossless, shuffle=None,
                      study_uid=uid + ".1", series_uid=uid + ".2", frame_uid=uid + ".3",
                      patient_id=src.name.split("_img")[0])
    random.seed(0)
    write_series(src, out, spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
