"""The files ``scar review`` serves from the package itself: NiiVue, its licence, script, style.

A fixed table of names: a request for anything else under /static/ is a 404, so no request path
ever reaches the file system here.
"""

from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).with_name("assets")
NIIVUE_VERSION = "0.69.0"  # the npm package @niivue/niivue; see assets/NOTICE.md to update

# name served under /static/ -> content type
ASSETS = {
    "niivue.umd.js": "text/javascript; charset=utf-8",
    "NIIVUE_LICENSE": "text/plain; charset=utf-8",
    "NOTICE.md": "text/plain; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "table.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
}


def asset(name: str) -> tuple[Path, str] | None:
    """(file, content type) of a packaged asset, or None for any other name."""
    if name not in ASSETS:
        return None
    return ASSET_DIR / name, ASSETS[name]
