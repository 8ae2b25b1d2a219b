"""Slice preprocessing shared by training and inference (numpy/scipy only).

One volume in the working layout (see ``io.py``) becomes a stack of sagittal slices on a fixed
in-plane grid: intensities normalised per volume (percentile clip + z-score), each slice resampled
in-plane to ``spacing_mm``, then padded/cropped to a network-friendly size. ``SliceGrid`` records
the exact mapping so a label map can be brought back to the input grid (nearest neighbour), and
training and the runtime cannot drift apart: both call these functions with the same config, which
an exported model carries in its metadata.

Coordinate convention (area-aligned, like scipy's ``grid_mode=True``): output pixel ``j`` covers
input coordinates centred on ``(j + 0.5) * scale - 0.5`` with ``scale = spacing_mm / in_spacing``.
The scale is exact (not re-derived from rounded shapes), so physical spacing is exactly
``spacing_mm`` and the inverse is the same affine map turned around.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from scar_runtime.core.errors import InvalidImageError


@dataclass(frozen=True)
class PreprocessConfig:
    spacing_mm: float = 1.0  # in-plane spacing the network sees
    size_multiple: int = 16  # network input H/W must be a multiple of this (output stride)
    fixed_size: tuple[int, int] | None = None  # pad/crop to exactly this, else pad to multiple
    max_size: int = 512  # larger (after resampling) is centre-cropped to bound memory and time
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    # 2.5D input: this many neighbouring sagittal slices on each side become extra input
    # channels (channel ``context_slices`` is the slice being segmented; slices beyond the
    # volume's ends repeat the edge slice, so single-slice images work too). 0: plain 2D.
    context_slices: int = 0

    def __post_init__(self):
        if self.spacing_mm <= 0:
            raise ValueError("spacing_mm must be > 0")
        if not isinstance(self.context_slices, int) or self.context_slices < 0:
            raise ValueError(f"context_slices must be an int >= 0, not {self.context_slices!r}")
        lo, hi = self.clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("clip_percentiles must satisfy 0 <= lo < hi <= 100")
        if self.max_size % self.size_multiple:
            raise ValueError("max_size must be a multiple of size_multiple")

    @property
    def input_channels(self) -> int:
        """Channels of the network input: the slice and its neighbours on both sides."""
        return 1 + 2 * self.context_slices

    def to_dict(self) -> dict:
        d = asdict(self)
        d["clip_percentiles"] = list(self.clip_percentiles)
        d["fixed_size"] = list(self.fixed_size) if self.fixed_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        d = dict(d)
        d["clip_percentiles"] = tuple(d["clip_percentiles"])
        if d.get("fixed_size"):
            d["fixed_size"] = tuple(d["fixed_size"])
        return cls(**d)


@dataclass(frozen=True)
class SliceGrid:
    """Exact mapping between an input slice grid and the network grid."""

    in_shape: tuple[int, int]  # working-layout (rows, cols) of the input slices
    in_spacing: tuple[float, float]
    spacing_mm: float
    resampled_shape: tuple[int, int]
    offset: tuple[int, int]  # network pixel = resampled pixel + offset (negative: cropped)
    out_shape: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Input pixels per network pixel along rows and cols."""
        return (self.spacing_mm / self.in_spacing[0], self.spacing_mm / self.in_spacing[1])

    def to_network(self, rc: np.ndarray) -> np.ndarray:
        """Input slice (row, col) coordinates -> network pixel coordinates (works on (..., 2))."""
        rc = np.asarray(rc, dtype=np.float64)
        s = np.array(self.scale)
        return (rc + 0.5) / s - 0.5 + np.array(self.offset)

    def to_resampled(self, rc: np.ndarray) -> np.ndarray:
        """Input slice (row, col) -> coordinates on the resampled grid before pad/crop."""
        return self.to_network(rc) - np.array(self.offset)

    def to_input(self, rc: np.ndarray) -> np.ndarray:
        """Network pixel coordinates -> input slice (row, col) coordinates."""
        rc = np.asarray(rc, dtype=np.float64)
        s = np.array(self.scale)
        return (rc - np.array(self.offset) + 0.5) * s - 0.5


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def plan_grid(in_shape: tuple[int, int], in_spacing: tuple[float, float],
              cfg: PreprocessConfig) -> SliceGrid:
    """Decide the resampled size and the centred pad/crop for slices of one volume."""
    if min(in_spacing) <= 0:
        raise InvalidImageError(f"in-plane spacing {in_spacing} must be > 0")
    res = tuple(max(1, int(round(n * s / cfg.spacing_mm)))
                for n, s in zip(in_shape, in_spacing, strict=True))
    if cfg.fixed_size is not None:
        out = tuple(cfg.fixed_size)
    else:
        out = tuple(min(_round_up(n, cfg.size_multiple), cfg.max_size) for n in res)
    # Centred: pad (or crop) half before, half after; the floor keeps it deterministic.
    offset = tuple((o - r) // 2 for o, r in zip(out, res, strict=True))
    return SliceGrid(in_shape=tuple(in_shape), in_spacing=tuple(float(s) for s in in_spacing),
                     spacing_mm=cfg.spacing_mm, resampled_shape=res, offset=offset,
                     out_shape=out)  # type: ignore[arg-type]


def intensity_stats(volume: np.ndarray, cfg: PreprocessConfig) -> tuple[float, float, float, float]:
    """(clip_lo, clip_hi, mean, std) of a volume, robust to outliers."""
    flat = volume.ravel()
    if flat.size > 4_000_000:  # a regular subsample keeps percentiles exact enough and fast
        flat = flat[:: flat.size // 2_000_000]
    lo, hi = np.percentile(flat, cfg.clip_percentiles)
    clipped = np.clip(flat, lo, hi).astype(np.float64)
    mean, std = float(clipped.mean()), float(clipped.std())
    if not hi > lo or std < 1e-8:
        raise InvalidImageError("image has no contrast after percentile clipping (constant?)")
    return float(lo), float(hi), mean, std


def normalise(volume: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Percentile clip + z-score over the whole volume (per volume, so slices stay comparable)."""
    lo, hi, mean, std = intensity_stats(volume, cfg)
    out = np.clip(volume, lo, hi).astype(np.float32)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out


def _resample(array: np.ndarray, scale: tuple[float, float], shape: tuple[int, int],
              order: int, start: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Resample (rows, cols, ...) in-plane: output pixel j samples input (j + 0.5) * s - 0.5.

    ``start``: compute only the window of the full output grid that begins at pixel ``start``
    (the pixels that are kept); zero is the plain, full resampling.
    """
    sy, sx = scale
    # (a spacing read from a rotated affine is 1 only to rounding: the same grid)
    if (np.allclose((sy, sx), 1.0, rtol=0.0, atol=1e-9) and start == (0, 0)
            and tuple(array.shape[:2]) == tuple(shape)):
        return array
    extra = array.ndim - 2
    matrix = np.array([sy, sx] + [1.0] * extra)
    offset = np.array([(start[0] + 0.5) * sy - 0.5, (start[1] + 0.5) * sx - 0.5] + [0.0] * extra)
    # 'nearest' extends the edge pixels, so the border is not blended with a padding value.
    return ndimage.affine_transform(array, matrix, offset=offset,
                                    output_shape=tuple(shape) + tuple(array.shape[2:]),
                                    order=order, mode="nearest", prefilter=False)


def _kept_window(grid: SliceGrid) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(start, size) of the part of the resampled grid that the network grid keeps, or None
    when it keeps all of it (no crop: the common case, computed exactly as it always was).

    With a large field of view or huge voxels the resampled grid is far larger than the network
    grid; resampling only the kept window makes the cost depend on the output grid, never on
    the voxel size (100 mm voxels once asked for a 100x larger image per slice)."""
    start = tuple(max(0, -o) for o in grid.offset)
    stop = tuple(min(r, n - o) for r, n, o in
                 zip(grid.resampled_shape, grid.out_shape, grid.offset, strict=True))
    if start == (0, 0) and stop == tuple(grid.resampled_shape):
        return None
    return start, tuple(max(0, b - a) for a, b in zip(start, stop, strict=True))  # type: ignore


def _shift_copy(src: np.ndarray, offset: tuple[int, int], shape: tuple[int, int],
                fill: float) -> np.ndarray:
    """Place ``src`` at ``offset`` in a new array of ``shape`` (pads and/or crops)."""
    out = np.full(tuple(shape) + src.shape[2:], fill, dtype=src.dtype)
    oy, ox = offset
    r0, c0 = max(0, oy), max(0, ox)
    i0, j0 = max(0, -oy), max(0, -ox)
    h = min(src.shape[0] - i0, shape[0] - r0)
    w = min(src.shape[1] - j0, shape[1] - c0)
    if h > 0 and w > 0:
        out[r0:r0 + h, c0:c0 + w] = src[i0:i0 + h, j0:j0 + w]
    return out


def resample_image(volume: np.ndarray, in_spacing: tuple[float, float],
                   cfg: PreprocessConfig) -> tuple[np.ndarray, SliceGrid]:
    """Normalise and resample in-plane, without the final pad/crop (training crops itself).

    Returns the float32 volume (rows, cols, slices) at ``cfg.spacing_mm`` and the grid.
    """
    if volume.ndim != 3:
        raise InvalidImageError(f"expected a 3D volume, got shape {volume.shape}")
    grid = plan_grid(volume.shape[:2], in_spacing, cfg)
    norm = normalise(volume, cfg)
    return _resample(norm, grid.scale, grid.resampled_shape, order=1), grid


def resample_labels(labels: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """Labels on the resampled (unpadded) grid, nearest neighbour."""
    return _resample(labels, grid.scale, grid.resampled_shape, order=0)


def image_to_slices(volume: np.ndarray, in_spacing: tuple[float, float],
                    cfg: PreprocessConfig) -> tuple[np.ndarray, SliceGrid]:
    """Working-layout volume (rows, cols, slices) -> float32 network input (slices, C, H, W),
    C = ``cfg.input_channels``."""
    grid, batches = iter_slice_batches(volume, in_spacing, cfg, batch=max(1, volume.shape[-1]))
    return next(batches)[1], grid


def context_indices(slices: np.ndarray, k: int, n: int) -> np.ndarray:
    """(len(slices), 2k+1) slice indices of each slice's 2.5D channels: its k neighbours on each
    side, clamped to 0..n-1 (the edge slice repeats). Training and the runtime both use this."""
    return np.clip(np.asarray(slices)[:, None] + np.arange(-k, k + 1)[None, :], 0, n - 1)


def iter_slice_batches(volume: np.ndarray, in_spacing: tuple[float, float],
                       cfg: PreprocessConfig, batch: int,
                       intensity: tuple[float, float, float, float] | None = None,
                       only: np.ndarray | None = None):
    """Like :func:`image_to_slices`, one batch of slices at a time, so peak memory does not grow
    with the number of slices: yields ``(first_slice_index, (B, C, H, W) float32)``.

    Normalisation statistics are computed over the whole volume first, so every batch is
    normalised exactly as :func:`image_to_slices` would. With ``cfg.context_slices`` = k the
    batches are (B, 2k+1, H, W): channel j of slice i is slice i + j - k, clamped to the volume.
    ``intensity``: :func:`intensity_stats` of another volume to normalise with (a resampled copy
    of an image, whose filled corners would otherwise shift the statistics).
    ``only``: these slice indices (ascending) instead of every slice; the yielded index is then
    the position in ``only`` (the coarse first pass of pipeline/roi.py).

    Each slice is normalised and resampled once: a batch's context slices that the previous
    batch already resampled are taken from it (at batch 1 with k = 1 every slice was resampled
    three times before; the inputs are bit-identical).
    """
    if volume.ndim != 3:
        raise InvalidImageError(f"expected a 3D volume, got shape {volume.shape}")
    if batch < 1:
        raise ValueError("batch must be >= 1")
    grid = plan_grid(volume.shape[:2], in_spacing, cfg)
    lo, hi, mean, std = intensity or intensity_stats(volume, cfg)
    # Pad with the darkest normalised value (what air looks like after clipping), not 0, which
    # after z-scoring is mid-grey tissue.
    background = (lo - mean) / std
    window = _kept_window(grid)
    k, n = cfg.context_slices, volume.shape[2]

    order = np.arange(n) if only is None else np.asarray(only, dtype=np.int64)

    def resampled(idx: list[int]) -> np.ndarray:
        part = np.clip(volume[:, :, idx[0]:idx[-1] + 1] if idx == list(range(idx[0], idx[-1] + 1))
                       else volume[:, :, idx], lo, hi).astype(np.float32)
        part = (part - np.float32(mean)) / np.float32(std)
        if window is None:
            res = _resample(part, grid.scale, grid.resampled_shape, order=1)
            return _shift_copy(res, grid.offset, grid.out_shape, float(background))
        (r0, c0), size = window  # crop first: resample only the pixels the network grid keeps
        res = _resample(part, grid.scale, size, order=1, start=(r0, c0))
        return _shift_copy(res, (grid.offset[0] + r0, grid.offset[1] + c0), grid.out_shape,
                           float(background))

    def gen():
        # With context, each batch also needs its k neighbours on both sides; every slice then
        # takes its channels from the resampled slices by clamped index. With k = 0 this is the
        # plain (B, 1, H, W) stack.
        held: dict[int, np.ndarray] = {}  # slice index -> resampled (H, W), from the last batch
        for pos in range(0, len(order), batch):
            wanted = context_indices(order[pos:pos + batch], k, n)
            need = [int(i) for i in np.unique(wanted)]
            new = [i for i in need if i not in held]
            if new:
                stack = resampled(new)
                held.update((i, stack[:, :, j]) for j, i in enumerate(new))
            x = np.empty(wanted.shape + tuple(grid.out_shape), np.float32)
            for b, row in enumerate(wanted):
                for c, i in enumerate(row):
                    x[b, c] = held[int(i)]
            held = {i: held[i] for i in need}
            yield pos, x

    return grid, gen()


def labels_to_slices(labels: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """Working-layout label volume -> (slices, H, W) on the network grid (nearest neighbour)."""
    stack = _shift_copy(resample_labels(labels, grid), grid.offset, grid.out_shape, 0)
    return np.ascontiguousarray(np.moveaxis(stack, 2, 0))


def slices_to_labels(slices: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """(slices, H, W) labels on the network grid -> working-layout volume on the input grid.

    The exact inverse of :func:`labels_to_slices`' geometry, nearest neighbour; input pixels that
    were cropped away come back as background (0).
    """
    stack = np.moveaxis(np.asarray(slices), 0, 2)
    if tuple(stack.shape[:2]) != tuple(grid.out_shape):
        raise ValueError(f"slices of {stack.shape[:2]} do not match the grid {grid.out_shape}")
    inv_scale = (1.0 / grid.scale[0], 1.0 / grid.scale[1])
    window = _kept_window(grid)
    if window is None:
        res = _shift_copy(stack, (-grid.offset[0], -grid.offset[1]), grid.resampled_shape, 0)
        return np.ascontiguousarray(_resample(res, inv_scale, grid.in_shape, order=0))
    # Cropped: never build the (possibly huge) resampled grid. Look each input pixel up on the
    # network grid through the very indices scipy's nearest-neighbour resampling of the full
    # resampled grid would use; pixels of the crop come back as background, as before.
    out = np.zeros(tuple(grid.in_shape) + stack.shape[2:], dtype=stack.dtype)
    rows, cols = (_nearest_indices(n_out, z, n_in) + o for n_out, z, n_in, o in
                  zip(grid.in_shape, inv_scale, grid.resampled_shape, grid.offset, strict=True))
    keep_r = (rows >= 0) & (rows < grid.out_shape[0])
    keep_c = (cols >= 0) & (cols < grid.out_shape[1])
    out[np.ix_(keep_r, keep_c)] = stack[rows[keep_r]][:, cols[keep_c]]
    return out


def _nearest_indices(n_out: int, zoom: float, n_in: int) -> np.ndarray:
    """The input index each of ``n_out`` output pixels takes in ``_resample(..., order=0)``:
    scipy's zoom-shift computes ``(j + offset / zoom) * zoom`` and rounds half up, clamped to
    the input ('nearest' mode). Computed the same way, ties at integer zoom factors included."""
    offset = 0.5 * zoom - 0.5
    coords = (np.arange(n_out, dtype=np.float64) + np.float64(offset) / np.float64(zoom)) * zoom
    return np.clip(np.floor(coords + 0.5).astype(np.int64), 0, n_in - 1)
