"""The label map: the one place that knows what every class id means.

Model classes are contiguous ids 0..13. Values 1-10 are the ten scored lumbar structures (L1-L5,
discs L1/L2-L5/S1); 11-13 are ANCHOR classes (T12, the T12/L1 disc, the sacrum S1) that the
network predicts so that post-processing can count levels from a landmark instead of trusting
per-pixel appearance (a field of view that starts one vertebra higher must not shift every name).
Anchors are written to the output segmentation with their own values but are not scored.

Public spine data (and ../shared/data) use VerSe-style ids: vertebra T12=19, L1=20 ... L5=24,
S1=26, disc = 100 + id of the vertebra above (T12/L1=119 ... L5/S1=124). Every other VerSe
structure (T11 and above, S2...) maps to background. Key-point k is the centre of model class
k + 1 (lumbar structures only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 14
NUM_KEYPOINTS = 10
BACKGROUND = 0


@dataclass(frozen=True)
class Structure:
    model_id: int
    name: str  # the level name used everywhere: "L3", "L3/L4"
    kind: str  # "vertebra", "disc" or "sacrum"
    verse_id: int
    color: tuple[int, int, int]  # RGB for previews and label tables (ITK-SNAP friendly)


# Top to bottom: L1, L2, ... L5 then the five discs below them. Colours: warm vertebrae, cool discs.
STRUCTURES: tuple[Structure, ...] = (
    Structure(1, "L1", "vertebra", 20, (230, 25, 75)),
    Structure(2, "L2", "vertebra", 21, (245, 130, 48)),
    Structure(3, "L3", "vertebra", 22, (255, 225, 25)),
    Structure(4, "L4", "vertebra", 23, (210, 245, 60)),
    Structure(5, "L5", "vertebra", 24, (240, 50, 230)),
    Structure(6, "L1/L2", "disc", 120, (0, 130, 200)),
    Structure(7, "L2/L3", "disc", 121, (70, 240, 240)),
    Structure(8, "L3/L4", "disc", 122, (60, 180, 75)),
    Structure(9, "L4/L5", "disc", 123, (145, 30, 180)),
    Structure(10, "L5/S1", "disc", 124, (0, 0, 128)),
)

# Landmarks for counting levels (predicted, written, not scored). Muted colours: context.
ANCHORS: tuple[Structure, ...] = (
    Structure(11, "T12", "vertebra", 19, (128, 128, 0)),
    Structure(12, "T12/L1", "disc", 119, (0, 128, 128)),
    Structure(13, "S1", "sacrum", 26, (170, 110, 40)),
)
ALL_STRUCTURES: tuple[Structure, ...] = STRUCTURES + ANCHORS

BY_ID: dict[int, Structure] = {s.model_id: s for s in ALL_STRUCTURES}
BY_NAME: dict[str, Structure] = {s.name: s for s in ALL_STRUCTURES}
BY_VERSE: dict[int, Structure] = {s.verse_id: s for s in ALL_STRUCTURES}

VERTEBRA_IDS: tuple[int, ...] = tuple(s.model_id for s in STRUCTURES if s.kind == "vertebra")
DISC_IDS: tuple[int, ...] = tuple(s.model_id for s in STRUCTURES if s.kind == "disc")
LUMBAR_IDS: tuple[int, ...] = VERTEBRA_IDS + DISC_IDS  # the scored classes, values 1..10
ANCHOR_IDS: tuple[int, ...] = tuple(s.model_id for s in ANCHORS)
T12_ID, T12_L1_ID, S1_ID = ANCHOR_IDS
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(s.name for s in ALL_STRUCTURES)
KEYPOINT_NAMES: tuple[str, ...] = tuple(s.name for s in STRUCTURES)

# Anatomical order from head to feet, used by level-consistency checks: L1, L1/L2, L2, ... L5/S1.
CRANIOCAUDAL_ORDER: tuple[int, ...] = (1, 6, 2, 7, 3, 8, 4, 9, 5, 10)
# The same with the anchors: T12, T12/L1, L1, ..., L5/S1, S1.
CRANIOCAUDAL_ORDER_ALL: tuple[int, ...] = (11, 12) + CRANIOCAUDAL_ORDER + (13,)


def keypoint_index(model_id: int) -> int:
    """Index of the key-point that is the centre of ``model_id``."""
    if model_id not in LUMBAR_IDS:
        raise ValueError(f"class {model_id} has no key-point (valid: 1..{NUM_KEYPOINTS})")
    return model_id - 1


def verse_lut() -> np.ndarray:
    """Look-up table from VerSe ids (0..255) to model classes; unknown ids -> background."""
    lut = np.zeros(256, dtype=np.uint8)
    for s in ALL_STRUCTURES:
        lut[s.verse_id] = s.model_id
    return lut


def verse_to_model(seg: np.ndarray) -> np.ndarray:
    """Map a VerSe-id label array to model classes (structures outside the model -> 0)."""
    seg = np.asarray(seg)
    if seg.size and (seg.min() < 0 or seg.max() > 255):
        raise ValueError(f"VerSe label ids must lie in 0..255, got {seg.min()}..{seg.max()}")
    return verse_lut()[seg.astype(np.intp, copy=False)]


def model_to_verse(seg: np.ndarray) -> np.ndarray:
    """Map model classes back to VerSe ids (0 stays 0)."""
    lut = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for s in ALL_STRUCTURES:
        lut[s.model_id] = s.verse_id
    seg = np.asarray(seg)
    if seg.size and (seg.min() < 0 or seg.max() >= NUM_CLASSES):
        raise ValueError(f"model classes must lie in 0..{NUM_CLASSES - 1}")
    return lut[seg.astype(np.intp, copy=False)]


def level_to_model_id(level: str) -> int | None:
    """Model class of a level name ("L3", "L4/L5"); None for levels the model does not segment."""
    s = BY_NAME.get(level)
    return s.model_id if s else None


def label_map_dict() -> dict:
    """The whole label map as JSON-able data (``scar labels --json``, ONNX metadata)."""
    return {
        "num_classes": NUM_CLASSES,
        "classes": [{"id": 0, "name": "background", "kind": "background", "verse_id": 0,
                     "color": [0, 0, 0]}]
        + [
            {"id": s.model_id, "name": s.name, "kind": s.kind, "verse_id": s.verse_id,
             "color": list(s.color), "anchor": s in ANCHORS}
            for s in ALL_STRUCTURES
        ],
        "keypoints": [{"index": i, "name": n, "class_id": i + 1}
                      for i, n in enumerate(KEYPOINT_NAMES)],
        "craniocaudal_order": [BY_ID[i].name for i in CRANIOCAUDAL_ORDER],
    }
