"""The spinal column in a 3D result: a smooth curve through the structures, cranial to caudal.

In the working layout axis 0 runs superior->inferior, axis 1 anterior->posterior, axis 2 is the
sagittal slice axis. The column is modelled as two smooth functions of the head-feet position
``s``: its antero-posterior position ``ap(s)`` (quadratic: the lumbar lordosis) and its left-right
position ``lr(s)`` (linear: a mild tilt). It is fitted to the structures' centroids robustly
(weights capped at twice the median size, so one huge false blob cannot pull it; outliers
dropped in rounds of shrinking tolerance), and then:

- every structure is cut to the voxels within ``radius_mm`` of the curve at their own height
  (a disc that leaked over the background keeps only its part on the column) and dropped when
  its centre is off the curve;
- the structures are ordered by height; consecutive pieces of one kind that overlap in height
  are merged (one structure seen in two pieces), and each structure is cut to the height range
  between its neighbours' centres (a body cannot reach past the next disc's centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .components import Element, shrink, union


@dataclass(frozen=True)
class Curve:
    ap: np.ndarray  # polynomial coefficients (np.polyval) of AP mm as a function of SI mm
    lr: np.ndarray

    def offset_mm(self, centroid_mm: np.ndarray) -> float:
        s, a, r = centroid_mm
        return float(np.hypot(a - np.polyval(self.ap, s), r - np.polyval(self.lr, s)))


def _fit(points: np.ndarray, weights: np.ndarray) -> Curve:
    n = len(points)
    s, a, r = points.T
    w = np.sqrt(weights)
    ap = np.polyfit(s, a, min(2, n - 1), w=w) if n > 1 else np.array([a[0]])
    lr = np.polyfit(s, r, min(1, n - 1), w=w) if n > 1 else np.array([r[0]])
    return Curve(ap, lr)


def fit_curve(elements: list[Element]) -> tuple[Curve | None, list[bool]]:
    """Robust fit; returns the curve and which elements are inliers.

    Each round judges every element against the curve fitted to the OTHER inliers (leave one
    out): a quadratic is free to bend towards a false blob at the end of the column, and would
    then call it an inlier. Tolerances shrink round by round.
    """
    if not elements:
        return None, []
    pts = np.array([e.centroid_mm for e in elements])
    vox = np.array([e.voxels for e in elements], float)
    w = np.minimum(vox, 2 * np.median(vox))
    # start from the weighted median position (a constant curve)
    order = np.argsort(pts[:, 1])
    med_ap = pts[order[np.searchsorted(np.cumsum(w[order]), w.sum() / 2)], 1]
    order = np.argsort(pts[:, 2])
    med_lr = pts[order[np.searchsorted(np.cumsum(w[order]), w.sum() / 2)], 2]
    start = Curve(np.array([med_ap]), np.array([med_lr]))
    inl = np.array([start.offset_mm(p) <= 60.0 for p in pts])
    if not inl.any():
        inl[:] = True
    for tol in (45.0, 30.0, 20.0):
        off = np.empty(len(pts))
        for i in range(len(pts)):
            others = inl.copy()
            others[i] = False
            ref = _fit(pts[others], w[others]) if others.sum() >= 2 else _fit(pts[inl], w[inl])
            off[i] = ref.offset_mm(pts[i])
        new = off <= tol
        if not new.any():
            break
        inl = new
    return _fit(pts[inl], w[inl]), list(inl)


def radial_cut(el: Element, curve: Curve, radius_mm: float, labels: np.ndarray) -> Element:
    """Keep the voxels of ``el`` within ``radius_mm`` of the curve at their own height."""
    sp = el.spacing
    rows = (np.arange(el.box[0].start, el.box[0].stop) * sp[0])
    ap_c = np.polyval(curve.ap, rows)[:, None, None]
    lr_c = np.polyval(curve.lr, rows)[:, None, None]
    cols = (np.arange(el.box[1].start, el.box[1].stop) * sp[1])[None, :, None]
    sl = (np.arange(el.box[2].start, el.box[2].stop) * sp[2])[None, None, :]
    d2 = (cols - ap_c) ** 2 + (sl - lr_c) ** 2
    keep = d2 <= radius_mm**2
    if keep[el.mask].all():
        return el
    return shrink(el, keep, labels)


def height_cut(el: Element, lo_mm: float, hi_mm: float, labels: np.ndarray) -> Element:
    rows = np.arange(el.box[0].start, el.box[0].stop) * el.spacing[0]
    keep = ((rows >= lo_mm) & (rows <= hi_mm))[:, None, None]
    keep = np.broadcast_to(keep, el.mask.shape)
    if keep[el.mask].all():
        return el
    return shrink(el, keep, labels)


# Two pieces of one kind whose centres are closer than this in height are one structure seen
# in two pieces (levels are ~37 mm apart; a disc ~10 mm, a body ~30 mm tall).
SAME_LEVEL_MM = 12.0


def order_and_merge(elements: list[Element], labels: np.ndarray) -> list[Element]:
    """Sort by height; merge consecutive same-kind elements that overlap in height by more
    than half of the shorter one, or whose centres are within SAME_LEVEL_MM in height."""
    els = sorted(elements, key=lambda e: e.centroid_mm[0])
    out: list[Element] = []
    for e in els:
        if out and out[-1].kind == e.kind:
            a0, a1 = out[-1].si_range_mm
            b0, b1 = e.si_range_mm
            overlap = min(a1, b1) - max(a0, b0)
            close = abs(out[-1].centroid_mm[0] - e.centroid_mm[0]) < SAME_LEVEL_MM
            if close or overlap > 0.5 * min(a1 - a0, b1 - b0):
                out[-1] = union(out[-1], e, labels)
                continue
        out.append(e)
    return out


def neighbour_cut(els: list[Element], labels: np.ndarray, removed: list[str]) -> list[Element]:
    """Each element cut to the height between its neighbours' centres (the end elements: as far
    beyond their own centre as their one neighbour is, except the sacrum's lower side)."""
    if len(els) < 2:
        return els
    c = [e.centroid_mm[0] for e in els]
    out = []
    for i, e in enumerate(els):
        lo = c[i - 1] if i > 0 else c[0] - (c[1] - c[0])
        hi = c[i + 1] if i + 1 < len(els) else (np.inf if e.kind == "sacrum"
                                               else c[i] + (c[i] - c[i - 1]))
        cut = height_cut(e, lo, hi, labels)
        if cut.voxels < e.voxels:
            removed.append(f"{e.kind} at {c[i]:.0f} mm: {e.voxels - cut.voxels} voxels beyond "
                           "its neighbours' centres cut")
        if cut.voxels:
            out.append(cut)
    return out
