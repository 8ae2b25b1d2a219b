"""Reader for data index files (the ../shared/data ``index.json`` format).

An index is a JSON list of cases; paths are relative to the index file's folder. Each case says
what it labels, and that matters: public spine sets label only SOME structures (vertebrae only,
discs only, or key-points only), and a structure a set does not label is unknown, not background.
``Case.labelled_classes`` and ``Case.labelled_keypoints`` carry that to the training loss and the
evaluation.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scar_runtime import labels as L
from scar_runtime.core.errors import DataIndexError
from scar_runtime.core.hashing import file_sha256
from scar_runtime.evaluation.index_schema import validate_index_file
from scar_runtime.io import Volume, check_same_grid, load_volume

SUPERVISION_KINDS = ("vertebrae", "discs", "both", "keypoints")
# Which structure kinds a supervision kind's masks label ("both": SPIDER-style masks).
_MASK_KINDS = {"vertebrae": {"vertebra", "sacrum"}, "discs": {"disc"},
               "both": {"vertebra", "disc", "sacrum"}}


@functools.lru_cache(maxsize=4096)
def _keypoint_kinds(path: Path) -> frozenset[str]:
    """Structure kinds a key-point file annotates (its ``labelled_kinds``); older files without
    the field give vertebral-body centres only."""
    try:
        kinds = json.loads(path.read_text()).get("labelled_kinds", ["vertebra"])
    except (OSError, ValueError) as e:
        raise DataIndexError(f"{path}: unreadable key-point file ({e})") from e
    if not isinstance(kinds, list) or not all(k in ("vertebra", "disc") for k in kinds):
        raise DataIndexError(f"{path}: labelled_kinds must be a list of 'vertebra'/'disc'")
    return frozenset(kinds)


@dataclass(frozen=True)
class Case:
    dataset: str
    case: str
    split: str
    image: Path
    seg: Path | None
    keypoints: Path | None
    meta: Path | None
    levels: tuple[str, ...]
    subject: str  # cases of one subject never straddle train/val or two folds
    supervision: str  # "vertebrae" | "discs" | "both" | "keypoints"

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.case}"

    @property
    def labelled_classes(self) -> frozenset[int]:
        """Model classes this case's mask labels; every other foreground class is unknown.

        A vertebra set labels all lumbar vertebral bodies in its field of view (and leaves discs
        unknown); a disc set the reverse; a "both" set (SPIDER) labels both kinds; a key-point set
        labels no class at all. An anchor class (T12, T12/L1, S1) is labelled only where the case
        lists that level: chu2015 labels T12 but myosegmentum does not (its T12 is unlabelled
        bone, not background), and SPIDER leaves the sacrum unlabelled.
        """
        kinds = _MASK_KINDS.get(self.supervision)
        if kinds is None:
            return frozenset()
        lumbar = {s.model_id for s in L.STRUCTURES if s.kind in kinds}
        anchors = {s.model_id for s in L.ANCHORS if s.kind in kinds and s.name in self.levels}
        return frozenset(lumbar | anchors)

    @property
    def labelled_kinds(self) -> frozenset[str]:
        """Structure kinds this case annotates in any form (mask or key-points)."""
        if self.supervision == "keypoints":
            return _keypoint_kinds(self.keypoints) if self.keypoints else frozenset({"vertebra"})
        return frozenset(_MASK_KINDS[self.supervision])

    @property
    def labelled_keypoints(self) -> frozenset[int]:
        """Key-point indices this case gives a target for (present levels of labelled kinds)."""
        ids = {L.level_to_model_id(lv) for lv in self.levels} & set(L.LUMBAR_IDS)
        if self.supervision == "keypoints":
            # the file says which kinds it annotates (Tianchi: bodies AND discs; SpineSource:
            # vertebral-body box centres only)
            kinds = self.labelled_kinds
            ids = {i for i in ids if L.BY_ID[i].kind in kinds}
        else:
            ids = {i for i in ids if i in self.labelled_classes}
        return frozenset(L.keypoint_index(i) for i in ids)

    def load_image(self) -> Volume:
        return load_volume(self.image)

    def load_seg(self, image: Volume | None = None, raw: Volume | None = None) -> Volume:
        """The mask in the working layout with MODEL class ids (VerSe ids mapped). ``raw``:
        the mask already read by :meth:`load_raw_seg` (saves reading the file twice)."""
        seg = raw if raw is not None else self._read_seg(image)
        return Volume(**{**vars(seg), "data": L.verse_to_model(seg.data)})

    def _read_seg(self, image: Volume | None) -> Volume:
        if self.seg is None:
            raise DataIndexError(f"{self.id} has no segmentation")
        seg = load_volume(self.seg, as_labels=True)
        if image is not None:
            check_same_grid(image, seg)
        return seg

    def load_raw_seg(self, image: Volume | None = None) -> Volume:
        """The mask with its own (VerSe) ids in the working layout: every structure the set
        labels, thoracic and sacral ones included, for "far from every labelled structure"."""
        return self._read_seg(image)

    def score(self, pred: np.ndarray, gt: np.ndarray, image: Volume):
        """Metrics of a working-layout prediction on the structures this case's set labels:
        other classes are zeroed first (a disc predicted on a vertebra-only set is neither
        right nor wrong). One place for validation, the model card and the benchmark."""
        from scar_runtime.evaluation.metrics import evaluate_case

        scored = self.labelled_classes & set(L.LUMBAR_IDS)
        pred = np.where(np.isin(pred, list(scored)), pred, 0).astype(np.uint8)
        gt = np.where(np.isin(gt, list(scored)), gt, 0).astype(np.uint8)
        return evaluate_case(pred, gt, image.spacing, image.affine, name=self.id)

    def load_keypoints(self) -> dict[int, np.ndarray]:
        """Key-point index -> world position (mm) for the key-points this case labels."""
        if self.keypoints is None:
            if self.meta is None:
                return {}
            points = json.loads(self.meta.read_text()).get("keypoints_centroid", {})
        else:
            points = json.loads(self.keypoints.read_text()).get("keypoints", {})
        out = {}
        for level, p in points.items():
            mid = L.level_to_model_id(level)
            if mid not in L.LUMBAR_IDS or L.keypoint_index(mid) not in self.labelled_keypoints:
                continue
            out[L.keypoint_index(mid)] = np.asarray(p["world_mm"], dtype=np.float64)
        return out


def _supervision(entry: dict) -> str:
    if entry.get("seg"):
        kinds = {s.kind for s in L.STRUCTURES if s.name in entry.get("levels", [])}
        if kinds == {"disc"}:
            return "discs"
        if kinds == {"vertebra"}:
            return "vertebrae"
        if kinds == {"vertebra", "disc"}:
            return "both"
        raise DataIndexError(f"case {entry.get('case')}: a mask without lumbar levels")
    if entry.get("keypoints"):
        return "keypoints"
    raise DataIndexError(f"case {entry.get('case')}: neither 'seg' nor 'keypoints' is given")


def read_index(path: Path | str, *, check_files: bool = True) -> list[Case]:
    """Parse an index file; paths are resolved against its folder and checked to exist."""
    path = Path(path)
    if not path.is_file():
        raise DataIndexError(f"{path}: no such data index file")
    validate_index_file(path)  # the schema first: wrong types, deep JSON -> one clear error
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataIndexError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataIndexError(f"{path}: expected a JSON list of case objects")
    root = path.parent
    groups = {e["subject_group"] for e in entries if e.get("subject_group")}
    cases, seen = [], set()
    for i, e in enumerate(entries):
        for key in ("dataset", "case", "image"):
            if key not in e:
                raise DataIndexError(f"{path}: case #{i} lacks '{key}'")
        cid = f"{e['dataset']}/{e['case']}"
        if cid in seen:
            raise DataIndexError(f"{path}: case {cid} is listed twice")
        seen.add(cid)
        files = {k: (root / e[k]) if e.get(k) else None
                 for k in ("image", "seg", "keypoints", "meta")}
        if check_files:
            for k, f in files.items():
                if f is not None and not f.is_file():
                    raise DataIndexError(f"{path}: case {cid}: {k} file {f} not found")
        split = e.get("split", "train")
        if split not in ("train", "val", "test"):
            raise DataIndexError(f"{path}: case {cid}: unknown split '{split}'")
        cases.append(Case(dataset=e["dataset"], case=str(e["case"]), split=split,
                          image=files["image"], seg=files["seg"], keypoints=files["keypoints"],
                          meta=files["meta"], levels=tuple(e.get("levels", ())),
                          subject=_subject(e, groups), supervision=_supervision(e)))
    return cases


def _subject(entry: dict, groups: set[str]) -> str:
    """Subject id for subject-wise splits.

    Explicit ``subject``/``subject_group`` wins. A case named after an exam of a known subject
    group (``AKa3`` in group ``AKa``: the same person in another set) joins that group, so one
    person never lands in both train and val folds.
    """
    for key in ("subject", "subject_group"):
        if entry.get(key):
            return str(entry[key])
    case = str(entry["case"])
    if case in groups:
        return case
    m = re.fullmatch(r"([A-Za-z]+)\d*", case)
    if m and m.group(1) in groups:
        return m.group(1)
    return f"{entry['dataset']}:{entry['case']}"


def index_hash(path: Path | str) -> str:
    """SHA-256 of the index file's bytes (recorded in checkpoints and exported models)."""
    return file_sha256(path)

