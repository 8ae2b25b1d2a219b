"""Per-case scores over partial labels, and their aggregation across cases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scar_runtime.evaluation.metrics.masks import (
    _affine,
    _centroid_in_box,
    _check_labels,
    _class_slices,
    _hd95_points,
    _spacing,
    _surface_points_by_class,
    _to_world,
    _union_pad,
    dice,
)
from scar_runtime.evaluation.metrics.points import keypoint_errors, level_identification
from scar_runtime.labels import BY_ID, DISC_IDS, STRUCTURES, VERTEBRA_IDS

NOT_LABELLED = "not labelled"
# The other two values of StructureScore.status: scored normally / labelled but not predicted.
STATUS_OK = "ok"
STATUS_MISSING = "missing"

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
