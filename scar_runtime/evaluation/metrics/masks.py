"""Binary-mask metrics (Dice, HD95) and the label-volume helpers every metric shares.

Speed: each label volume is scanned once for bounding boxes (``scipy.ndimage.find_objects``)
and once for surfaces; per-structure work then happens on the union bounding box of prediction
and ground truth, and surface distances on surface points only, so a stray blob far from its
structure cannot make a case slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage
from scipy.spatial import cKDTree

from scar_runtime.labels import NUM_CLASSES

Slices = tuple[slice, ...]

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _as_bool_pair(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred_mask).astype(bool, copy=False)
    gt = np.asarray(gt_mask).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape} vs ground truth {gt.shape}")
    return pred, gt


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    if len(sp) != ndim:
        raise ValueError(f"spacing needs {ndim} values (one per axis), got {len(sp)}")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be finite and positive, got {sp}")
    return sp


def _affine(affine: np.ndarray) -> np.ndarray:
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    return aff


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """Model class ids only: an integer array in 0..NUM_CLASSES-1.

    Floats are refused rather than cast, because a resampled or probability array would be
    truncated silently into plausible-looking but wrong classes.
    """
    arr = np.asarray(labels)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be an integer array of model class ids, got {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{what} must be a 3D label volume, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(
            f"{what} holds class ids {arr.min()}..{arr.max()}; model classes are "
            f"0..{NUM_CLASSES - 1} (map VerSe ids with labels.verse_to_model first)"
        )
    return arr


def _class_slices(labels: np.ndarray) -> dict[int, Slices]:
    """Bounding box of every class present, from one pass over the volume."""
    found = ndimage.find_objects(labels, max_label=NUM_CLASSES - 1)
    return {i + 1: sl for i, sl in enumerate(found) if sl is not None}


def _mask_bbox(mask: np.ndarray) -> Slices | None:
    """Tight bounding box of a boolean mask (None when empty)."""
    sl = ndimage.find_objects(mask.astype(bool, copy=False).view(np.uint8))
    return sl[0] if sl and sl[0] is not None else None


def _union_pad(a: Slices | None, b: Slices | None, shape: tuple[int, ...], margin: int) -> Slices:
    boxes = [s for s in (a, b) if s is not None]
    return tuple(
        slice(max(min(s[ax].start for s in boxes) - margin, 0),
              min(max(s[ax].stop for s in boxes) + margin, shape[ax]))
        for ax in range(len(shape))
    )


def _centroid_in_box(labels: np.ndarray, class_id: int, sl: Slices) -> np.ndarray:
    """Voxel-index centroid of one class from its bounding box.

    Projections (sums over the other axes) give the mean index per axis without building index
    arrays, so the cost is one comparison over the box.
    """
    m = labels[sl] == class_id
    n = np.count_nonzero(m)
    out = np.empty(3)
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        proj = m.sum(axis=other, dtype=np.int64)
        out[ax] = sl[ax].start + float(np.dot(proj, np.arange(proj.size))) / n
    return out


def _to_world(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return apply_affine(affine, ijk)


# --------------------------------------------------------------------------------------------
# Binary-mask metrics
# --------------------------------------------------------------------------------------------


def dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two binary masks (any dimension, same shape).

    Both masks empty raises ``ValueError``: Dice is undefined there and whether that means "not
    labelled" or "correctly absent" is the caller's decision, not a number to invent here.
    """
    pred, gt = _as_bool_pair(pred_mask, gt_mask)
    n_pred = np.count_nonzero(pred)
    n_gt = np.count_nonzero(gt)
    if n_pred + n_gt == 0:
        raise ValueError("Dice is undefined when both masks are empty")
    inter = np.count_nonzero(pred & gt)
    return 2.0 * inter / (n_pred + n_gt)


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Surface voxels of every non-zero label at once: voxels with a face neighbour (6-connected in
    3D) of another value, or on the array edge.

    For one binary mask this is exactly ``mask XOR binary_erosion(mask, 6-connected element,
    border_value=0)``; comparing neighbours instead lets ``evaluate_case`` find every class's
    surface in one pass. The face-connected element makes a one-voxel plate all surface, so a plate
    shifted along its normal has every surface distance equal to the shift (what the tests check).
    Array-edge voxels count as surface (outside is background), which also keeps a crop with a
    one-voxel margin, or the true array edge, exact.
    """
    b = np.zeros(labels.shape, dtype=bool)
    for ax in range(labels.ndim):
        lo = tuple(slice(0, -1) if a == ax else slice(None) for a in range(labels.ndim))
        hi = tuple(slice(1, None) if a == ax else slice(None) for a in range(labels.ndim))
        diff = labels[lo] != labels[hi]
        b[lo] |= diff
        b[hi] |= diff
        first = tuple(slice(0, 1) if a == ax else slice(None) for a in range(labels.ndim))
        last = tuple(slice(-1, None) if a == ax else slice(None) for a in range(labels.ndim))
        b[first] = True
        b[last] = True
    b &= labels != 0
    return b


def _points_mm(surface: np.ndarray, origin: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Physical coordinates (mm, relative to voxel 0) of the surface voxels of a cropped box."""
    return (np.argwhere(surface) + np.asarray(origin)) * np.asarray(spacing)


def _surface_points_by_class(labels: np.ndarray, spacing: Sequence[float]) -> dict[int, np.ndarray]:
    """Surface points (mm) of every class of a label volume, from one scan of the volume.

    One ``flatnonzero`` over the whole boundary map, then grouping by class, instead of a scan of
    each class's box: a stray blob far away makes that box the whole volume, ten times over.
    """
    flat = np.flatnonzero(_boundary(labels).ravel())
    cls = labels.ravel()[flat]
    order = np.argsort(cls, kind="stable")
    flat, cls = flat[order], cls[order]
    ids, starts = np.unique(cls, return_index=True)
    stops = np.append(starts[1:], cls.size)
    sp = np.asarray(spacing, dtype=float)
    return {
        int(c): np.stack(np.unravel_index(flat[a:b], labels.shape), axis=1) * sp
        for c, a, b in zip(ids, starts, stops, strict=True)
    }


def _hd95_points(pred_pts: np.ndarray, gt_pts: np.ndarray) -> float:
    """Symmetric HD95 of two surface point clouds (mm).

    A k-d tree gives each point's Euclidean distance to the nearest point of the other surface:
    the same numbers as ``distance_transform_edt(~surface, sampling=spacing)`` read at the other
    surface (MONAI's ``get_surface_distance``), but its cost follows the number of surface voxels,
    not the volume of their bounding box. With the EDT a single stray blob far from the structure
    made the box the whole scan, and a case took seconds to minutes (docs/performance.md).
    """
    d_pred_to_gt = cKDTree(gt_pts).query(pred_pts, k=1)[0]
    d_gt_to_pred = cKDTree(pred_pts).query(gt_pts, k=1)[0]
    return float(max(np.percentile(d_pred_to_gt, 95), np.percentile(d_gt_to_pred, 95)))


def hd95(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI's convention).

    Surface = mask XOR its erosion with the face-connected (6-neighbour in 3D) structuring element,
    array-edge voxels included (see ``_boundary``). The directed distances are, for every surface
    voxel of one mask, the Euclidean distance in mm to the nearest surface voxel of the other, i.e.
    ``distance_transform_edt(~surface_other, sampling=spacing)`` read on this surface, so
    anisotropic voxels are measured correctly (computed with a k-d tree, see ``_hd95_points``; the
    tests check the two agree). The result is the larger of the two directed 95th percentiles
    (``np.percentile``, linear interpolation), so a spurious blob in either mask is penalised.

    Either mask empty raises ``ValueError``: the distance to nothing is undefined (MONAI returns
    inf or NaN, neither of which survives JSON); the caller reports a missing structure instead.
    """
    pred, gt = _as_bool_pair(pred_mask, gt_mask)
    sp = _spacing(spacing, pred.ndim)
    pts = []
    for mask, which in ((pred, "prediction"), (gt, "ground truth")):
        bb = _mask_bbox(mask)
        if bb is None:
            raise ValueError(f"HD95 is undefined when the {which} mask is empty")
        box = _union_pad(bb, None, mask.shape, margin=1)
        surf = _boundary(mask[box])
        pts.append(_points_mm(surf, [s.start for s in box], sp))
    return _hd95_points(pts[0], pts[1])
