"""A manifest: the inputs of a run listed in a file rather than found in a folder.

Either a CSV with a ``path`` column and an optional ``case`` column (the output name prefix; the
way to tell apart ``sub-01/T2w.nii.gz`` and ``sub-02/T2w.nii.gz``), or plain text with one path a
line (blank lines and ``#`` comments skipped). A path is a NIfTI file or a DICOM folder; relative
paths are relative to the manifest's folder. An entry that cannot be read is a failed case (a
row of the results table), never the end of the run.
"""

from __future__ import annotations

import csv
import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from scar_runtime.core.errors import InputFileError, ScarError

if TYPE_CHECKING:
    from scar_runtime.commands.infer import CaseInput

MANIFEST_SUFFIXES = (".csv", ".txt", ".lst", ".list")


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    path: Path
    case: str | None  # the output name prefix, when the manifest gives one
    line: int  # where it is in the manifest (messages)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is not a column name
    except (OSError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: cannot read the manifest ({e})") from e


def read_manifest(path: Path) -> list[ManifestEntry]:
    text = _read_text(path)
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    header = [c.strip().lower() for c in next(csv.reader([first]))] if first else []
    base = path.parent
    entries = []
    if "path" in header:
        reader = csv.DictReader(line for line in lines if not line.lstrip().startswith("#"))
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        for n, row in enumerate(reader, start=2):
            p = (row.get("path") or "").strip()
            if not p:
                continue
            case = (row.get("case") or "").strip() or None
            entries.append(ManifestEntry(base / p, case, n))
    elif path.suffix.lower() == ".csv" and "," in first:
        raise InputFileError(f"{path}: a CSV manifest needs a 'path' column (and may have a "
                             "'case' column)")
    else:
        for n, line in enumerate(lines, start=1):
            p = line.strip()
            if p and not p.startswith("#"):
                entries.append(ManifestEntry(base / p, None, n))
    if not entries:
        raise InputFileError(f"{path}: the manifest lists no inputs")
    return entries


def _failing(error: ScarError):
    raise error


def manifest_cases(path: Path, series_uid: str | None = None) -> list[CaseInput]:
    """The cases of every entry (a DICOM folder may hold several studies), in manifest order."""
    from scar_runtime.commands.infer import CaseInput, find_cases

    cases: list[CaseInput] = []
    for entry in read_manifest(path):
        label = f"{path.name}:{entry.line} {entry.path}"
        try:
            found = find_cases(entry.path, series_uid)
        except ScarError as e:
            name = entry.case or entry.path.name.split(".")[0] or f"line{entry.line}"
            error = InputFileError(f"{path.name} line {entry.line}: {e}")
            cases.append(CaseInput(name=name, label=label, sources=(entry.path,),
                                   dicom=False, load=partial(_failing, error)))
            continue
        if entry.case and len(found) == 1:
            found = [dataclasses.replace(found[0], name=entry.case)]
        elif entry.case:  # a folder of several studies: each keeps its own name, prefixed
            found = [dataclasses.replace(c, name=f"{entry.case}_{c.name}") for c in found]
        cases.extend(found)
    return cases
