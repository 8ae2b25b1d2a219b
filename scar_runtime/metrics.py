"""Segmentation and level-identification metrics for one case and for a set of cases.

Everything here works on numpy arrays (model class ids 0..10, see ``labels.py``) plus the voxel
spacing or the voxel->world affine, so it serves ``scar evaluate``, the benchmarks and the training
validation loop alike without reading files and without torch.

Partial labels are the normal case with public spine data (a set labels only vertebrae, or only
discs). A structure absent from the ground truth is therefore *not labelled*: unknown, not
background. It is reported as ``NOT_LABELLED`` with ``None`` metrics and never scored as 0 or 1,
and it is left out of every mean. A structure present in the ground truth is labelled, and then
every voxel of the volume is known to be either that structure or not.

Speed: each label volume is scanned once for bounding boxes (``scipy.ndimage.find_objects``)
and once for surfaces; per-structure work then happens on the union bounding box of prediction
and ground truth, and surface distances on surface points only, so a stray blob far from its
structure cannot make a case slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .labels import BY_ID, DISC_IDS, NUM_CLASSES, STRUCTURES, VERTEBRA_IDS

NOT_LABELLED = "not labelled"
# The other two values of StructureScore.status: scored normally / labelled but not predicted.
STATUS_OK = "ok"
STATUS_MISSING = "missing"

Slices = tuple[slice, ...]

__all__ = [
    "NOT_LABELLED",
    "CaseScore",
    "StructureScore",
    "centroids",
    "dice",
    "evaluate_case",
    "hd95",
    "keypoint_errors",
    "level_identification",
    "summarize",
]


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
    return affine[:3, :3] @ ijk + affine[:3, 3]


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
    made the box the whole scan (measured: 12 s for a 381x381x76 case, 85 s for 512x512x200).
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


# --------------------------------------------------------------------------------------------
# Centroids, key-points and level identification
# --------------------------------------------------------------------------------------------


def centroids(labels: np.ndarray, affine: np.ndarray) -> dict[int, np.ndarray]:
    """World-mm centroid (3,) of every model class present in ``labels`` (background excluded).

    Voxel centres are at integer indices (the NIfTI convention), mapped through ``affine``.
    Classes absent from the array are absent from the dict, so "missing" stays distinguishable
    from any coordinate.
    """
    arr = _check_labels(labels, "labels")
    aff = _affine(affine)
    return {
        cid: _to_world(_centroid_in_box(arr, cid, sl), aff)
        for cid, sl in _class_slices(arr).items()
    }


def keypoint_errors(
    pred: dict[int, np.ndarray], gt: dict[int, np.ndarray]
) -> dict[int, float]:
    """Euclidean distance (mm) between predicted and true points, for ids present in both.

    Ids in ``gt`` but not in ``pred`` are omitted (not NaN, not inf): a missed structure is a
    detection failure, which the caller reports by comparing the keys, not a huge distance that
    would swamp a mean. Ids only in ``pred`` have nothing to compare with and are ignored.
    """
    return {
        int(k): float(np.linalg.norm(np.asarray(pred[k], float) - np.asarray(g, float)))
        for k, g in gt.items()
        if k in pred
    }


def level_identification(
    pred_centroids: dict[int, np.ndarray],
    gt_centroids: dict[int, np.ndarray],
    max_distance_mm: float = 20.0,
) -> dict[int, bool]:
    """Per ground-truth structure: is its level identified correctly?

    Identified when the structure has a predicted centroid, the ground-truth centroid nearest to
    it is that same structure's (so a prediction labelled L3 sitting on the true L4 fails, which
    Dice alone reports only as a poor overlap), and it lies less than ``max_distance_mm`` from it.
    A tie between two ground-truth centroids counts as not identified, because the level is then
    ambiguous. The distance threshold follows the usual 20 mm of vertebra-labelling benchmarks
    (VerSe), below a lumbar vertebra's height, so an off-by-one level cannot pass.
    """
    ids = list(gt_centroids)
    if not ids:
        return {}
    gt_pts = np.stack([np.asarray(gt_centroids[k], float) for k in ids])
    result: dict[int, bool] = {}
    for i, k in enumerate(ids):
        if k not in pred_centroids:
            result[int(k)] = False
            continue
        d = np.linalg.norm(gt_pts - np.asarray(pred_centroids[k], float), axis=1)
        others = np.delete(d, i)
        nearest_is_own = others.size == 0 or bool(d[i] < others.min())
        result[int(k)] = bool(nearest_is_own and d[i] < max_distance_mm)
    return result


# --------------------------------------------------------------------------------------------
# Per-case scoring
# --------------------------------------------------------------------------------------------


def _opt_float(x: float | None) -> float | None:
    return None if x is None else float(x)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass
class StructureScore:
    """Scores of one structure in one case.

    ``labelled`` False (structure absent from the ground truth): every metric is ``None``;
    ``pred_present`` still says whether the model produced it. Labelled but absent from the
    prediction: ``dice_3d`` 0.0, ``identified`` False, ``hd95_mm`` and ``centroid_error_mm`` None
    (undefined distances). ``dice_2d_mid`` is the Dice on the mid-sagittal slice: None when the
    structure is not labelled or is on neither the ground truth's nor the prediction's mid slice
    (nothing to compare); 0.0 when only one of them has it there.
    """

    class_id: int
    name: str
    labelled: bool
    dice_3d: float | None
    dice_2d_mid: float | None
    hd95_mm: float | None
    centroid_error_mm: float | None
    identified: bool | None
    pred_present: bool

    @property
    def kind(self) -> str:
        return BY_ID[self.class_id].kind

    @property
    def status(self) -> str:
        """``"ok"``, ``"missing"`` (labelled, not predicted) or ``NOT_LABELLED``."""
        if not self.labelled:
            return NOT_LABELLED
        return STATUS_OK if self.pred_present else STATUS_MISSING

    def to_dict(self) -> dict:
        return {
            "class_id": int(self.class_id),
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "labelled": bool(self.labelled),
            "pred_present": bool(self.pred_present),
            "dice_3d": _opt_float(self.dice_3d),
            "dice_2d_mid": _opt_float(self.dice_2d_mid),
            "hd95_mm": _opt_float(self.hd95_mm),
            "centroid_error_mm": _opt_float(self.centroid_error_mm),
            "identified": None if self.identified is None else bool(self.identified),
        }


@dataclass
class CaseScore:
    """All structures of one case, with means over the labelled ones only.

    Means are None when nothing of that kind is labelled, so a discs-only case never reports a
    vertebra score and a partially labelled case is never diluted by invented zeros.
    """

    name: str
    structures: list[StructureScore] = field(default_factory=list)

    def _labelled(self, ids: Sequence[int] | None = None) -> list[StructureScore]:
        return [s for s in self.structures if s.labelled and (ids is None or s.class_id in ids)]

    @property
    def mean_vertebra_dice(self) -> float | None:
        return _mean([s.dice_3d for s in self._labelled(VERTEBRA_IDS)])

    @property
    def mean_disc_dice(self) -> float | None:
        return _mean([s.dice_3d for s in self._labelled(DISC_IDS)])

    @property
    def mean_dice(self) -> float | None:
        """Mean over every labelled structure (each structure counts once, VB and IVD alike)."""
        return _mean([s.dice_3d for s in self._labelled()])

    @property
    def identification_rate(self) -> float | None:
        lab = self._labelled()
        return float(sum(bool(s.identified) for s in lab) / len(lab)) if lab else None

    def structure(self, key: int | str) -> StructureScore:
        """Look a structure up by class id or level name ("L3", "L4/L5")."""
        for s in self.structures:
            if s.class_id == key or s.name == key:
                return s
        raise KeyError(key)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "structures": [s.to_dict() for s in self.structures],
            "n_labelled": len(self._labelled()),
            "mean_vertebra_dice": self.mean_vertebra_dice,
            "mean_disc_dice": self.mean_disc_dice,
            "mean_dice": self.mean_dice,
            "identification_rate": self.identification_rate,
        }


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    affine: np.ndarray,
    name: str = "",
    mid_slice: int | None = None,
) -> CaseScore:
    """Score a predicted label volume against a (possibly partial) ground truth.

    ``pred`` and ``gt`` are model class ids on the same grid, axis 2 the sagittal slice axis.
    ``spacing`` (mm per axis) is used for HD95 and ``affine`` for centroids (world mm); they are
    passed separately because a caller may hold either, but they should agree. ``mid_slice``
    defaults to ``shape[2] // 2``, the mid-sagittal slice that 2D lumbar studies score.

    Level identification compares every labelled structure's predicted centroid with the
    centroids of all labelled ground-truth structures (vertebrae and discs together).
    """
    pred = _check_labels(pred, "prediction")
    gt = _check_labels(gt, "ground truth")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    sp = _spacing(spacing, 3)
    aff = _affine(affine)
    mid = gt.shape[2] // 2 if mid_slice is None else int(mid_slice)
    if not 0 <= mid < gt.shape[2]:
        raise ValueError(f"mid_slice {mid} outside 0..{gt.shape[2] - 1}")

    pred_sl = _class_slices(pred)
    gt_sl = _class_slices(gt)
    pred_c = {k: _to_world(_centroid_in_box(pred, k, s), aff) for k, s in pred_sl.items()}
    gt_c = {k: _to_world(_centroid_in_box(gt, k, s), aff) for k, s in gt_sl.items()}
    ident = level_identification(pred_c, gt_c)
    kp_err = keypoint_errors(pred_c, gt_c)
    # Surfaces of every class in one pass per volume (only needed where something is labelled).
    needed = bool(set(gt_sl) & set(pred_sl))
    pred_surf = _surface_points_by_class(pred, sp) if needed else {}
    gt_surf = _surface_points_by_class(gt, sp) if needed else {}

    scores: list[StructureScore] = []
    for st in STRUCTURES:
        cid = st.model_id
        present = cid in pred_sl
        if cid not in gt_sl:
            scores.append(StructureScore(cid, st.name, False, None, None, None, None, None,
                                         present))
            continue
        box = _union_pad(pred_sl.get(cid), gt_sl[cid], gt.shape, margin=0)
        g = gt[box] == cid
        p = pred[box] == cid if present else np.zeros_like(g)
        d3 = dice(p, g)
        k = mid - box[2].start
        d2 = None
        if 0 <= k < g.shape[2] and (g[:, :, k].any() or p[:, :, k].any()):
            d2 = dice(p[:, :, k], g[:, :, k])
        h = _hd95_points(pred_surf[cid], gt_surf[cid]) if present else None
        scores.append(StructureScore(cid, st.name, True, d3, d2, h, kp_err.get(cid),
                                     ident[cid], present))
    return CaseScore(name=name, structures=scores)


# --------------------------------------------------------------------------------------------
# Across cases
# --------------------------------------------------------------------------------------------


def summarize(cases: list[CaseScore]) -> dict:
    """Aggregate case scores into one JSON-able dict.

    Per structure: means over the cases where it is labelled, with ``n`` (labelled cases) and
    ``n_missing`` (labelled but not predicted). HD95 and centroid error exist only where the
    structure was predicted, so their means carry their own ``n_hd95`` / ``n_centroid``; read
    them with ``n_missing`` beside them. The pooled VB / IVD / overall Dice and the identification
    rate weigh every labelled (case, structure) pair equally; None where nothing was labelled.
    """
    per: dict[str, dict] = {}
    pooled: dict[int, list[StructureScore]] = {s.model_id: [] for s in STRUCTURES}
    for case in cases:
        for s in case.structures:
            if s.labelled:
                pooled.setdefault(s.class_id, []).append(s)
    for st in STRUCTURES:
        items = pooled[st.model_id]
        d2 = [s.dice_2d_mid for s in items if s.dice_2d_mid is not None]
        hd = [s.hd95_mm for s in items if s.hd95_mm is not None]
        ce = [s.centroid_error_mm for s in items if s.centroid_error_mm is not None]
        per[st.name] = {
            "class_id": st.model_id,
            "kind": st.kind,
            "n": len(items),
            "status": NOT_LABELLED if not items else STATUS_OK,
            "n_missing": sum(not s.pred_present for s in items),
            "dice_3d": _mean([s.dice_3d for s in items]),
            "dice_2d_mid": _mean(d2),
            "n_dice_2d_mid": len(d2),
            "hd95_mm": _mean(hd),
            "n_hd95": len(hd),
            "centroid_error_mm": _mean(ce),
            "n_centroid": len(ce),
            "identification_rate": _mean([float(bool(s.identified)) for s in items]),
        }

    def pooled_dice(ids: Sequence[int]) -> float | None:
        return _mean([s.dice_3d for i in ids for s in pooled[i]])

    all_items = [s for i in pooled for s in pooled[i]]
    return {
        "n_cases": len(cases),
        "cases": [c.name for c in cases],
        "structures": per,
        "mean_vertebra_dice": pooled_dice(VERTEBRA_IDS),
        "n_vertebra": sum(len(pooled[i]) for i in VERTEBRA_IDS),
        "mean_disc_dice": pooled_dice(DISC_IDS),
        "n_disc": sum(len(pooled[i]) for i in DISC_IDS),
        "mean_dice": pooled_dice(list(pooled)),
        "identification_rate": _mean([float(bool(s.identified)) for s in all_items]),
        "n_labelled": len(all_items),
    }


# --------------------------------------------------------------------------------------------
# False positives far from the spine and implausible sizes (judged whatever a set labels)
# --------------------------------------------------------------------------------------------

#: A predicted lumbar voxel farther than this from every labelled structure is a far false
#: positive (the hidden hold-out showed "L5/S1" painted over the background 20+ mm away).
FAR_FP_MARGIN_MM = 20.0
#: For key-point references (centres, not extents) the margin grows by about half a body's
#: diagonal: a voxel of a correctly predicted L3 lies up to ~25 mm from L3's centre.
KEYPOINT_EXTENT_MM = 25.0


def far_false_positive_share(pred: np.ndarray, reference: np.ndarray,
                             spacing: Sequence[float], *, margin_mm: float = FAR_FP_MARGIN_MM,
                             classes: Sequence[int] = tuple(VERTEBRA_IDS + DISC_IDS)) -> float:
    """Share of predicted voxels of ``classes`` lying more than ``margin_mm`` from every True
    voxel of ``reference`` (every structure the case labels, of ANY kind or level: a disc
    predicted over a vertebra-only case's background counts here though Dice cannot see it).

    0.0 when nothing of ``classes`` is predicted; 1.0 when something is predicted and the
    reference is empty. The distance transform runs on the bounding box of prediction and
    reference only (exact: every nearest reference voxel lies inside it).
    """
    predicted = np.isin(pred, list(classes))
    n = int(predicted.sum())
    if n == 0:
        return 0.0
    reference = np.asarray(reference, bool)
    if not reference.any():
        return 1.0
    box = ndimage.find_objects((predicted | reference).astype(np.uint8))[0]
    dist = ndimage.distance_transform_edt(~reference[box], sampling=tuple(spacing))
    return float((predicted[box] & (dist > margin_mm)).sum() / n)


def keypoint_reference_far_share(pred: np.ndarray, points_vox: Sequence[Sequence[float]],
                                 spacing: Sequence[float], *,
                                 margin_mm: float = FAR_FP_MARGIN_MM,
                                 extent_mm: float = KEYPOINT_EXTENT_MM,
                                 classes: Sequence[int] = tuple(VERTEBRA_IDS + DISC_IDS)
                                 ) -> float:
    """:func:`far_false_positive_share` for a case whose reference is annotated centres (voxel
    coordinates of ``pred``'s grid): far = more than ``margin_mm + extent_mm`` from every
    centre."""
    predicted = np.argwhere(np.isin(pred, list(classes)))
    if not len(predicted):
        return 0.0
    if not len(points_vox):
        return 1.0
    sp = np.asarray(spacing, float)
    d, _ = cKDTree(np.asarray(points_vox, float) * sp).query(predicted * sp)
    return float((d > margin_mm + extent_mm).mean())


def size_outlier_ratio(pred: np.ndarray) -> float | None:
    """Largest (structure volume / median volume of its kind) over the lumbar structures present;
    a disc grown over the background reads 10x and more. None when nothing is predicted."""
    counts = np.bincount(np.asarray(pred, np.intp).ravel(), minlength=NUM_CLASSES)
    ratios = []
    for ids in (VERTEBRA_IDS, DISC_IDS):
        v = np.array([counts[i] for i in ids if counts[i] > 0], float)
        if len(v):
            ratios.append(float(v.max() / np.median(v)))
    return max(ratios) if ratios else None
