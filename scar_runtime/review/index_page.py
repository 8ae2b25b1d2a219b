"""``/``: one row per case of the folder, flagged cases first, sortable and filterable."""

from __future__ import annotations

from scar_runtime import labels as L
from scar_runtime.folder_run.table import volume_column
from scar_runtime.review.cases import Case, ResultsFolder
from scar_runtime.review.layout import case_url, cm3, esc, number, page, status_badge


def _cell(text: str, sort_value=None, cls: str = "") -> str:
    v = "" if sort_value is None else sort_value
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-v="{esc(v)}">{text}</td>'


def _row(case: Case) -> str:
    r = case.row
    warnings = case.warnings
    problem = r.get("error") or r.get("reason") or ""
    detail = esc(problem) if case.status != "ok" else ""
    if warnings:
        detail += "<br>".join(esc(w) for w in warnings)
    cells = [
        _cell(f'<a href="{esc(case_url(case.name))}">{esc(case.name)}</a>', case.name),
        _cell(status_badge(case.status), case.status),
        _cell(f'<span class="flags">{esc(", ".join(case.flags))}</span>', len(case.flags)),
        _cell(esc(r.get("anchor") or ""), r.get("anchor")),
        _cell(number(r.get("naming_confidence"), 2), r.get("naming_confidence"), "num"),
        _cell(number(r.get("column_tilt_deg"), 1), r.get("column_tilt_deg"), "num"),
        _cell(detail, len(warnings), "warnings"),
    ]
    for s in L.STRUCTURES:
        mm3 = r.get(volume_column(s.name))
        cells.append(_cell(cm3(mm3), mm3, "num"))
    search = " ".join([case.name, problem, *warnings]).lower()
    return (f'<tr class="{"flagged" if case.flagged else ""}" data-status="{esc(case.status)}" '
            f'data-flagged="{int(case.flagged)}" data-search="{esc(search)}">'
            + "".join(cells) + "</tr>")


def index_page(folder: ResultsFolder) -> str:
    cases = folder.cases()
    counts = {s: sum(c.status == s for c in cases) for s in ("ok", "no_spine", "failed")}
    flagged = sum(c.flagged for c in cases)
    headers = ["case", "status", "flags", "anchor", "confidence", "tilt (deg)",
               "error, reason or warnings"]
    headers += [f"{s.name} (cm&sup3;)" for s in L.STRUCTURES]
    status_options = "".join(f'<option value="{s}">{s.replace("_", " ")}</option>'
                             for s in ("ok", "no_spine", "failed"))
    body = f"""
<p>{len(cases)} case(s): {counts["ok"]} ok, {counts["no_spine"]} without a lumbar spine,
{counts["failed"]} failed; <strong>{flagged} flagged</strong> (failed, no lumbar spine, a warning,
or a level naming confidence below one half), listed first. Click a column to sort it.</p>
<div class="controls">
<label>filter <input id="filter-text" type="search" placeholder="case name or warning"></label>
<label>status <select id="filter-status"><option value="">any</option>{status_options}</select>
</label>
<label><input id="filter-flagged" type="checkbox"> flagged only</label>
<span id="shown-count" class="muted"></span>
</div>
<table class="data" id="cases">
<thead><tr>{"".join(f"<th>{h}</th>" for h in headers)}</tr></thead>
<tbody>
{"".join(_row(c) for c in cases)}
</tbody>
</table>"""
    return page("Results", body, folder=str(folder.root), scripts=("table.js",))
