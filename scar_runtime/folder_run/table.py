"""The results table of a folder run: OUT/results.csv and OUT/results.parquet, a row per input.

It is what a cohort study analyses, so every input has exactly one row, failed ones included,
in the order the run found them. A finished case's row is read from its stats.json, for a case
computed now as for one a resumed run kept, so the table always says what the files say. Both
files are written in one all-or-nothing step (temp files, then renames) and replaced by each run;
never over an input. Parquet needs pyarrow (it comes with Ray: scar-net[cluster]); without it
only the CSV is written, and the run says so once.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterable
from pathlib import Path

from scar_runtime import labels as L
from scar_runtime.core.atomic import InputSet, write_files_atomic

TABLE_CSV = "results.csv"
TABLE_PARQUET = "results.parquet"
STATUSES = ("ok", "no_spine", "failed")


def volume_column(structure_name: str) -> str:
    """``L4/L5`` -> ``L4_L5_mm3``: a name every table tool accepts."""
    return structure_name.replace("/", "_") + "_mm3"


VOLUME_COLUMNS = tuple(volume_column(s.name) for s in L.ALL_STRUCTURES)
# (column, arrow type name); the order is the CSV's
COLUMNS: tuple[tuple[str, str], ...] = (
    ("case", "string"), ("source", "string"), ("status", "string"), ("error", "string"),
    ("computed", "string"),  # "now", or "kept" (finished in an earlier run with this model)
    ("backend", "string"), ("model", "string"), ("model_sha256", "string"),
    ("seconds", "float64"), ("lumbar_spine_found", "bool"), ("reason", "string"),
    ("anchor", "string"), ("naming_confidence", "float64"), ("warnings", "string"),
    ("column_tilt_deg", "float64"), ("column_axis_deg", "float64"),
    ("straightened_deg", "float64"),
    *((c, "float64") for c in VOLUME_COLUMNS),
)
COLUMN_NAMES = tuple(c for c, _ in COLUMNS)


def row_from_stats(case: str, source: str, doc: dict, *, kept: bool) -> dict:
    """The row of a segmented case, from its stats.json document."""
    post = doc.get("postprocessing") or {}
    naming = doc.get("level_naming") or {}
    straight = post.get("straightening") or {}
    model = doc.get("model") or {}
    found = bool(doc.get("lumbar_spine_found"))
    structures = doc.get("structures") or {}
    row = {
        "case": case, "source": source, "status": "ok" if found else "no_spine",
        "error": None, "computed": "kept" if kept else "now", "backend": doc.get("backend"),
        "model": model.get("name"), "model_sha256": model.get("sha256"),
        "seconds": doc.get("seconds"), "lumbar_spine_found": found, "reason": doc.get("reason"),
        "anchor": naming.get("anchor"), "naming_confidence": naming.get("confidence"),
        "warnings": " | ".join(doc.get("warnings") or []) or None,
        "column_tilt_deg": post.get("column_tilt_deg"),
        "column_axis_deg": straight.get("column_axis_deg"),
        "straightened_deg": straight.get("rotated_deg"),
    }
    for s in L.ALL_STRUCTURES:  # 0 mm^3: looked for and not there
        info = structures.get(s.name) or {}
        row[volume_column(s.name)] = float(info.get("volume_mm3", 0.0) or 0.0)
    return row


def failed_row(case: str, source: str, error: str, seconds: float | None = None) -> dict:
    row = dict.fromkeys(COLUMN_NAMES)
    row.update(case=case, source=source, status="failed", error=error, computed="now",
               seconds=None if seconds is None else round(seconds, 3))
    return row


def table_paths(out_dir: Path) -> tuple[Path, Path]:
    return out_dir / TABLE_CSV, out_dir / TABLE_PARQUET


def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMN_NAMES, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMN_NAMES})
    return buf.getvalue().encode("utf-8")


def _parquet_bytes(rows: list[dict]) -> bytes | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    types = {"string": pa.string(), "float64": pa.float64(), "bool": pa.bool_()}
    table = pa.table({name: pa.array([r.get(name) for r in rows], type=types[kind])
                      for name, kind in COLUMNS})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_table(out_dir: Path, rows: list[dict],
                inputs: InputSet | Iterable[Path] = ()) -> tuple[list[Path], str | None]:
    """Write both files; returns ``(paths written, a note when the Parquet file could not be)``."""
    files = {out_dir / TABLE_CSV: _csv_bytes(rows)}
    parquet = _parquet_bytes(rows)
    note = None
    if parquet is None:
        note = (f"{TABLE_PARQUET} not written: it needs pyarrow (pip install pyarrow, or "
                "'scar-net[cluster]')")
        # an earlier run's table would now disagree with the CSV
        with contextlib.suppress(FileNotFoundError):
            (out_dir / TABLE_PARQUET).unlink()
    else:
        files[out_dir / TABLE_PARQUET] = parquet
    # the table is the run's own file, replaced by each run (like labels.json), never an input
    return write_files_atomic(files, force=True, inputs=inputs), note


def read_table_csv(path: Path) -> list[dict]:
    """The CSV back as dicts of strings (tests and scripts)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
