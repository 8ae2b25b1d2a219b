"""Straightening a tilted spine before it is segmented.

The network learned upright spines: the lumbar column of the 85 masked reference cases leans
-6 degrees (median; 5th-95th percentile -11.5 .. -1) from the head-feet axis, and training adds
+-10 degrees of rotation. At 30 degrees of extra tilt it loses the names of 9 of 10 val cases
tried (MODEL_CARD).
So the runtime measures the column's axis on the network's first answer and, when the column
leans far from that reference, rotates the image in the sagittal plane until it is upright,
segments that, and rotates the labels back onto the input grid (nearest neighbour). The
rotated copy is a real :class:`Volume` whose affine maps its voxels to the same world points,
so key-points read on it land where they belong in the input without extra bookkeeping.

Angles are in degrees in the working layout's sagittal plane (axis 0 head -> feet, axis 1
front -> back), positive when the column's lower end lies farther back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from scar_runtime.io.nifti import Volume

# Fewer structure voxels (mm^2 in the sagittal projection) than about one lumbar body's
# cross-section: no column to measure.
MIN_COLUMN_AREA_MM2 = 1200.0
# The column is long and narrow (five bodies ~ 180 x 40 mm); a blob whose long axis is not
# clearly longer than its short one has no direction worth rotating to.
MIN_ELONGATION = 2.0
# Voxels farther than this from the first axis (stray pieces far off the column) are left out
# when the axis is fitted again.
TRIM_MM = 30.0
TRIM_ROUNDS = 3  # a far piece pulls the first line; each refit drops more of it
# Cubic: the rotated copy is an extra resampling of an image the network would otherwise see
# as it is (it is sampled straight onto the network's pixels, so once); on tilted val volumes
# linear interpolation lost level names that cubic kept (docs/performance.md).
INTERPOLATION_ORDER = 3


def column_axis_deg(labels: np.ndarray, spacing) -> float | None:
    """Angle of the column's long axis: the principal axis of every voxel of any structure,
    projected onto the sagittal plane (in mm, each pixel weighted by its voxel count), fitted
    again without the pixels farther than ``TRIM_MM`` from the line (up to ``TRIM_ROUNDS``
    times, while at least half the weight stays). ``None`` when
    there is too little, or nothing elongated, to measure."""
    sp = np.asarray(spacing, dtype=np.float64)[:2]
    counts = np.count_nonzero(labels, axis=2)  # the sagittal projection
    rc = np.argwhere(counts)
    if len(rc) * sp.prod() < MIN_COLUMN_AREA_MM2:
        return None
    pts, w = rc * sp, counts[tuple(rc.T)].astype(np.float64)
    axis, centre, ratio = _principal_axis(pts, w)
    kept = np.ones(len(pts), bool)
    for _ in range(TRIM_ROUNDS):
        d = pts - centre
        near = np.abs(d[:, 0] * axis[1] - d[:, 1] * axis[0]) <= TRIM_MM  # off the line
        if (near == kept).all() or w[near].sum() < w.sum() / 2:
            break
        kept = near
        axis, centre, ratio = _principal_axis(pts[kept], w[kept])
    if ratio < MIN_ELONGATION:
        return None
    if axis[0] < 0:
        axis = -axis
    return float(np.degrees(np.arctan2(axis[1], axis[0])))


def _principal_axis(pts: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(unit long axis, centre, long / short standard deviation) of weighted 2D points."""
    centre = (pts * w[:, None]).sum(axis=0) / w.sum()
    d = pts - centre
    evals, evecs = np.linalg.eigh((d * w[:, None]).T @ d / w.sum())
    ratio = float(np.sqrt(evals[1] / max(evals[0], 1e-12)))
    return evecs[:, 1], centre, ratio


@dataclass(frozen=True)
class InplaneRotation:
    """A rotation of a working-layout volume in its sagittal plane, about the image centre,
    onto a grid large enough to hold the whole rotated image (or the network's window of it).

    ``matrix`` / ``offset`` map a voxel of the rotated grid to the input voxel it samples
    (scipy.ndimage.affine_transform's convention)."""

    matrix: np.ndarray
    offset: np.ndarray
    input_shape: tuple[int, int, int]
    shape: tuple[int, int, int]

    @classmethod
    def plan(cls, shape: tuple[int, int, int], spacing, deg: float,
             out_spacing: tuple[float, float] | None = None,
             max_pixels: int | None = None) -> InplaneRotation:
        """A rotation that turns a column at angle ``a`` to ``a - deg``, onto pixels of
        ``out_spacing`` mm (default: the input's). Sampling straight at the network's own pixel
        size saves the network's resampling a second interpolation. ``max_pixels``: at most
        this many rows and columns, about the same centre (the network centre-crops larger
        grids, so computing more is wasted)."""
        sp_in = np.asarray(spacing, dtype=np.float64)[:2]
        sp_out = sp_in if out_spacing is None else np.asarray(out_spacing, dtype=np.float64)
        t = np.radians(deg)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])  # rotated -> input
        half_in = (np.asarray(shape[:2], float) - 1) / 2 * sp_in
        corners = np.array([[i, j] for i in (-1, 1) for j in (-1, 1)]) * half_in
        half_out = np.abs(corners @ rot).max(axis=0)  # input corners in the rotated frame
        out_rc = tuple(int(np.ceil(2 * h / s - 1e-6)) + 1 for h, s in zip(half_out, sp_out,
                                                                            strict=True))
        centre_out = (np.asarray(out_rc, float) - 1) / 2 * sp_out
        # output voxel o -> input voxel S_in^-1 (R (S_out o - centre_out) + centre_in)
        matrix, offset = np.eye(3), np.zeros(3)
        matrix[:2, :2] = rot * sp_out[None, :] / sp_in[:, None]
        offset[:2] = (half_in - rot @ centre_out) / sp_in
        if max_pixels is not None:
            # exactly the window the network's centred crop (preprocess.plan_grid) would keep
            # of the full grid, so the network sees the same pixels either way
            start = np.array([max(0, (n - max_pixels + 1) // 2) for n in out_rc], float)
            offset[:2] += matrix[:2, :2] @ start
            out_rc = tuple(min(n, max_pixels) for n in out_rc)
        return cls(matrix=matrix, offset=offset, input_shape=tuple(shape),
                   shape=(out_rc[0], out_rc[1], int(shape[2])))

    def volume(self, vol: Volume) -> Volume:
        """The rotated image, its affine giving every voxel its true world position; corners
        outside the input are filled with the image's darkest value."""
        data = np.asarray(vol.data, dtype=np.float32)
        fill = float(data.min())
        out = np.empty(self.shape, np.float32)
        for k in range(self.shape[2]):  # slice by slice: a 2D kernel, not a 3D one
            ndimage.affine_transform(data[:, :, k], self.matrix[:2, :2], self.offset[:2],
                                     output=out[:, :, k], order=INTERPOLATION_ORDER,
                                     mode="constant", cval=fill)
        step = np.eye(4)
        step[:3, :3], step[:3, 3] = self.matrix, self.offset
        return replace(vol, data=out, affine=vol.affine @ step)

    def in_view(self) -> np.ndarray:
        """(rows, cols) of the rotated grid: True where it samples the input image."""
        ones = np.ones(self.input_shape[:2], np.float32)
        return ndimage.affine_transform(ones, self.matrix[:2, :2], self.offset[:2],
                                        output_shape=self.shape[:2], order=0, mode="constant",
                                        cval=0.0) > 0.5

    def to_input_voxel(self, p: np.ndarray) -> np.ndarray:
        """A point (voxel coordinates) of the rotated grid -> the input grid."""
        return self.matrix @ np.asarray(p, dtype=np.float64) + self.offset

    def labels_back(self, labels: np.ndarray) -> np.ndarray:
        """Labels on the rotated grid -> the input grid (nearest neighbour)."""
        inv = np.linalg.inv(self.matrix)
        return ndimage.affine_transform(labels, inv, -inv @ self.offset,
                                        output_shape=self.input_shape, order=0,
                                        mode="constant", cval=0)
