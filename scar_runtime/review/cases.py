"""A results folder as ``scar review`` sees it: its cases, why a case needs a look, its files.

The cases come from OUT/results.csv (every folder run writes it, failed inputs included), plus
any case whose ``*_stats.json`` the table does not list (a single-file run into the same folder),
so a folder with only stats files works too. The folder is read again on every request: a run
that finishes while the review is open shows up on reload. Nothing here writes.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from scar_runtime import labels as L
from scar_runtime.core.errors import InputFileError
from scar_runtime.folder_run.table import COLUMNS, TABLE_CSV, row_from_stats, volume_column
from scar_runtime.io.nifti import is_nifti_path
from scar_runtime.review.safe_files import Forbidden, inside

STATS_SUFFIX = "_stats.json"
# The naming confidence is the smaller of the vote share and the margin over the runner-up
# naming (postprocess/naming.py): below one half, another naming had at least half the support.
LOW_CONFIDENCE = 0.5
LUMBAR_VOLUME_COLUMNS = tuple(volume_column(s.name) for s in L.STRUCTURES)
_FLOAT_COLUMNS = {c for c, kind in COLUMNS if kind == "float64"}


@dataclass(frozen=True)
class Case:
    name: str  # the prefix of the case's output files: 17_img -> 17_img_seg.nii.gz
    row: dict  # its results-table row, numbers as floats, blanks as None
    flags: tuple[str, ...]  # why it needs a look; empty: it does not

    @property
    def status(self) -> str:
        return self.row.get("status") or "ok"

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def warnings(self) -> list[str]:
        return [w for w in (self.row.get("warnings") or "").split(" | ") if w]


def flags_of(row: dict) -> tuple[str, ...]:
    status = row.get("status") or "ok"
    if status == "failed":
        return ("failed",)
    flags = []
    if status == "no_spine":
        flags.append("no lumbar spine")
    if row.get("warnings"):
        n = len(row["warnings"].split(" | "))
        flags.append(f"{n} warning{'s' if n > 1 else ''}")
    conf = row.get("naming_confidence")
    if conf is not None and conf < LOW_CONFIDENCE:
        flags.append(f"low naming confidence {conf:.2f}")
    return tuple(flags)


def _typed(row: dict) -> dict:
    """A CSV row (all strings) with numbers as floats and blanks as None."""
    out: dict = {}
    for key, value in row.items():
        if value is None or value == "":
            out[key] = None
        elif key in _FLOAT_COLUMNS:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = None
        else:
            out[key] = value
    return out


def _read_json(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class ResultsFolder:
    """The results folder OUT (``root``), read-only."""

    def __init__(self, root: Path):
        root = Path(root)
        if not root.is_dir():
            raise InputFileError(f"{root} is a file; scar review needs the output folder of "
                                 "`scar infer`" if root.exists() else f"{root}: no such folder")
        self.root = root.resolve()

    def file(self, relative: str | list[str]) -> Path | None:
        """A file inside the folder (symlinks leading out refused), or None."""
        try:
            return inside(self.root, relative)
        except Forbidden:
            return None

    def _table_rows(self) -> list[dict]:
        path = self.file(TABLE_CSV)
        if path is None:
            return []
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if "case" not in (reader.fieldnames or ()):
                    raise InputFileError(f"{path}: not a scar-net results table (no `case` "
                                         "column)")
                return [_typed(r) for r in reader if r.get("case")]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise InputFileError(f"{path}: cannot read the results table ({e})") from e

    def cases(self) -> list[Case]:
        """Every case: flagged ones first, each group in the table's order, then by name."""
        rows = {r["case"]: r for r in self._table_rows()}
        for stats in sorted(self.root.glob(f"*{STATS_SUFFIX}")):
            name = stats.name[: -len(STATS_SUFFIX)]
            if not name or name in rows:  # the table's row already says what the file says
                continue
            doc = _read_json(self.file(stats.name))
            if doc is not None:
                rows[name] = row_from_stats(name, doc.get("input") or "", doc, kept=False)
        cases = [Case(name, row, flags_of(row)) for name, row in rows.items()]
        return sorted(cases, key=lambda c: not c.flagged)  # stable: keeps the table's order

    def require_results(self) -> list[Case]:
        cases = self.cases()
        if not cases:
            raise InputFileError(f"{self.root}: no scar-net results here (no {TABLE_CSV} and "
                                 f"no *{STATS_SUFFIX}); run `scar infer INPUT -o "
                                 f"{self.root}` first")
        return cases

    def case(self, name: str) -> Case | None:
        return next((c for c in self.cases() if c.name == name), None)

    def stats(self, name: str) -> dict | None:
        return _read_json(self.file(f"{name}{STATS_SUFFIX}"))

    def keypoints(self, name: str) -> list[dict]:
        doc = _read_json(self.file(f"{name}_keypoints.json")) or {}
        return [k for k in doc.get("keypoints") or [] if isinstance(k, dict)]

    def segmentation(self, name: str) -> Path | None:
        return self.file(f"{name}_seg.nii.gz")

    def source_image(self, case: Case) -> Path | None:
        """The image the case was segmented from, when it is a NIfTI file that is still there.

        ``scar infer`` writes no copy of the image; its stats.json records the input path
        (relative to where the run started, when it was given so). Only that one recorded path
        is ever served, and only when its content is NIfTI: a DICOM study (a folder) gives
        None, and the viewer shows the segmentation alone."""
        doc = self.stats(case.name) or {}
        recorded = doc.get("input") or case.row.get("source")
        if not recorded or not is_nifti_path(recorded):
            return None
        path = Path(recorded)
        tries = [path] if path.is_absolute() else [Path.cwd() / path, self.root / path.name]
        for p in tries:
            if p.is_file() and _is_nifti_content(p):
                return p.resolve()
        return None


def _is_nifti_content(path: Path) -> bool:
    """The NIfTI-1 or NIfTI-2 magic in the header (gzipped or not): a recorded path that now
    names something else is not served."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            header = f.read(544)
    except (OSError, EOFError):
        return False
    # single-file NIfTI only ("n+1"/"n+2"): a header-only .hdr/.img pair has no .nii form
    return header[344:348] == b"n+1\x00" or header[4:8] == b"n+2\x00"
