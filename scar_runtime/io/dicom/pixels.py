"""Decoding pixel data, refusing what does not match its header exactly.

pydicom reads native pixel data of the wrong length with only a warning (and returns the first
Rows x Columns values): one column too few in the header would give a sheared image, one row too
few drops data. The length is checked here first, to the byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scar_runtime.core.errors import InvalidImageError
from scar_runtime.io.dicom.attrs import file_uid, int_attr, one_line


def transfer_syntax(ds):
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    return UID(file_uid(meta, "TransferSyntaxUID") or "1.2.840.10008.1.2")


def decoder_problem(ds) -> str | None:
    """Why this file's pixel data cannot be decoded here (None when it can)."""
    from pydicom.pixels import get_decoder

    ts = transfer_syntax(ds)
    try:
        dec = get_decoder(ts)
    except (NotImplementedError, ValueError):
        return (f"transfer syntax {ts.name if ts.is_transfer_syntax else ts} cannot be decoded "
                "(no pixel data decoder exists for it in pydicom)")
    if not dec.is_available:
        return (f"transfer syntax {ts.name} needs a decoder that is not installed "
                f"(pip install 'scar-net[dicom]'): {'; '.join(dec.missing_dependencies)}")
    return None


def check_pixel_length(path: Path, ds, frames: int) -> None:
    """Native pixel data must hold exactly Rows x Columns x frames values (plus the one pad
    byte DICOM adds to an odd length); compressed data must hold one fragment set a frame."""
    rows, cols = int_attr(ds, "Rows", 0) or 0, int_attr(ds, "Columns", 0) or 0
    ts = transfer_syntax(ds)
    if ts.is_encapsulated:
        return  # each frame decodes to its own size: checked against the header after decoding
    bits = int_attr(ds, "BitsAllocated", 0) or 0
    if bits not in (8, 16, 32):
        raise InvalidImageError(f"{path}: BitsAllocated {bits}, expected 8, 16 or 32")
    expected = rows * cols * frames * bits // 8
    actual = len(ds.PixelData)
    if actual not in (expected, expected + (expected % 2)):
        raise InvalidImageError(
            f"{path}: pixel data of {actual} bytes, but Rows x Columns x frames ({rows} x {cols}"
            f" x {frames} at {bits} bits) is {expected} bytes: the header does not describe "
            "the pixels")


def read_pixels(path: Path, ds, frames: int = 1, *, rescale: bool = True) -> np.ndarray:
    """The pixels, (rows, columns) or (frames, rows, columns), as float32; ``rescale``: through
    the top-level Rescale Slope/Intercept (enhanced MR keeps them per frame instead)."""
    from pydicom.pixels import apply_rescale

    why = decoder_problem(ds)
    if why:
        raise InvalidImageError(f"{path}: {why}")
    check_pixel_length(path, ds, frames)
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise anything from ValueError to their own
        raise InvalidImageError(f"{path}: truncated or corrupt pixel data "
                                f"({one_line(e, 200)})") from e
    rows, cols = int_attr(ds, "Rows", 0), int_attr(ds, "Columns", 0)
    shape = (rows, cols) if frames == 1 else (frames, rows, cols)
    if arr.shape != shape:
        raise InvalidImageError(f"{path}: pixel data of shape {arr.shape}, header says "
                                + "x".join(map(str, shape)))
    if not rescale:
        return np.asarray(arr, dtype=np.float32)
    try:
        # Rescale Slope/Intercept (or a Modality LUT): stored values -> real MR intensities
        return np.asarray(apply_rescale(arr, ds), dtype=np.float32)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged value may raise anything
        raise InvalidImageError(f"{path}: invalid rescale slope/intercept ({e})") from e
