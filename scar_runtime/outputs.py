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
import os
from pathlib import Path

import nibabel as nib

from scar_runtime import __version__
from scar_runtime import labels as L
from scar_runtime.atomic import write_files_atomic
from scar_runtime.errors import OutputError
from scar_runtime.io import nifti_stem
from scar_runtime.segmenter import SegmentationResult


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"seg": out_dir / f"{name}_seg.nii.gz",
            "keypoints": out_dir / f"{name}_keypoints.json",
            "stats": out_dir / f"{name}_stats.json",
            "preview": out_dir / f"{name}_preview.png"}


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file, expected an output folder")
    if not out_dir.exists():
        try:
            out_dir.mkdir(parents=True)
        except OSError as e:
            raise OutputError(f"cannot create output folder {out_dir}: {e.strerror}") from e
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {out_dir} is not writable")


def _json_bytes(doc) -> bytes:
    return json.dumps(doc, indent=1).encode("utf-8")


def nifti_gz_bytes(img: nib.Nifti1Image) -> bytes:
    # mtime=0: the same result gives the same bytes
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def keypoints_doc(result: SegmentationResult) -> dict:
    return {"scar_net": __version__, "backend": result.backend,
            "coordinates": {"voxel": "input file voxel indices (i, j, k)",
                            "world_mm": "scanner coordinates from the input affine"},
            "keypoints": [vars(k) for k in result.keypoints]}


def stats_doc(result: SegmentationResult, input_path: Path | None) -> dict:
    return {"scar_net": __version__, "input": str(input_path) if input_path else None,
            "backend": result.backend, "spacing_mm": list(result.volume.spacing),
            "structures": result.stats(), "postprocessing": result.report.to_dict()}


def write_case(result: SegmentationResult, out_dir: Path, *, name: str | None = None,
               force: bool = False) -> list[Path]:
    from scar_runtime.preview import render_preview

    src = result.volume.path
    name = name or (nifti_stem(src) if src else "volume")
    paths = output_paths(out_dir, name)
    # everything is rendered in memory first: nothing touches OUT_DIR until all of it exists
    files = {
        paths["seg"]: nifti_gz_bytes(result.to_nifti()),
        paths["keypoints"]: _json_bytes(keypoints_doc(result)),
        paths["stats"]: _json_bytes(stats_doc(result, src)),
        paths["preview"]: png_bytes(render_preview(result)),
    }
    written = write_files_atomic(files, force=force, inputs=(src,) if src else ())
    written += write_label_map(out_dir)
    return written


def write_label_map(out_dir: Path) -> list[Path]:
    """labels.json (value -> name and more); an identical existing one is left alone."""
    path = out_dir / "labels.json"
    doc = L.label_map_dict()
    text = json.dumps(doc, indent=1)
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()) == doc:
                return []
    write_files_atomic({path: text.encode("utf-8")}, force=True)
    return [path]
