"""The only way ``scar review`` opens a file of the results folder: a path that stays inside it.

A request path is attacker-shaped text: ``..`` (plain or encoded as ``%2e%2e``), encoded slashes
(``%2f``, ``%5c``) that a single decode would turn into separators, absolute paths, NUL bytes,
and symlinks inside the folder that point outside it. Everything is checked on the decoded
segments AND on the real path the OS would open, so no spelling can reach a file outside.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

# a separator hidden behind percent-encoding: decoding would create a path segment the router
# never saw, so such a request is refused instead of decoded
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)


class Forbidden(Exception):
    """A request for something outside the results folder (answered 403)."""


def decode_segments(raw: str) -> list[str]:
    """The decoded segments of a URL path tail (``a/b%20c`` -> ``["a", "b c"]``); refuses
    (Forbidden) anything that could climb out: ``..``, ``.``, empty segments (``//x`` is an
    absolute path), encoded separators, backslashes, NUL."""
    if _ENCODED_SEPARATOR.search(raw):
        raise Forbidden(f"encoded separator in {raw!r}")
    try:
        segments = [unquote(s, errors="strict") for s in raw.split("/")]
    except UnicodeDecodeError as e:
        raise Forbidden(f"not UTF-8: {raw!r}") from e
    for s in segments:
        if s in ("", ".", "..") or "\\" in s or "\x00" in s:
            raise Forbidden(f"path segment {s!r}")
    return segments


def inside(root: Path, relative: str | list[str]) -> Path | None:
    """``root``/``relative`` when it is a regular file whose REAL path (symlinks followed) lies
    inside ``root``'s real path; None when there is no such file; Forbidden when it escapes."""
    parts = relative.split("/") if isinstance(relative, str) else relative
    for s in parts:  # names built from a results table (case names) are checked like a URL's
        if s in ("", ".", "..") or "/" in s or "\\" in s or "\x00" in s:
            raise Forbidden(f"path segment {s!r}")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, real]) != real_root:
        raise Forbidden(f"{'/'.join(parts)} leads outside the results folder")
    return Path(real) if os.path.isfile(real) else None
