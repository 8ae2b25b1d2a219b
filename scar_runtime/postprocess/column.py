"""The steps of post-processing (the package docstring lists them), on one label volume."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.postprocess.chain import fit_curve, neighbour_cut, order_and_merge, radial_cut
from scar_runtime.postprocess.components import Element, kind_components, shrink, split_by_class
from scar_runtime.postprocess.config import PostprocessConfig, PostprocessReport
from scar_runtime.postprocess.naming import class_at, keypoints_inside, name_levels


def postprocess(labels: np.ndarray, spacing, keypoints_mm: dict[int, np.ndarray] | None = None,
                confidences: dict[int, float] | None = None,
                cfg: PostprocessConfig | None = None,
                in_view: np.ndarray | None = None) -> tuple[np.ndarray, PostprocessReport]:
    """Clean and name a working-layout label volume; returns ``(labels, report)``.

    ``keypoints_mm``: key-point index -> position in mm in the SAME frame as ``voxel * spacing``;
    ``report.keypoints_mm`` then holds them moved inside the structures of their name.
    ``confidences``: key-point index -> heatmap peak; key-points below
    ``cfg.min_keypoint_confidence`` do not vote on the level names.
    ``in_view``: (rows, cols), True where the grid holds image (a rotated copy of an image has
    filled corners, which are not field of view); default: everywhere.
    """
    cfg = cfg or PostprocessConfig()
    spacing = np.asarray(spacing, dtype=np.float64)
    report = PostprocessReport()
    kvox = {k: np.asarray(p, float) / spacing for k, p in (keypoints_mm or {}).items()
            if confidences is None or confidences.get(k, 0.0) >= cfg.min_keypoint_confidence}
    out, _ = _column(labels, spacing, cfg, report, kvox, in_view)
    if cfg.fill_holes:
        _fill_holes(out)
    _check_order(out, report)
    if keypoints_mm is not None:
        kvox = {k: np.asarray(p, float) / spacing for k, p in keypoints_mm.items()}
        moved, report.keypoint_moves = keypoints_inside(out, kvox, spacing)
        report.keypoints_mm = {k: v * spacing for k, v in moved.items()}
    return out, report


def _not_found(report: PostprocessReport, reason: str, shape) -> tuple[np.ndarray, list]:
    report.lumbar_spine_found = False
    report.reason = reason
    return np.zeros(shape, np.uint8), []


def _column(labels, spacing, cfg: PostprocessConfig, report: PostprocessReport,
            kvox: dict[int, np.ndarray], in_view: np.ndarray | None = None):
    floor_vox = cfg.min_component_mm3 / float(np.prod(spacing))
    els = kind_components(labels, spacing, floor_vox, report.removed)
    if not els:
        return _not_found(report, "no vertebral body or disc was predicted", labels.shape)
    els = _split_merged(els, labels, floor_vox)
    els = _drop_slivers(els, cfg, report)
    curve, inl = fit_curve(els)
    kept = []
    for e, ok in zip(els, inl, strict=True):
        cut = radial_cut(e, curve, cfg.column_radius_mm, labels)
        far = cut.voxels < floor_vox or curve.offset_mm(cut.centroid_mm) > cfg.max_offset_mm
        if far or not ok:
            report.removed.append(f"{_name(e)} ({e.voxels} voxels): off the spinal column")
            continue
        if cut.voxels < e.voxels:
            report.removed.append(f"{_name(e)}: {e.voxels - cut.voxels} voxels farther than "
                                  f"{cfg.column_radius_mm:.0f} mm from the column cut")
        kept.append(cut)
    kept = order_and_merge(kept, labels)
    kept = neighbour_cut(kept, labels, report.removed)
    kept = _cut_oversized(kept, cfg, labels, report)
    if not kept:
        return _not_found(report, "no structure lies on a spinal column", labels.shape)
    foot = max(e.box[0].stop for e in kept if e.kind != "sacrum") if any(
        e.kind != "sacrum" for e in kept) else 0
    lowest = max((e for e in kept if e.kind == "disc"), key=lambda e: e.centroid_mm[0],
                 default=None)
    col = (lowest.centroid_mm[1] / spacing[1] if lowest is not None
           else np.mean([e.centroid_mm[1] for e in kept]) / spacing[1])
    end = _view_end_row(labels.shape, in_view, col)
    below = ((end * spacing[0] - lowest.centroid_mm[0]) if lowest is not None
             else (end - foot) * spacing[0])
    naming = name_levels(kept, below_mm=below, kp_elements=_elements_of(kept, kvox, cfg))
    report.anchor, report.naming_confidence = naming.anchor, naming.confidence
    report.warnings += naming.warnings
    report.column_tilt_deg = _column_tilt_deg(kept)
    if report.column_tilt_deg is not None and report.column_tilt_deg > cfg.max_tilt_deg:
        report.warnings.append(
            f"the spine is tilted {report.column_tilt_deg:.0f} degrees in the image (the model "
            f"is trained on upright spines, up to ~{cfg.max_tilt_deg:.0f}): level names and "
            "outlines may be wrong; check the preview")
    out = np.zeros(labels.shape, np.uint8)
    named = []
    for e, p in zip(kept, naming.positions, strict=True):
        c = class_at(p)
        if c == 0:
            report.removed.append(f"{_name(e)} at position {p}: above T12 or below the sacrum "
                                  "(not a lumbar level)")
            continue
        top = int(e.votes.argmax())
        if top != c:
            report.corrections.append(f"{L.BY_ID[top].name} ({e.voxels} voxels) named "
                                      f"{L.BY_ID[c].name} by counting from the {naming.anchor}"
                                      if naming.anchor != "network classes" else
                                      f"{L.BY_ID[top].name} ({e.voxels} voxels) named "
                                      f"{L.BY_ID[c].name} (level order)")
        region = out[e.box]
        region[e.mask] = c
        named.append((e, c))
    reason = _implausible([(e, c) for e, c in named if c in L.LUMBAR_IDS], cfg)
    if reason:
        report.removed.append(f"all structures: {reason}")
        return _not_found(report, reason, labels.shape)
    return out, [e for e, _ in named]


def _view_end_row(shape, in_view: np.ndarray | None, col: float) -> int:
    """One past the lowest image row in column ``col`` (the field of view's lower edge)."""
    if in_view is None:
        return int(shape[0])
    c = int(np.clip(round(col), 0, in_view.shape[1] - 1))
    rows = np.flatnonzero(in_view[:, c])
    return int(rows[-1]) + 1 if len(rows) else int(shape[0])


def _column_tilt_deg(els: list[Element]) -> float | None:
    """Tilt of the column in the sagittal plane (working axes 0 = head-feet, 1 = front-back):
    the chord from the highest to the lowest body or disc, in mm."""
    pts = sorted((e.centroid_mm for e in els if e.kind != "sacrum"), key=lambda c: c[0])
    if len(pts) < 2:
        return None
    d = np.asarray(pts[-1]) - np.asarray(pts[0])
    return round(float(np.degrees(np.arctan2(abs(d[1]), abs(d[0])))), 1)


def _elements_of(els: list[Element], kvox: dict[int, np.ndarray],
                 cfg: PostprocessConfig) -> dict[int, int]:
    """Key-point index -> index of the element it lies in (or within keypoint_reach_mm of)."""
    out = {}
    for k, p in kvox.items():
        best, best_d = None, cfg.keypoint_reach_mm
        for i, e in enumerate(els):
            local = np.round(p).astype(int) - [b.start for b in e.box]
            if all(0 <= v < n for v, n in zip(local, e.mask.shape, strict=True)) and \
                    e.mask[tuple(local)]:
                best = i
                break
            pts = np.argwhere(e.mask)
            if not len(pts):
                continue
            d = float(np.min(np.linalg.norm((pts - local) * e.spacing, axis=1)))
            if d < best_d:
                best, best_d = i, d
        if best is not None:
            out[k] = best
    return out


def _median_heights(els: list[Element]) -> dict[str, float]:
    # typical heights (mm) when fewer than 3 of a kind are found
    out = {"vertebra": 30.0, "disc": 10.0, "sacrum": 40.0}
    for kind in out:
        h = [e.si_range_mm[1] - e.si_range_mm[0] for e in els if e.kind == kind]
        if len(h) >= 3:
            out[kind] = float(np.median(h))
    return out


def _split_merged(els: list[Element], labels, floor_vox: float) -> list[Element]:
    """A structure far taller than the others of its kind is two or more merged (the disc
    between two bodies was missed): split it by the classes the network gave it. A structure of
    normal height with mixed classes is ONE structure the network was unsure about: kept."""
    heights = _median_heights(els)
    out = []
    for e in els:
        h = e.si_range_mm[1] - e.si_range_mm[0]
        out += (split_by_class(e, labels, floor_vox, min_share=0.1)
                if h > 1.5 * heights[e.kind] else [e])
    return out


def _drop_slivers(els: list[Element], cfg: PostprocessConfig,
                  report: PostprocessReport) -> list[Element]:
    """Pieces far smaller than the typical structure of their kind (a lateral sliver of a disc)
    would count as a level of their own along the column: they go."""
    out = []
    for kind in ("vertebra", "disc", "sacrum"):
        same = [e for e in els if e.kind == kind]
        if len(same) < 3:
            out += same
            continue
        med = float(np.median([e.voxels for e in same]))
        for e in same:
            if e.voxels < cfg.min_size_share * med:
                report.removed.append(f"{_name(e)} ({e.voxels} voxels): a sliver, "
                                      f"< {cfg.min_size_share:.0%} of the median {kind}")
            else:
                out.append(e)
    return out


def _implausible(lumbar: list[tuple[Element, int]], cfg: PostprocessConfig) -> str | None:
    if len(lumbar) < cfg.min_lumbar_structures:
        return (f"only {len(lumbar)} lumbar structure(s) along a spinal column "
                f"(at least {cfg.min_lumbar_structures} needed)")
    steps = []
    for kind_ids in (L.VERTEBRA_IDS, L.DISC_IDS):
        cs = sorted((c, e.centroid_mm) for e, c in lumbar if c in kind_ids)
        steps += [float(np.linalg.norm(b[1] - a[1])) / (b[0] - a[0])
                  for a, b in zip(cs, cs[1:], strict=False)]
    if steps and np.median(steps) < cfg.min_level_spacing_mm:
        return (f"consecutive levels are {np.median(steps):.0f} mm apart, lumbar ones "
                f">= {cfg.min_level_spacing_mm:.0f} mm; not a lumbar spine?")
    bodies = [e.sagittal_area_mm2 for e, c in lumbar if c in L.VERTEBRA_IDS]
    discs = [e.sagittal_area_mm2 for e, c in lumbar if c in L.DISC_IDS]
    if bodies and np.median(bodies) < cfg.min_body_area_mm2:
        return (f"vertebral bodies of {np.median(bodies):.0f} mm^2 sagittal area are too small "
                f"for lumbar ones (>= {cfg.min_body_area_mm2:.0f}); not a lumbar spine?")
    if not bodies and discs and np.median(discs) < cfg.min_disc_area_mm2:
        return (f"discs of {np.median(discs):.0f} mm^2 sagittal area are too small for lumbar "
                "ones; not a lumbar spine?")
    return None


def _cut_oversized(els: list[Element], cfg: PostprocessConfig, labels,
                   report: PostprocessReport) -> list[Element]:
    """A structure far larger than the median of its kind is cut back to a box of the median's
    height around the column at its centre; it is dropped if it is still too large."""
    out = []
    for kind in ("vertebra", "disc"):
        same = [e for e in els if e.kind == kind]
        if len(same) < 3:
            continue
        med = float(np.median([e.voxels for e in same]))
        heights = [e.si_range_mm[1] - e.si_range_mm[0] for e in same]
        h = float(np.median(heights))
        for e in same:
            if e.voxels <= cfg.max_size_ratio * med:
                continue
            c = e.centroid_mm[0]
            rows = np.arange(e.box[0].start, e.box[0].stop) * e.spacing[0]
            keep = np.broadcast_to((np.abs(rows - c) <= 0.75 * h)[:, None, None], e.mask.shape)
            cut = shrink(e, keep, labels)
            report.removed.append(f"{_name(e)}: {e.voxels} voxels, {e.voxels / med:.1f}x the "
                                  f"median {kind}; cut to {cut.voxels}")
            e.mask, e.box, e.votes = cut.mask, cut.box, cut.votes
    for e in els:
        if e.voxels:
            out.append(e)
    return out


def _name(e: Element) -> str:
    return f"{e.kind} predicted {L.BY_ID[int(e.votes.argmax())].name}" if e.voxels else e.kind


def _fill_holes(out: np.ndarray) -> None:
    boxes = ndimage.find_objects(out, max_label=L.NUM_CLASSES - 1)
    for c, box in enumerate(boxes, start=1):
        if box is None:
            continue
        region = out[box]
        filled = ndimage.binary_fill_holes(region == c)
        region[filled & (region == 0)] = c


def _mean_row(mask: np.ndarray) -> float:
    counts = mask.sum(axis=tuple(range(1, mask.ndim)), dtype=np.int64)
    return float((counts * np.arange(len(counts))).sum() / counts.sum())


def _check_order(out: np.ndarray, report: PostprocessReport) -> None:
    """Report structures whose head-feet position contradicts T12, T12/L1, L1, ..., S1."""
    boxes = ndimage.find_objects(out, max_label=L.NUM_CLASSES - 1)
    rows = {c: _mean_row(out[box] == c) + box[0].start
            for c, box in enumerate(boxes, start=1) if box is not None}
    present = [c for c in L.CRANIOCAUDAL_ORDER_ALL if c in rows]
    for a, b in zip(present, present[1:], strict=False):
        if rows[a] >= rows[b]:  # axis 0 runs superior -> inferior in the working layout
            report.order_warnings.append(
                f"{L.BY_ID[a].name} is not above {L.BY_ID[b].name}")
