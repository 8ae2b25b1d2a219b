"""The supervision targets of one training crop (see ``data.py``): key-point heatmaps and the
centroids they are drawn at, the gap weight map of the cross-entropy, and the distance to
annotated key-points on key-point-only cases."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.evaluation.metrics import KEYPOINT_EXTENT_MM

HEATMAP_STRIDE = 4
# A key-point is a structure's centre, not its extent: distances from key-points are reduced by
# KEYPOINT_EXTENT_MM (about half a vertebral body's diagonal; the runtime's far-FP measure uses
# the same) before they are compared with the loss margins.
# Distances are only compared with margins below this; clipping keeps them in float16.
DISTANCE_CLIP_MM = 200.0


def gaussian_heatmaps(points: dict[int, tuple[float, float]], shape: tuple[int, int],
                      sigma_px: float) -> np.ndarray:
    """(10, H/4, W/4) heatmaps: a unit-peak Gaussian at each point (input pixel coords)."""
    h, w = shape[0] // HEATMAP_STRIDE, shape[1] // HEATMAP_STRIDE
    # heatmap cell i covers input pixels 4i..4i+3, centre 4i + 1.5 (matches the model's decoding)
    ys = np.arange(h) * HEATMAP_STRIDE + (HEATMAP_STRIDE - 1) / 2
    xs = np.arange(w) * HEATMAP_STRIDE + (HEATMAP_STRIDE - 1) / 2
    out = np.zeros((L.NUM_KEYPOINTS, h, w), dtype=np.float32)
    for k, (r, c) in points.items():
        gy = np.exp(-((ys - r) ** 2) / (2 * sigma_px**2))
        gx = np.exp(-((xs - c) ** 2) / (2 * sigma_px**2))
        out[k] = gy[:, None] * gx[None, :]
    return out


def centroids_2d(labels: np.ndarray, classes) -> dict[int, tuple[float, float]]:
    """Key-point index -> (row, col) centroid for each of ``classes`` present in ``labels``."""
    flat = labels.ravel().astype(np.intp)
    counts = np.bincount(flat, minlength=L.NUM_CLASSES)
    rows, cols = np.indices(labels.shape)
    sum_r = np.bincount(flat, weights=rows.ravel(), minlength=L.NUM_CLASSES)
    sum_c = np.bincount(flat, weights=cols.ravel(), minlength=L.NUM_CLASSES)
    return {L.keypoint_index(c): (sum_r[c] / counts[c], sum_c[c] / counts[c])
            for c in classes if c in L.LUMBAR_IDS and counts[c] > 0}


# Bone-like and disc-like classes, for the gap between them (anchors included), from the label map.
_BODY_LIKE = np.array([s.model_id for s in L.ALL_STRUCTURES if s.kind in ("vertebra", "sacrum")])
_DISC_LIKE = np.array([s.model_id for s in L.ALL_STRUCTURES if s.kind == "disc"])


def gap_weight_map(labels: np.ndarray, mm_per_px: float, weight: float,
                   sigma_mm: float) -> np.ndarray:
    """(H, W) cross-entropy weights ``1 + weight * exp(-(d_body + d_disc)^2 / (2 sigma^2))`` on
    background pixels, 1 elsewhere (U-Net's weight map, Ronneberger et al. 2015, with the two
    nearest "cells" read as the nearest body and the nearest disc).

    Why: SPIDER-style masks leave a 1-3 mm background gap between each disc and its endplates.
    Its pixels are ~1% of a crop, so plain cross-entropy hardly sees them, and v2 drew the discs
    7-55% too large there, on train cases as on val. Only for masks that label both kinds: where
    one kind is unlabelled the gap is unknown, not background.
    """
    body = np.isin(labels, _BODY_LIKE)
    disc = np.isin(labels, _DISC_LIKE)
    out = np.ones(labels.shape, np.float32)
    if weight <= 0 or not body.any() or not disc.any():
        return out
    d_body = ndimage.distance_transform_edt(~body) * mm_per_px
    d_disc = ndimage.distance_transform_edt(~disc) * mm_per_px
    gap = labels == 0
    out[gap] += weight * np.exp(-((d_body[gap] + d_disc[gap]) ** 2) / (2 * sigma_mm**2))
    return out


def distance_to_points(points: list[np.ndarray], shape: tuple[int, int],
                       mm_per_px: float) -> np.ndarray:
    """(H, W) mm from each pixel to the nearest key-point, less KEYPOINT_EXTENT_MM (>= 0)."""
    if not points:
        return np.full(shape, DISTANCE_CLIP_MM, np.float32)
    rows, cols = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]
    d2 = np.full(shape, np.inf)
    for r, c in points:
        d2 = np.minimum(d2, (rows - r) ** 2 + (cols - c) ** 2)
    d = np.sqrt(d2) * mm_per_px - KEYPOINT_EXTENT_MM
    return np.clip(d, 0, DISTANCE_CLIP_MM).astype(np.float32)
