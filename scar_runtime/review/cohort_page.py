"""``/cohort`` and ``/cohort/<case>``: each level's volume across the folder, one case marked.

One inline SVG, drawn here: a row per structure with a dot per case (its volume, hover for the
case name), the box of the middle half and the median, and the chosen case as a red diamond. A
volume far from its level's box is what a wrong boundary or a wrong name looks like across a
cohort. Only cases where the structure was found count (0 mm^3: not there, not a small volume).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scar_runtime import labels as L
from scar_runtime.folder_run.table import volume_column
from scar_runtime.review.cases import Case, ResultsFolder
from scar_runtime.review.layout import case_url, cm3, esc, page

ROW_H = 34
LEFT = 110  # room for the structure names
PLOT_W = 640
RIGHT = 150  # room for the marked case's value
TOP = 30


@dataclass(frozen=True)
class Level:
    name: str
    color: tuple[int, int, int]
    values: list[tuple[str, float]]  # (case, mm^3) of every case in which it was found


def levels(cases: list[Case]) -> list[Level]:
    out = []
    for s in L.ALL_STRUCTURES:
        col = volume_column(s.name)
        vals = [(c.name, c.row[col]) for c in cases
                if c.status != "failed" and (c.row.get(col) or 0) > 0]
        out.append(Level(s.name, s.color, vals))
    return out


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _jitter(i: int) -> float:
    """A fixed vertical offset per dot, so equal volumes do not hide each other."""
    return ((i * 7) % 9 - 4) * 2.2


def _axis(largest: float) -> tuple[float, int]:
    """A round axis end (mm^3) and its number of ticks: steps of 1, 2 or 5 x 10^k cm^3."""
    largest = max(largest, 1.0)
    for step in (m * 10.0 ** k for k in range(0, 9) for m in (1, 2, 5)):
        if largest / step <= 6:
            ticks = math.ceil(largest / step)
            return ticks * step, ticks
    return largest, 1


def cohort_svg(levels_: list[Level], marked: str | None) -> str:
    top, ticks = _axis(max((v for lv in levels_ for _, v in lv.values), default=1.0) * 1.02)
    width = LEFT + PLOT_W + RIGHT
    height = TOP + ROW_H * len(levels_) + 30

    def x(mm3: float) -> float:
        return LEFT + PLOT_W * mm3 / top

    parts = [f'<svg class="cohort" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="volume of each level across the cases">']
    for t in range(ticks + 1):  # axis: cm^3
        tx = LEFT + PLOT_W * t / ticks
        parts.append(f'<line x1="{tx:.1f}" y1="{TOP - 8}" x2="{tx:.1f}" y2="{height - 28}" '
                     'stroke="#e3e3e3"/>'
                     f'<text x="{tx:.1f}" y="{height - 12}" text-anchor="middle">'
                     f"{cm3(top * t / ticks)}</text>")
    parts.append(f'<text x="{LEFT + PLOT_W / 2}" y="{TOP - 14}" text-anchor="middle">'
                 "volume (cm&#179;)</text>")
    for row, lv in enumerate(levels_):
        cy = TOP + ROW_H * row + ROW_H / 2
        fill = "rgb({},{},{})".format(*lv.color)
        parts.append(f'<g class="level" data-level="{esc(lv.name)}">'
                     f'<text x="{LEFT - 10}" y="{cy + 4:.1f}" text-anchor="end">'
                     f"{esc(lv.name)} ({len(lv.values)})</text>")
        if lv.values:
            q1, q2, q3 = _quartiles([v for _, v in lv.values])
            box_w = max(x(q3) - x(q1), 1)
            parts.append(f'<rect x="{x(q1):.1f}" y="{cy - 11:.1f}" width="{box_w:.1f}" '
                         'height="22" fill="none" stroke="#777"/>'
                         f'<line x1="{x(q2):.1f}" y1="{cy - 11:.1f}" x2="{x(q2):.1f}" '
                         f'y2="{cy + 11:.1f}" stroke="#333" stroke-width="2"/>')
        for i, (name, v) in enumerate(lv.values):
            if name == marked:
                continue
            parts.append(f'<a href="{esc(case_url(name))}"><circle cx="{x(v):.1f}" '
                         f'cy="{cy + _jitter(i):.1f}" r="3.5" fill="{fill}" stroke="#333" '
                         f'stroke-width="0.5"><title>{esc(name)}: {cm3(v)} cm&#179;</title>'
                         "</circle></a>")
        mine = next((v for name, v in lv.values if name == marked), None)
        if mine is not None:
            mx = x(mine)
            parts.append(f'<path class="marked" d="M{mx:.1f} {cy - 8:.1f} L{mx + 6:.1f} {cy:.1f} '
                         f'L{mx:.1f} {cy + 8:.1f} L{mx - 6:.1f} {cy:.1f} Z" fill="#e03131" '
                         f'stroke="#000"><title>{esc(marked)}: {cm3(mine)} cm&#179;</title>'
                         f'</path><text x="{LEFT + PLOT_W + 8}" y="{cy + 4:.1f}" fill="#e03131">'
                         f"{cm3(mine)}</text>")
        elif marked:
            parts.append(f'<text x="{LEFT + PLOT_W + 8}" y="{cy + 4:.1f}" fill="#e03131">'
                         "not found</text>")
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def cohort_page(folder: ResultsFolder, marked: Case | None) -> str:
    cases = folder.cases()
    counted = sum(c.status != "failed" for c in cases)
    if marked is not None:
        intro = (f'<p>Each level\'s volume in the {counted} segmented case(s); '
                 f'<a href="{esc(case_url(marked.name))}">{esc(marked.name)}</a> is the red '
                 "diamond. The box holds the middle half of the cases, its bar the median; "
                 "hover a dot for its case, click it to open it.</p>")
    else:
        intro = (f"<p>Each level's volume in the {counted} segmented case(s). The box holds the "
                 "middle half of the cases, its bar the median; hover a dot for its case, "
                 "click it to open it. Open a case and follow \"this case in the cohort\" to "
                 "mark it here.</p>")
    body = intro + cohort_svg(levels(cases), marked.name if marked else None)
    title = f"Cohort: {marked.name}" if marked else "Cohort"
    return page(title, body, folder=str(folder.root))
