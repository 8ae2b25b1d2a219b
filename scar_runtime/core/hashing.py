"""SHA-256 of files (data index, models, checkpoints, caches), read in chunks: models and
checkpoints can be large, and a hash never needs the whole file in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
