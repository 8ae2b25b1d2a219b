"""Rendering evaluation results: a rich table per structure, and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from scar_runtime import labels as L
from scar_runtime.core.atomic import atomic_write_text, check_output_path
from scar_runtime.core.errors import ScarError
from scar_runtime.evaluation.evaluate import evaluate_pair, pair_inputs, unmatched
from scar_runtime.evaluation.metrics import CaseScore, summarize


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def case_table(score: CaseScore) -> Table:
    t = Table(title=f"{score.name}", title_justify="left")
    for col in ("structure", "Dice 3D", "Dice 2D mid", "HD95 mm", "centre err mm", "level"):
        t.add_column(col, justify="left" if col == "structure" else "right")
    for s in score.structures:
        if not s.labelled:
            t.add_row(s.name, "[dim]not labelled[/dim]", "", "", "", "")
            continue
        ident = "-" if s.identified is None else ("ok" if s.identified else "[red]wrong[/red]")
        t.add_row(s.name, _fmt(s.dice_3d), _fmt(s.dice_2d_mid), _fmt(s.hd95_mm, ".1f"),
                  _fmt(s.centroid_error_mm, ".1f"), ident)
    t.add_section()
    t.add_row("mean VB", _fmt(score.mean_vertebra_dice), "", "", "", "")
    t.add_row("mean IVD", _fmt(score.mean_disc_dice), "", "", "", "")
    t.add_row("mean", _fmt(score.mean_dice), "", "", "", _fmt(score.identification_rate, ".0%"))
    return t


def summary_table(summary: dict) -> Table:
    t = Table(title="all cases (mean over cases where the structure is labelled)",
              title_justify="left")
    for col in ("structure", "n", "Dice 3D", "HD95 mm", "identified"):
        t.add_column(col, justify="left" if col == "structure" else "right")
    per = summary.get("structures", {})
    for name in L.KEYPOINT_NAMES:
        row = per.get(name, {})
        if not row.get("n"):
            t.add_row(name, "0", "[dim]not labelled[/dim]", "", "")
            continue
        t.add_row(name, str(row["n"]), _fmt(row.get("dice_3d")), _fmt(row.get("hd95_mm"), ".1f"),
                  _fmt(row.get("identification_rate"), ".0%"))
    t.add_section()
    for key, label in (("mean_vertebra_dice", "mean VB"), ("mean_disc_dice", "mean IVD"),
                       ("mean_dice", "mean")):
        t.add_row(label, "", _fmt(summary.get(key)), "", "")
    return t


def evaluate_and_report(pred: Path, gt: Path, *, json_out: Path | None = None,
                        pred_labels: str = "auto", gt_labels: str = "auto",
                        force: bool = False, console: Console | None = None) -> int:
    """Evaluate, print tables, optionally write JSON. Returns the exit code.

    A folder run goes on past a bad case and reports it; any failure makes the exit code 1.
    """
    console = console or Console()
    err = Console(stderr=True)
    if json_out is not None:  # fail before the (slow) evaluation, not after
        check_output_path(Path(json_out), force=force, inputs=(Path(pred), Path(gt)))
    pairs = pair_inputs(pred, gt)
    scores, failed = [], []
    for pair in pairs:
        try:
            scores.append(evaluate_pair(pair, pred_labels=pred_labels, gt_labels=gt_labels))
        except ScarError as e:
            if len(pairs) == 1:
                raise
            failed.append((pair.name, str(e)))
            err.print(f"scar: error: {pair.name}: {e}", soft_wrap=True, highlight=False)
    missing = unmatched(pred, gt)
    for s in scores:
        console.print(case_table(s))
    summary = summarize(scores) if scores else {}
    if len(scores) > 1:
        console.print(summary_table(summary))
    if missing:
        err.print(f"scar: warning: no prediction for {len(missing)} reference case(s): "
                  + ", ".join(missing), soft_wrap=True, highlight=False)
    if json_out is not None:
        doc = {"cases": [s.to_dict() for s in scores], "summary": summary,
               "failed": [{"case": n, "error": m} for n, m in failed], "missing": missing}
        atomic_write_text(json_out, json.dumps(doc, indent=1), force=force,
                          inputs=(Path(pred), Path(gt)))
        console.print(f"scores written to {json_out}")
    if failed:
        err.print(f"scar: error: {len(failed)} case(s) failed: "
                  + ", ".join(n for n, _ in failed), soft_wrap=True, highlight=False)
        return 1
    return 0
