"""Writing one case's results: segmentation, key-points, stats, preview, label map.

All files of a case are rendered in memory, then written with ``atomic.write_files_atomic``
(unnamed temp files, then link + rename), so a failure or a SIGKILL never leaves a partial file,
and a case that fails before the renames leaves nothing at all.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib

from scar_runtime import __version__
from scar_runtime import labels as L
from scar_runtime.core.atomic import InputSet, check_output_path, write_files_atomic
from scar_runtime.core.errors import ConfigError
from scar_runtime.io import dicom_source, nifti_stem
from scar_runtime.pipeline.segmenter import SegmentationResult

if TYPE_CHECKING:
    from scar_runtime.io.dicom_seg import AlgorithmInfo


# --format: which segmentation files to write. "auto": NIfTI for NIfTI input, both for DICOM.
SEG_FORMATS = {"nifti": ("nifti",), "dicom-seg": ("dicom-seg",), "both": ("nifti", "dicom-seg")}


def resolve_formats(fmt: str, *, dicom_input: bool) -> tuple[str, ...]:
    if fmt == "auto":
        return SEG_FORMATS["both" if dicom_input else "nifti"]
    if fmt not in SEG_FORMATS:
        raise ConfigError(f"unknown --format {fmt!r} (valid: nifti, dicom-seg, both)")
    if "dicom-seg" in SEG_FORMATS[fmt] and not dicom_input:
        raise ConfigError(f"--format {fmt} needs a DICOM series as input (a DICOM-SEG references "
                          "its source images); use --format nifti for NIfTI input")
    return SEG_FORMATS[fmt]


def output_paths(out_dir: Path, name: str,
                 formats: tuple[str, ...] = ("nifti",)) -> dict[str, Path]:
    paths = {}
    if "nifti" in formats:
        paths["seg"] = out_dir / f"{name}_seg.nii.gz"
    if "dicom-seg" in formats:
        paths["dicom_seg"] = out_dir / f"{name}_seg.dcm"
    return {**paths, "keypoints": out_dir / f"{name}_keypoints.json",
            "stats": out_dir / f"{name}_stats.json",
            "preview": out_dir / f"{name}_preview.png"}


def output_set(out_dir: Path, name: str) -> dict[str, Path]:
    """Every file a case named ``name`` may have, whatever this run's formats: what --force
    replaces and what all-or-nothing covers (a stale DICOM-SEG of an earlier run of another
    patient under the same name must not survive beside this run's stats)."""
    return output_paths(out_dir, name, SEG_FORMATS["both"])


def finite_json(doc):
    """``doc`` with every NaN or infinite float replaced by None: JSON has no Infinity, and a
    file a strict parser refuses is not an output (huge but finite intensities overflow)."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: finite_json(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [finite_json(v) for v in doc]
    return doc


def _json_bytes(doc) -> bytes:
    return json.dumps(finite_json(doc), indent=1, allow_nan=False).encode("utf-8")


def nifti_gz_bytes(img: nib.Nifti1Image) -> bytes:
    # mtime=0: the same result gives the same bytes
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


# a tEXt chunk saying who made a preview: a resumed folder run replaces only files it can tell
# are its own (folder_run/resume.py)
PNG_SOFTWARE = "scar-net"


def png_bytes(image) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def keypoints_doc(result: SegmentationResult) -> dict:
    doc = {"scar_net": __version__, "backend": result.backend,
           "coordinates": {"voxel": "input file voxel indices (i, j, k)",
                           "world_mm": "scanner coordinates from the input affine"},
           "keypoints": [vars(k) for k in result.keypoints]}
    dicom = dicom_source(result.volume)
    if dicom is not None:  # DICOM input: UIDs to join the result back to the PACS
        doc["dicom"] = dicom.to_json()
        doc["coordinates"] = {"voxel": "(column, row, slice) of the series, slice indexing "
                              "dicom.sop_instance_uids",
                              "world_mm": "RAS+ scanner coordinates (DICOM LPS with x, y negated)"}
        uids = dicom.sop_instance_uids
        doc["keypoints"] = [{**k, "sop_instance_uid": uids[min(max(round(k["voxel"][2]), 0),
                                                                len(uids) - 1)]}
                            for k in doc["keypoints"]]
    return doc


def stats_doc(result: SegmentationResult, input_path: Path | None,
              run_info: dict | None = None) -> dict:
    """``run_info``: the run's own facts about the case (the model's name and SHA-256, the
    seconds it took), which a resumed folder run and the results table read back."""
    doc = {"scar_net": __version__, "input": str(input_path) if input_path else None,
           "backend": result.backend, **(run_info or {}),
           "spacing_mm": list(result.volume.spacing),
           # first, so a user (or script) sees it before anything else
           "lumbar_spine_found": result.report.lumbar_spine_found,
           "reason": result.report.reason,
           "level_naming": result.report.to_dict()["level_naming"],
           "warnings": result.report.warnings,
           "structures": result.stats(), "postprocessing": result.report.to_dict()}
    dicom = dicom_source(result.volume)
    if dicom is not None:
        doc["dicom"] = {k: v for k, v in dicom.to_json().items() if k.endswith("_uid")}
        # what the DICOM-SEG could not take from the source as it was (io/dicom/seg_source.py)
        doc["dicom"]["notes"] = list(dicom.notes)
    return doc


def write_case(result: SegmentationResult, out_dir: Path, *, name: str | None = None,
               force: bool = False, formats: tuple[str, ...] = ("nifti",),
               algorithm: AlgorithmInfo | None = None,
               inputs: InputSet | None = None, run_info: dict | None = None) -> list[Path]:
    """``formats``: "nifti" and/or "dicom-seg" (which needs DICOM input and ``algorithm``, the
    model's identity; no DICOM-SEG is written when no structure was found). ``inputs``: every
    input of the run, none of which is ever written over. All files of the case, labels.json
    included, are written in one all-or-nothing step."""
    from scar_runtime.io.preview import render_preview

    src = result.volume.path
    name = name or (nifti_stem(src) if src else "volume")
    paths = output_paths(out_dir, name, formats)
    # everything is rendered in memory first: nothing touches OUT_DIR until all of it exists
    files = {}
    if "seg" in paths:
        files[paths["seg"]] = nifti_gz_bytes(result.to_nifti())
    if "dicom_seg" in paths:
        from scar_runtime.io.dicom_seg import segmentation_bytes

        if algorithm is None:
            raise ConfigError("a DICOM-SEG needs the model's identity (AlgorithmInfo)")
        seg_bytes = segmentation_bytes(result, algorithm)
        if seg_bytes is not None:
            files[paths["dicom_seg"]] = seg_bytes
    files[paths["keypoints"]] = _json_bytes(keypoints_doc(result))
    files[paths["preview"]] = png_bytes(render_preview(result))
    # stats.json last: the files appear in this order, so a case whose stats.json is there was
    # written in full (a resumed run keeps it: folder_run/resume.py)
    files[paths["stats"]] = _json_bytes(stats_doc(result, src, run_info))
    dicom = dicom_source(result.volume)
    if inputs is None:
        inputs = InputSet((src,) if src else ())
    if dicom is not None:  # never over one of the series' files either
        for f in dicom.files:
            inputs.add(Path(f))
    label_map = _label_map_file(out_dir)
    files.update(label_map)
    stale = [p for p in output_set(out_dir, name).values()
             if p not in files and (p.exists() or p.is_symlink())]
    for p in stale:  # refused like any output: an input, or there without --force
        check_output_path(p, force=force, inputs=inputs)
    with _set_aside(stale):
        return write_files_atomic(files, force=force, inputs=inputs, replace=label_map)


@contextlib.contextmanager
def _set_aside(stale: list[Path]):
    """Files of the case's set that this run does not write: moved to hidden names while the new
    set is written, removed when it is complete, put back if it is not (all or nothing covers
    the whole set). Hidden names are never inputs of a later scan."""
    moved: list[tuple[Path, Path]] = []
    try:
        for p in stale:
            hidden = p.with_name(f".{p.name}.{os.getpid()}.stale")
            os.replace(p, hidden)
            moved.append((p, hidden))
        yield
    except BaseException:
        for p, hidden in moved:
            with contextlib.suppress(OSError):
                os.replace(hidden, p)
        raise
    for _, hidden in moved:
        with contextlib.suppress(OSError):
            hidden.unlink()


def _label_map_file(out_dir: Path) -> dict[Path, bytes]:
    """labels.json (value -> name and more), unless an identical one is there already."""
    path = out_dir / "labels.json"
    doc = L.label_map_dict()
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()) == doc:
                return {}
    return {path: json.dumps(doc, indent=1).encode("utf-8")}

