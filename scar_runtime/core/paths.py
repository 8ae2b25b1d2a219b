"""Where scar-net keeps what it may rebuild: the user's cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/scar-net`` (``~/.cache/scar-net`` by default): OpenVINO's compiled
    models, the CPU backend choice, TensorRT timing caches. Deleting it only costs time."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scar-net"
