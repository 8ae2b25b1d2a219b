"""``/case/<case>``: the NiiVue viewer of one case beside its stats and warnings.

The viewer loads the case's segmentation (OUT/<case>_seg.nii.gz) over the image it was made
from, which ``scar infer`` does not copy: the image is served from the path its stats.json
records, when that is a NIfTI file still there (``ResultsFolder.source_image``). A DICOM study
(or a moved image) shows the segmentation alone, and the page says why.
"""

from __future__ import annotations

from scar_runtime import labels as L
from scar_runtime.review.cases import Case, ResultsFolder
from scar_runtime.review.layout import (
    case_url,
    cm3,
    cohort_url,
    esc,
    file_url,
    json_script,
    number,
    page,
    status_badge,
)

OUTPUT_SUFFIXES = ("_seg.nii.gz", "_seg.dcm", "_stats.json", "_keypoints.json", "_preview.png")


def image_route(folder: ResultsFolder, case: Case) -> str | None:
    """The URL tail of the case's image (its suffix tells NiiVue the format), or None."""
    src = folder.source_image(case)
    if src is None:
        return None
    return "/image.nii.gz" if src.name.lower().endswith(".gz") else "/image.nii"


def _no_image_reason(folder: ResultsFolder, case: Case) -> str:
    source = case.row.get("source") or (folder.stats(case.name) or {}).get("input") or ""
    if source and not source.lower().endswith((".nii", ".nii.gz")):
        return ("the input was a DICOM study: scar infer writes no converted image, so the "
                "segmentation is shown alone")
    return (f"the source image {source or '(not recorded)'} is no longer there (or is not "
            "NIfTI): the segmentation is shown alone")


def _neighbours(cases: list[Case], name: str) -> tuple[Case | None, Case | None]:
    """The nearest flagged case before and after ``name`` in the index's order."""
    pos = next(i for i, c in enumerate(cases) if c.name == name)
    before = [c for c in cases[:pos] if c.flagged]
    after = [c for c in cases[pos + 1:] if c.flagged]
    return (before[-1] if before else None), (after[0] if after else None)


def _nav(cases: list[Case], case: Case) -> str:
    prev, nxt = _neighbours(cases, case.name)
    links = [f'<a href="{esc(case_url(prev.name))}" id="prev-flagged">&larr; previous flagged: '
             f"{esc(prev.name)}</a>" if prev else '<span class="muted">no earlier flagged case'
             "</span>",
             f'<a href="{esc(case_url(nxt.name))}" id="next-flagged">next flagged: '
             f"{esc(nxt.name)} &rarr;</a>" if nxt else '<span class="muted">no later flagged '
             "case</span>",
             f'<a href="{esc(cohort_url(case.name))}">this case in the cohort</a>']
    return '<p class="controls">' + " ".join(links) + "</p>"


def _structures_table(stats: dict, keypoints: list[dict]) -> str:
    structures = stats.get("structures") or {}
    kp_conf = {k.get("name"): k.get("confidence") for k in keypoints}
    rows = []
    for s in L.ALL_STRUCTURES:
        info = structures.get(s.name) or {}
        swatch = f'<span class="swatch" style="background: rgb{s.color}"></span>'
        anchor = " (anchor)" if s in L.ANCHORS else ""
        rows.append(f"<tr><td>{swatch}{esc(s.name)}{anchor}</td>"
                    f"<td>{'yes' if info.get('present') else 'no'}</td>"
                    f'<td class="num">{cm3(info.get("volume_mm3"))}</td>'
                    f'<td class="num">{number(kp_conf.get(s.name), 2)}</td></tr>')
    return ('<table class="data"><thead><tr><th>structure</th><th>found</th><th>volume '
            "(cm&sup3;)</th><th>key-point confidence</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _facts(case: Case, stats: dict) -> str:
    r = case.row
    facts = [("status", status_badge(case.status)),
             ("needs a look", esc(", ".join(case.flags)) or "no"),
             ("source", esc(r.get("source") or stats.get("input") or "")),
             ("level naming", f"{esc(r.get('anchor') or '-')}, confidence "
                              f"{number(r.get('naming_confidence'), 2) or '-'}"),
             ("column tilt", f"{number(r.get('column_tilt_deg'), 1) or '-'} deg"),
             ("model", esc(r.get("model") or "")), ("backend", esc(r.get("backend") or "")),
             ("seconds", number(r.get("seconds"), 2))]
    if case.status == "failed":
        facts.insert(1, ("error", f'<span class="error">{esc(r.get("error"))}</span>'))
    elif r.get("reason"):
        facts.insert(1, ("reason", esc(r["reason"])))
    return ('<table class="data facts">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>"
                                                   for k, v in facts) + "</table>")


def _viewer(folder: ResultsFolder, case: Case) -> str:
    if folder.segmentation(case.name) is None:
        why = ("the case failed, so there is nothing to show" if case.status == "failed"
               else f"{case.name}_seg.nii.gz is not in the folder")
        return f'<div class="viewer-box"><p class="error" id="no-viewer">No viewer: {esc(why)}.' \
               "</p></div>"
    image = image_route(folder, case)
    data = {"case": case.name, "seg": case_url(case.name, "/seg.nii.gz"),
            "image": case_url(case.name, image) if image else None,
            "no_image_reason": None if image else _no_image_reason(folder, case),
            "labels": L.label_map_dict()["classes"],
            "keypoints": [{"name": k.get("name"), "mm": k.get("world_mm")}
                          for k in folder.keypoints(case.name)]}
    views = [("sliceTypeMultiplanar", "all views"), ("sliceTypeSagittal", "sagittal"),
             ("sliceTypeCoronal", "coronal"), ("sliceTypeAxial", "axial"),
             ("sliceTypeRender", "3D")]
    buttons = "".join(f'<button type="button" data-slice-type="{t}">{label}</button>'
                      for t, label in views)
    return f"""<div class="viewer-box">
<div class="viewer-controls">{buttons}
<label>overlay <input id="overlay-opacity" type="range" min="0" max="100" value="50"></label>
</div>
<div class="canvas-box"><canvas id="viewer"></canvas></div>
<div id="viewer-location"></div>
<div id="viewer-status"></div>
<p class="muted">The mouse wheel over a view scrolls its slices, a click moves the crosshair
there, and NiiVue's keys h/l, j/k and Ctrl+U/Ctrl+D step it voxel by voxel. White spheres are the
key-points; the legend names the levels in their label colours.</p>
{json_script("case-data", data)}
</div>"""


def case_page(folder: ResultsFolder, case: Case) -> str:
    cases = folder.cases()
    stats = folder.stats(case.name) or {}
    keypoints = folder.keypoints(case.name)
    warnings = case.warnings
    warn_html = ("<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
                 if warnings else '<p class="muted">none</p>')
    files = [n for n in (case.name + s for s in OUTPUT_SUFFIXES) if folder.file(n)]
    file_links = " ".join(f'<a href="{esc(file_url(n))}">{esc(n)}</a>' for n in files)
    has_viewer = folder.segmentation(case.name) is not None
    body = f"""{_nav(cases, case)}
<div class="case-layout">
{_viewer(folder, case)}
<aside>
<h2>Case</h2>
{_facts(case, stats)}
<h2>Warnings</h2>
<div id="warnings">{warn_html}</div>
<h2>Structures</h2>
{_structures_table(stats, keypoints) if stats else '<p class="muted">no stats.json</p>'}
<h2>Files</h2>
<p>{file_links or '<span class="muted">none</span>'}</p>
</aside>
</div>"""
    scripts = ("niivue.umd.js", "viewer.js") if has_viewer else ()
    return page(case.name, body, folder=str(folder.root), scripts=scripts)
