"""SHA-256 of files (data index, models, checkpoints, caches), read in chunks: models and
checkpoints can be large, and a hash never needs the whole file in memory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    """The file's SHA-256; a file hashed before in this process and not changed since (same
    inode, size and modification time) is not read again (`scar infer` names the model by its hash
    in the results and in the backend choice's key)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple[str, int, int, int], str] = {}
