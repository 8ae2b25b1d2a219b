"""What every review page shares: the HTML shell, escaping, links and number formats.

Every piece of text that comes from the results folder (case names, warnings, errors, paths) goes
through ``esc`` or ``case_url``: a case name is data, never markup.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

from scar_runtime import __version__


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def case_url(name: str, tail: str = "") -> str:
    return f"/case/{quote(name, safe='')}{tail}"


def cohort_url(name: str | None = None) -> str:
    return "/cohort" + (f"/{quote(name, safe='')}" if name else "")


def file_url(name: str) -> str:
    return f"/files/{quote(name)}"  # "/" kept: a manifest's case name may name a subfolder


def number(value, digits: int = 1, scale: float = 1.0) -> str:
    """A table cell's number ("" for none)."""
    if value is None:
        return ""
    return f"{value * scale:.{digits}f}"


def cm3(mm3) -> str:
    """Volumes read better in cm^3 (mL) than in mm^3."""
    return number(mm3, 1, 1e-3)


def status_badge(status: str) -> str:
    return f'<span class="status status-{esc(status)}">{esc(status.replace("_", " "))}</span>'


def json_script(element_id: str, doc) -> str:
    """Data for a page's script, embedded so that no JSON can close the <script> early."""
    text = json.dumps(doc).replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def page(title: str, body: str, *, folder: str, scripts: tuple[str, ...] = ()) -> str:
    tags = "\n".join(f'<script src="/static/{esc(s)}"></script>' for s in scripts)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} - scar review</title>
<link rel="stylesheet" href="/static/review.css">
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<nav><a href="/">all cases</a><a href="/cohort">cohort</a></nav>
<span class="muted">{esc(folder)} &middot; scar-net {esc(__version__)}</span>
</header>
{body}
{tags}
</body>
</html>
"""
