"""Benchmark results -> ``latest.json`` (+ a dated copy), ``latest.md`` and PNG plots.

The parts: :mod:`benchmarks.variants` (what is measured, the labels), :mod:`benchmarks.summary`
(tables, rows, targets), :mod:`benchmarks.markdown` and :mod:`benchmarks.plots` (rendering);
this module writes them, and re-exports the names its callers use.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.markdown import render_markdown, targets_section
from benchmarks.plots import make_plots
from benchmarks.summary import (
    SCHEMA_VERSION,
    TABLE2_COLUMNS,
    accuracy_section,
    build_rows,
    delta_points,
    table2,
    targets,
)
from benchmarks.variants import label, short_label, variant_key
from scar_runtime.core.atomic import atomic_write_text

__all__ = ["SCHEMA_VERSION", "TABLE2_COLUMNS", "accuracy_section", "build_rows", "delta_points",
           "label", "make_plots", "render_markdown", "short_label", "table2", "targets",
           "targets_section", "variant_key", "write_outputs"]


def write_outputs(doc: dict, out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc["plots"] = [str(p) for p in make_plots(doc, out_dir)] if plots else []
    stamp = doc["created"].replace(":", "").replace("-", "")[:15]
    text = json.dumps(doc, indent=1, default=str) + "\n"
    paths = {"json": out_dir / "latest.json",
             "dated_json": out_dir / f"bench-{stamp}-{doc['mode']}.json",
             "markdown": out_dir / "latest.md"}
    for key in ("json", "dated_json"):
        atomic_write_text(paths[key], text, force=True)
    atomic_write_text(paths["markdown"], render_markdown(doc), force=True)
    for p in doc["plots"]:
        paths[Path(p).stem] = Path(p)
    return paths
