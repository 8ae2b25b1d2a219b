"""The data index file's schema, checked before any entry is used.

``dataset.read_index`` calls :func:`validate_index_file` first, so a malformed index (a number
where a path belongs, an object where a name belongs, JSON nested deep enough to exhaust the
parser) is one ``DataIndexError`` naming the case and the field, never a ``TypeError`` from deep
inside training. Only the fields scar-net reads are typed; other fields (``shape``,
``spacing_mm``, ``sequence``... in ../shared/data) are allowed when they are plain JSON values.
"""

from __future__ import annotations

import json
from pathlib import Path

from scar_runtime.core.errors import DataIndexError

# An index lists cases, not data: a few MB at most. Bounding the file bounds the parse.
MAX_INDEX_BYTES = 64 << 20
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 256
# Entries are flat objects whose values are scalars or short lists of scalars.
MAX_DEPTH = 4
SPLITS = ("train", "val", "test")

_PATH_FIELDS = ("image", "seg", "keypoints", "meta")
_REQUIRED = ("dataset", "case", "image")


def validate_index_file(path: Path | str) -> list[dict]:
    """Parse and check an index file; returns its entries. Raises ``DataIndexError``."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataIndexError(f"{path}: cannot read the data index ({e.strerror})") from e
    if not path.is_file():
        raise DataIndexError(f"{path}: not a regular file")
    if size > MAX_INDEX_BYTES:
        raise DataIndexError(f"{path}: {size:,} bytes is not a data index (at most "
                             f"{MAX_INDEX_BYTES >> 20} MB)")
    try:
        entries = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataIndexError(f"{path}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise DataIndexError(f"{path}: JSON nested too deeply to be a data index") from e
    except OSError as e:
        raise DataIndexError(f"{path}: cannot read the data index ({e.strerror})") from e
    validate_entries(entries, path)
    return entries


def validate_entries(entries: object, where: Path | str) -> None:
    if not isinstance(entries, list):
        raise DataIndexError(f"{where}: expected a JSON list of case objects, got "
                             f"{_kind(entries)}")
    for i, entry in enumerate(entries):
        _check_entry(entry, f"{where}: case #{i}")


def _check_entry(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise DataIndexError(f"{where} is {_kind(entry)}, expected an object")
    for key in _REQUIRED:
        if key not in entry:
            raise DataIndexError(f"{where} lacks '{key}'")
    where = f"{where} ({_short(entry.get('dataset'))}/{_short(entry.get('case'))})"
    _name(entry, "dataset", where, required=True)
    _name(entry, "case", where, required=True, allow_int=True)
    for key in ("subject", "subject_group"):
        _name(entry, key, where, required=False, allow_int=True)
    for key in _PATH_FIELDS:
        value = entry.get(key)
        if value is None and key != "image":
            continue
        if not isinstance(value, str) or not value or "\0" in value:
            raise DataIndexError(f"{where}: '{key}' must be a file path (a non-empty string), "
                                 f"got {_kind(value)}")
        if len(value) > MAX_PATH_CHARS:
            raise DataIndexError(f"{where}: '{key}' is longer than {MAX_PATH_CHARS} characters")
    levels = entry.get("levels", [])
    if not isinstance(levels, list) or not all(isinstance(v, str) and len(v) <= MAX_NAME_CHARS
                                               for v in levels):
        raise DataIndexError(f"{where}: 'levels' must be a list of level names (strings)")
    split = entry.get("split", "train")
    if split not in SPLITS:
        raise DataIndexError(f"{where}: unknown split {_short(split)} (valid: "
                             f"{', '.join(SPLITS)})")
    for key, value in entry.items():
        if _depth(value) > MAX_DEPTH:
            raise DataIndexError(f"{where}: '{_short(key)}' is nested too deeply")


def _name(entry: dict, key: str, where: str, *, required: bool, allow_int: bool = False) -> None:
    value = entry.get(key)
    if value is None and not required:
        return
    ok = isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS
    ok = ok or (allow_int and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise DataIndexError(f"{where}: '{key}' must be a name (a non-empty string), got "
                             f"{_kind(value)}")


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()], default=level + 1)
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value], default=level + 1)
    return level


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if _depth(value) < 3 else "..."
    return text if len(text) <= 40 else text[:37] + "..."
