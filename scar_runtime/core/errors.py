"""Errors a user can act on.

Every command turns these into one line on stderr and a non-zero exit (see ``cli.py``). Anything
that is not a ``ScarError`` is a bug in scar-net, and the CLI says so instead of blaming the input.
"""

from __future__ import annotations

import importlib


class ScarError(Exception):
    """Base of every error caused by the user's input, files or environment."""

    exit_code = 1


class InputFileError(ScarError):
    """A file that cannot be read as what it should be: missing, not NIfTI, corrupt, truncated."""


class InvalidImageError(ScarError):
    """A readable image whose content or geometry scar-net cannot use (2D, NaN, constant...)."""


class GeometryMismatchError(ScarError):
    """Two images that should share a voxel grid do not (shape or affine differ)."""


class OutputError(ScarError):
    """An output that must not or cannot be written (exists, is the input, not writable)."""


class DataIndexError(ScarError):
    """A data index file that is missing, malformed or points at missing files."""


class ModelError(ScarError):
    """A model file that is not a scar-net model, or a backend that cannot run it."""


class ConfigError(ScarError):
    """Options that contradict each other or a saved run."""


class ResourceError(ScarError):
    """The machine ran out of something the job needs: memory, disk space, inodes."""


# --------------------------------------------------------------------------- library errors
#
# Libraries (nibabel, numpy, zlib, onnxruntime, torch, the OS) raise their own types for problems
# that are the user's input or machine, not a bug in scar-net. This is the ONE place that turns
# them into a ScarError: readers wrap a library call and pass what it raised to ``library_message``
# (for the words) and the CLI passes anything that escaped to ``from_library`` before it would
# call it an internal error.

_NO_SPACE = {28: "no space left on the output device (disk or inodes full)",  # ENOSPC
             122: "disk quota exceeded"}  # EDQUOT
_NO_ACCESS = {1: "operation not permitted", 13: "permission denied",  # EPERM, EACCES
              30: "read-only file system"}  # EROFS


def one_line(text) -> str:
    """Any message (an exception's included) on one line: the form every error takes here."""
    return " ".join(str(text).split())


def library_message(e: BaseException, what: str) -> str:
    """``what``, plus the library's own words when they are short enough to help (one line)."""
    detail = one_line(e)
    if not detail or len(detail) > 160:
        return what
    return f"{what} ({detail})"


def from_library(e: BaseException) -> ScarError | None:
    """The ScarError a library exception stands for, or None when it is a bug in scar-net."""
    if isinstance(e, ScarError):
        return e
    if isinstance(e, MemoryError):
        return ResourceError("out of memory (try a smaller --batch or a smaller volume)")
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return ResourceError(f"{_NO_SPACE[e.errno]}{where}")
    if isinstance(e, OSError) and e.errno in _NO_ACCESS:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        return OutputError(f"{_NO_ACCESS[e.errno]}{where}")
    text = str(e).lower()
    module = type(e).__module__ or ""
    if module.startswith(("onnxruntime", "openvino")) and (
            "allocat" in text or "bad_alloc" in text or "out of memory" in text):
        return ResourceError("the inference backend ran out of memory (try a smaller --batch)")
    if module.startswith("torch") and "out of memory" in text:
        return ResourceError("out of memory in PyTorch (try a smaller --batch)")
    return None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM where scar-net catches it), with a word on what was finished; the CLI
    prints it in one line and exits 130. Not a ScarError: nothing may catch it as bad input."""


def import_extra(module: str, missing: str):
    """``module`` imported, or a ``ConfigError`` saying ``missing`` (what needs it and the
    extra that installs it): optional dependencies are imported where they are used, never by
    the lean runtime's modules."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(missing) from e
