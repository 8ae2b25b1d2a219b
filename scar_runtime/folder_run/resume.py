"""Resuming a folder run: which cases are finished, and which leftover files are scar-net's.

A case is finished when all its output files are there and its stats.json (the file published
last: outputs.write_case) names the same model, by SHA-256. Such a case is kept as it is: a re-run
neither reads its input nor rewrites its files. Any other case is computed again; the files an
earlier, interrupted attempt left of it are replaced only when each is recognisably scar-net's
own (a user's file of the same name is never written over without --force).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from scar_runtime.core.errors import ConfigError, ModelError
from scar_runtime.core.hashing import file_sha256
from scar_runtime.io import is_scar_output
from scar_runtime.io.case_writer import PNG_SOFTWARE, output_paths


@dataclass(frozen=True)
class ModelIdentity:
    """What "made by the same model" compares: the model file's SHA-256 (its name is for
    people)."""

    name: str
    sha256: str

    @classmethod
    def of(cls, model: Path) -> ModelIdentity:
        if not model.is_file():
            raise ModelError(f"{model}: no such model file")
        try:
            return cls(name=model.name, sha256=file_sha256(model))
        except OSError as e:
            raise ModelError(f"{model}: cannot read the model ({e.strerror or e})") from e

    def to_json(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}


def resolve_model(model: Path | str | None) -> Path:
    """The model a run uses: ``model``, else the one shipped with scar-net (Segmenter's rule)."""
    from scar_runtime.pipeline.segmenter import default_model_path

    if model is not None:
        return Path(model)
    shipped = default_model_path()
    if shipped is None:
        raise ConfigError("no model ships with this version of scar-net: pass --model "
                          "MODEL.onnx (made with `scar export`)")
    return shipped


def read_stats(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _same_model(doc: dict | None, model: ModelIdentity) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("model"), dict) \
        and doc["model"].get("sha256") == model.sha256


def _dicom_seg_expected(doc: dict) -> bool:
    """A DICOM-SEG is written only when some structure was found (outputs.write_case)."""
    structures = doc.get("structures") or {}
    return any(isinstance(s, dict) and s.get("present") for s in structures.values())


def finished_stats(out_dir: Path, name: str, formats: tuple[str, ...],
                   model: ModelIdentity) -> dict | None:
    """The stats.json document of a finished case (complete set, same model), else None."""
    paths = output_paths(out_dir, name, formats)
    doc = read_stats(paths["stats"])
    if not _same_model(doc, model):
        return None
    for key, path in paths.items():
        if key == "dicom_seg" and not _dicom_seg_expected(doc):
            continue
        if not path.is_file():
            return None
    return doc


def _is_own_file(path: Path) -> bool:
    """Whether ``path`` says scar-net wrote it (each output kind carries a mark)."""
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        return is_scar_output(path)
    if name.endswith(".json"):
        doc = read_stats(path)
        return doc is not None and "scar_net" in doc
    if name.endswith(".png"):
        from PIL import Image, UnidentifiedImageError

        with contextlib.suppress(OSError, UnidentifiedImageError), Image.open(path) as im:
            return im.info.get("Software") == PNG_SOFTWARE
        return False
    if name.endswith(".dcm"):  # the DICOM-SEG's Manufacturer (0008,0070) is near the start
        try:
            with open(path, "rb") as f:
                return b"scar-net" in f.read(1 << 16)
        except OSError:
            return False
    return False


def leftovers_to_replace(paths: dict[str, Path], model: ModelIdentity) -> bool:
    """Whether the existing files among ``paths`` (a case that is not finished) may be
    replaced: all of them scar-net's, and not the results of another model."""
    existing = [p for p in paths.values() if p.exists()]
    if not existing:
        return False
    if paths["stats"].exists() and not _same_model(read_stats(paths["stats"]), model):
        return False  # another model's results: --force replaces them, a resume never
    return all(_is_own_file(p) for p in existing)
