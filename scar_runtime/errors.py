"""Errors a user can act on.

Every command turns these into one line on stderr and a non-zero exit (see ``cli.py``). Anything
that is not a ``ScarError`` is a bug in scar-net, and the CLI says so instead of blaming the input.
"""

from __future__ import annotations


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
