"""Writing one case's results: segmentation, key-points, stats, preview, label map.

All files of a case are first written to temp files in OUT_DIR, then renamed into place, so a
failure (or SIGKILL) never leaves a partial file, and a case that fails before the renames leaves
nothing at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib

from scar_runtime import __version__
from scar_runtime import labels as L
from scar_runtime.atomic import _UMASK, check_output_path
from scar_runtime.errors import OutputError
from scar_runtime.io import nifti_stem
from scar_runtime.segmenter import SegmentationResult

_FILE_MODE = 0o666 & ~_UMASK


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


def write_all(files: dict[Path, Callable[[Path], None]], *, force: bool,
              inputs: tuple[Path, ...]) -> list[Path]:
    """Write several files as one step: all temp files first, then the renames."""
    for path in files:
        check_output_path(path, force=force, inputs=inputs)
    temps: list[tuple[Path, Path]] = []
    try:
        for path, write in files.items():
            suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
            os.close(fd)
            temps.append((Path(tmp), path))
            write(Path(tmp))
            os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are ordinary files
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write results in {next(iter(files)).parent}: "
                          f"{e.strerror or e}") from e
    finally:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return list(files)


def _json_writer(doc) -> Callable[[Path], None]:
    return lambda p: p.write_text(json.dumps(doc, indent=1), encoding="utf-8")


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
    img = result.to_nifti()
    files = {
        paths["seg"]: lambda p: nib.save(img, str(p)),
        paths["keypoints"]: _json_writer(keypoints_doc(result)),
        paths["stats"]: _json_writer(stats_doc(result, src)),
        paths["preview"]: lambda p: render_preview(result).save(p, format="PNG"),
    }
    written = write_all(files, force=force, inputs=(src,) if src else ())
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
    write_all({path: lambda p: p.write_text(text, encoding="utf-8")}, force=True, inputs=())
    return [path]
