"""Centroids, key-point errors and level identification (world mm)."""

from __future__ import annotations

import numpy as np

from scar_runtime.evaluation.metrics.masks import (
    _affine,
    _centroid_in_box,
    _check_labels,
    _class_slices,
    _to_world,
)

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
