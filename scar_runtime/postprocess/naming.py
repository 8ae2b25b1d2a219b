"""Naming levels by counting along the column from an anchor.

Positions count structures upwards from the sacrum: S1 = 0, the L5/S1 disc = -1, L5 = -2, ...,
L1 = -10, T12/L1 = -11, T12 = -12; further up (-13, ...) are thoracic structures that are neither
scored nor anchors (they are dropped from the output). Walking down the ordered column, a body
follows a disc (+1) and a disc a body (+1); two bodies in a row mean a disc was missed (+2), and
so on. That fixes every name up to one shift, and the shift is chosen from an anchor:

the shift with the most evidence (see :func:`name_levels`): the sacrum (the S1 class, or the
lowest disc with the sacrum in view below it), T12 / the T12-L1 disc, the network's classes and
its key-points. The anchor reported is the landmark the chosen naming agrees with: ``sacrum``,
else ``T12``, else ``network classes``.

The per-pixel classes of the network can be off by a whole level when the field of view starts
higher or lower than in training; counting from a landmark cannot. The confidence is the share
of the column's voxels whose predicted class agrees with the name they now carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from scar_runtime import labels as L

from .components import Element

S1_POS = 0
T12_POS = -12
TOP_NAMED_POS = T12_POS  # above this: thoracic, dropped
# position -> class id
_POS_CLASS: dict[int, int] = {0: L.S1_ID, -11: L.T12_L1_ID, -12: L.T12_ID}
for _i, _v in enumerate(L.VERTEBRA_IDS[::-1]):  # L5 .. L1
    _POS_CLASS[-2 - 2 * _i] = _v
for _i, _d in enumerate(L.DISC_IDS[::-1]):  # L5/S1 .. L1/L2
    _POS_CLASS[-1 - 2 * _i] = _d
CLASS_POS: dict[int, int] = {c: p for p, c in _POS_CLASS.items()}

ANCHOR_MIN_SHARE = 0.5  # an element is an anchor when most of its voxels carry the anchor class
SACRUM_VIEW_MM = 30.0  # image below the lowest disc's centre: the sacrum is in view
ANCHOR_VOTE_WEIGHT = 3.0  # T12, T12/L1, S1 votes count this much in the agreement
KEYPOINT_WEIGHT = 1.0  # units of evidence per key-point inside the structure of its name
LOWEST_DISC_WEIGHT = 3.0  # units for "the lowest disc above the sacrum is L5/S1"


def class_at(pos: int) -> int:
    """Class id written for a position (0: not a scored or anchor structure)."""
    return _POS_CLASS.get(pos, 0)


def relative_positions(els: list[Element]) -> list[int]:
    """Positions up to a common shift, from the kinds' order (first element at 0 or 1: its
    parity matches its kind)."""
    def parity(kind: str) -> int:
        return 1 if kind == "disc" else 0

    q = [parity(els[0].kind)] if els else []
    for prev, e in zip(els, els[1:], strict=False):
        step = 1 if parity(prev.kind) != parity(e.kind) else 2
        q.append(q[-1] + step)
    return q


@dataclass
class Naming:
    positions: list[int]  # absolute, per element
    anchor: str  # "sacrum" | "T12" | "network classes"
    confidence: float
    warnings: list[str] = field(default_factory=list)
    alternatives: dict[int, float] = field(default_factory=dict)  # shift -> agreement


def _agreement(els: list[Element], q: list[int], shift: int, anchor_weight: float = 1.0
               ) -> float:
    total = 0.0
    for e, p in zip(els, q, strict=True):
        c = class_at(p + shift)
        if c:
            total += e.votes[c] * (anchor_weight if c in L.ANCHOR_IDS else 1.0)
    return float(total)


def _lowest_disc_is_l5s1(els: list[Element], q: list[int], shift: int,
                         below_mm: float) -> bool:
    """The column ends in a disc (only sacrum below it), the image goes on for SACRUM_VIEW_MM
    below it (the sacrum is in view), and this naming calls that disc L5/S1: there is no disc
    below L5/S1 in the usual anatomy (a lumbarised S1 with a disc of its own is the
    transitional case that only a whole-spine view settles)."""
    lowest = max((i for i, e in enumerate(els) if e.kind == "disc"), default=None)
    return (lowest is not None and lowest > 0 and els[lowest - 1].kind == "vertebra"
            and all(e.kind == "sacrum" for e in els[lowest + 1:])
            and below_mm >= SACRUM_VIEW_MM and q[lowest] + shift == -1)


def _keypoint_hits(kp_elements: dict[int, int], q: list[int], shift: int) -> int:
    """How many key-points lie in the structure this naming gives their name."""
    return sum(class_at(q[i] + shift) == k + 1 for k, i in kp_elements.items())


def name_levels(els: list[Element], below_mm: float = 0.0,
                kp_elements: dict[int, int] | None = None) -> Naming:
    """Name the ordered column; every naming is one shift of the relative positions.

    Each shift is scored by the evidence for it, in units of one typical structure: the
    network's class votes (voxels; anchor classes T12, T12/L1, S1 x3), one unit per key-point
    that lands in the structure of its name (the key-point branch is trained on the Tianchi
    weak set, the segmentation is not: on val they disagreed where the classes had shifted),
    and three units for "the lowest disc, with the sacrum in view below it, is L5/S1".
    ``below_mm``: how far the image extends below the lowest disc; ``kp_elements``: key-point
    index -> index of the element it lies in.
    """
    q = relative_positions(els)
    kp_elements = kp_elements or {}
    total = float(sum(e.voxels for e in els)) or 1.0
    unit = float(np.median([e.voxels for e in els])) if els else 1.0
    lo = TOP_NAMED_POS - max(q) - 2
    shifts = [k for k in range(lo, S1_POS - min(q) + 1) if (k % 2) == 0]
    votes = {k: _agreement(els, q, k) for k in shifts}
    evidence = {k: _agreement(els, q, k, ANCHOR_VOTE_WEIGHT)
                + unit * KEYPOINT_WEIGHT * _keypoint_hits(kp_elements, q, k)
                + unit * LOWEST_DISC_WEIGHT * _lowest_disc_is_l5s1(els, q, k, below_mm)
                for k in shifts}
    shift = max(evidence, key=lambda k: (evidence[k], -abs(k)))
    positions = [p + shift for p in q]
    sacrum_agrees = _lowest_disc_is_l5s1(els, q, shift, below_mm) or any(
        e.share(L.S1_ID) >= ANCHOR_MIN_SHARE for e, p in zip(els, positions, strict=True)
        if p == S1_POS)
    t12_agrees = any(e.share(class_at(p)) >= ANCHOR_MIN_SHARE
                     for e, p in zip(els, positions, strict=True)
                     if class_at(p) in (L.T12_ID, L.T12_L1_ID))
    anchor = "sacrum" if sacrum_agrees else "T12" if t12_agrees else "network classes"
    ranked = sorted(evidence.values(), reverse=True)
    margin = (ranked[0] - ranked[1]) / ranked[0] if len(ranked) > 1 and ranked[0] > 0 else 1.0
    naming = Naming(positions=positions, anchor=anchor,
                    confidence=round(float(min(votes.get(shift, 0.0) / total, margin)), 3),
                    alternatives={k: round(v / total, 3) for k, v in votes.items() if v})
    naming.warnings += transitional_warnings(els, positions)
    best = max(votes, key=lambda k: votes[k])
    if best != shift and votes[best] > 1.5 * votes.get(shift, 0.0):
        naming.warnings.append(
            f"counting from the {anchor} names the levels {abs(best - shift) // 2} level(s) "
            f"{'lower' if best > shift else 'higher'} than the network's own classes; "
            "check the preview")
    return naming


def transitional_warnings(els: list[Element], pos: list[int]) -> list[str]:
    """Anatomy the five-lumbar count cannot name with certainty: reported, not hidden."""
    out = []
    sac = [i for i, e in enumerate(els) if e.kind == "sacrum" and e.share(L.S1_ID) >= 0.5]
    t12 = [i for i, e in enumerate(els) if e.share(L.T12_ID) >= ANCHOR_MIN_SHARE
           and e.kind == "vertebra"]
    if sac and t12:
        between = [e for e in els[t12[0] + 1: sac[-1]] if e.kind == "vertebra"]
        if len(between) != 5:
            out.append(f"{len(between)} lumbar-type vertebrae between T12 and the sacrum "
                       "(transitional anatomy? levels are counted from the sacrum)")
    if sac:
        i = sac[-1]
        if i > 0 and els[i - 1].kind == "vertebra":
            out.append("no disc between the lowest vertebra and the sacrum (sacralised L5?)")
        if i + 1 < len(els) and els[i + 1].kind == "disc":
            out.append("a disc below the sacrum's top segment (lumbarised S1?)")
    lumbar_v = [p for e, p in zip(els, pos, strict=True) if e.kind == "vertebra"
                and -10 <= p <= -2]
    above = [e for e, p in zip(els, pos, strict=True) if e.kind == "vertebra" and p == T12_POS
             and e.share(L.T12_ID) < 0.2 and sum(e.share(c) for c in L.VERTEBRA_IDS) > 0.6]
    if len(lumbar_v) == 5 and above:
        out.append("the vertebra named T12 looks lumbar to the network (six lumbar-type "
                   "vertebrae? transitional anatomy)")
    return out


def keypoints_inside(final: np.ndarray, keypoints_vox: dict[int, np.ndarray],
                     spacing: np.ndarray) -> tuple[dict[int, np.ndarray], list[str]]:
    """Key-point k placed inside structure k when it exists: the network's own point when it
    lies inside, else another key-point that lies inside it, else the structure's voxel nearest
    its centroid. Returns working-voxel positions and what moved."""
    out, moves = {}, []
    inside_of = {}
    for k, p in keypoints_vox.items():
        idx = tuple(int(round(v)) for v in p)
        if all(0 <= i < n for i, n in zip(idx, final.shape, strict=True)):
            inside_of[k] = int(final[idx])
    boxes = ndimage.find_objects(final, max_label=L.NUM_KEYPOINTS)  # one pass for every class
    for k in range(L.NUM_KEYPOINTS):
        cid = k + 1
        p = keypoints_vox.get(k)
        if inside_of.get(k) == cid or boxes[k] is None:
            if p is not None:
                out[k] = p
            continue
        donors = [j for j, c in inside_of.items() if c == cid]
        if donors:
            out[k] = keypoints_vox[donors[0]]
            moves.append(f"key-point {L.KEYPOINT_NAMES[k]} taken from the network's "
                         f"{L.KEYPOINT_NAMES[donors[0]]} point (inside {L.BY_ID[cid].name})")
            continue
        box = boxes[k]
        vox = np.argwhere(final[box] == cid) + [b.start for b in box]
        c = vox.mean(0)
        out[k] = vox[np.argmin((((vox - c) * spacing) ** 2).sum(1))].astype(float)
        moves.append(f"key-point {L.KEYPOINT_NAMES[k]} set to the centre of "
                     f"{L.BY_ID[cid].name}")
    return out, moves
