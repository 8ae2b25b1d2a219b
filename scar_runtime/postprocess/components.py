"""Structures of a predicted label volume: connected components of each KIND of structure.

Components are taken per kind (every vertebral-body class together, every disc class together,
the sacrum), not per class: a body the network half-called "L2" and half "L3" is one body, and
what it is called is decided later by counting along the column (``naming.py``). The classes the
network predicted inside a component are kept as votes.

Memory stays near one bool copy of each kind's bounding box: sizes, boxes and centroids come from
``cc3d.statistics`` (no coordinate arrays, which cost 24 bytes per voxel).
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from scar_runtime import labels as L

KINDS = ("vertebra", "disc", "sacrum")
KIND_CLASSES: dict[str, tuple[int, ...]] = {
    k: tuple(s.model_id for s in L.ALL_STRUCTURES if s.kind == k) for k in KINDS}


@dataclass
class Element:
    """One structure candidate: a bool mask inside a bounding box of the volume."""

    kind: str
    box: tuple[slice, slice, slice]
    mask: np.ndarray
    votes: np.ndarray  # (NUM_CLASSES,) voxels of each predicted class inside the mask
    spacing: np.ndarray

    @property
    def voxels(self) -> int:
        return int(self.votes.sum())

    @property
    def centroid_mm(self) -> np.ndarray:
        idx = np.argwhere(self.mask).mean(0) + [b.start for b in self.box]
        return idx * self.spacing

    @property
    def si_range_mm(self) -> tuple[float, float]:
        rows = np.nonzero(self.mask.any(axis=(1, 2)))[0] + self.box[0].start
        return float(rows.min() * self.spacing[0]), float((rows.max() + 1) * self.spacing[0])

    @property
    def sagittal_area_mm2(self) -> float:
        """Largest cross-section on one sagittal slice: size on any number of slices (a
        single-slice image has bodies of full sagittal area but a few mm^3)."""
        per_slice = self.mask.sum(axis=(0, 1))
        return float(per_slice.max() * self.spacing[0] * self.spacing[1])

    def share(self, class_id: int) -> float:
        return float(self.votes[class_id] / max(1, self.voxels))


def votes_of(labels_box: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.bincount(labels_box[mask].ravel(), minlength=L.NUM_CLASSES)[: L.NUM_CLASSES]


def kind_components(labels: np.ndarray, spacing: np.ndarray, floor_vox: float,
                    removed: list[str]) -> list[Element]:
    """Every 6-connected component of each kind above ``floor_vox`` voxels (6-connectivity: two
    bodies touching at a corner where the disc between them was missed stay two)."""
    out = []
    for kind, ids in KIND_CLASSES.items():
        m = np.isin(labels, ids)
        box = ndimage.find_objects(m.astype(np.uint8))
        if not box:
            continue
        box = box[0]
        cc = cc3d.connected_components(m[box], connectivity=6)
        st = cc3d.statistics(cc)
        sizes = st["voxel_counts"]
        small = [int(n) for n in sizes[1:] if n < floor_vox]
        if small:
            removed.append(f"{kind}: {len(small)} fragment(s) below {floor_vox:.0f} voxels "
                           f"({sum(small)} voxels)")
        lab_box = labels[box]
        for i in range(1, len(sizes)):
            if sizes[i] < floor_vox:
                continue
            sb = st["bounding_boxes"][i]
            full = tuple(slice(b.start + q.start, b.start + q.stop)
                         for b, q in zip(box, sb, strict=True))
            mask = cc[sb] == i
            out.append(Element(kind, full, mask, votes_of(lab_box[sb], mask), spacing))
        del cc
    return out


def split_by_class(el: Element, labels: np.ndarray, floor_vox: float,
                   min_share: float = 0.25) -> list[Element]:
    """A component the network gave two or more classes in large parts (two bodies merged
    where the disc between them was missed) split into one element per such class."""
    big = [c for c in range(1, L.NUM_CLASSES) if el.share(c) >= min_share]
    if len(big) < 2:
        return [el]
    lab = labels[el.box]
    parts = []
    for c in big:
        m = el.mask & (lab == c)
        if m.sum() >= floor_vox:
            parts.append(Element(el.kind, el.box, m, votes_of(lab, m), el.spacing))
    return parts or [el]


def largest_piece(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    cc = cc3d.connected_components(mask, connectivity=6)
    sizes = np.bincount(cc.ravel())
    sizes[0] = 0
    return cc == int(sizes.argmax())


def shrink(el: Element, keep: np.ndarray, labels: np.ndarray) -> Element:
    """``el`` restricted to ``keep`` (same box), its largest piece, box tightened."""
    m = largest_piece(el.mask & keep)
    if not m.any():
        return Element(el.kind, el.box, m, np.zeros(L.NUM_CLASSES, np.int64), el.spacing)
    sub = ndimage.find_objects(m.astype(np.uint8))[0]
    box = tuple(slice(b.start + q.start, b.start + q.stop) for b, q in zip(el.box, sub,
                                                                           strict=True))
    m = m[sub]
    return Element(el.kind, box, m, votes_of(labels[box], m), el.spacing)


def union(a: Element, b: Element, labels: np.ndarray) -> Element:
    box = tuple(slice(min(p.start, q.start), max(p.stop, q.stop))
                for p, q in zip(a.box, b.box, strict=True))
    shape = tuple(s.stop - s.start for s in box)
    m = np.zeros(shape, bool)
    for e in (a, b):
        sl = tuple(slice(p.start - o.start, p.stop - o.start)
                   for p, o in zip(e.box, box, strict=True))
        m[sl] |= e.mask
    return Element(a.kind, box, m, votes_of(labels[box], m), a.spacing)
