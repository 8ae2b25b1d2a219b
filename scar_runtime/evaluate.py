"""``scar evaluate``: compare predicted label maps with reference masks.

Both sides are read through ``io.load_volume`` (any orientation, validated) and brought to model
class ids; files may hold model classes (0..10, what ``scar infer`` writes) or VerSe ids (what
public data uses). ``auto`` decides per file: any value above 10 means VerSe ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scar_runtime import labels as L
from scar_runtime.errors import InputFileError, InvalidImageError
from scar_runtime.io import Volume, check_same_grid, is_nifti_path, load_volume, nifti_stem
from scar_runtime.metrics import CaseScore, evaluate_case

LABEL_SCHEMES = ("auto", "model", "verse")
# Suffixes stripped when matching files of two folders by case name: "02_img_seg" and "02_seg"
# (what `scar infer` writes for 02_img.nii.gz, and the reference mask) are the same case.
_MATCH_SUFFIXES = ("_seg", "_msk", "_mask", "_label", "_labels", "_img", "_image")


def to_model_ids(vol: Volume, scheme: str) -> Volume:
    if scheme not in LABEL_SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r} (valid: {', '.join(LABEL_SCHEMES)})")
    top = int(vol.data.max(initial=0))
    if scheme == "auto":
        scheme = "verse" if top > L.NUM_CLASSES - 1 else "model"
    if scheme == "model":
        if top > L.NUM_CLASSES - 1:
            raise InvalidImageError(
                f"{vol.path}: value {top} is not a model class (0..{L.NUM_CLASSES - 1}); "
                "use --labels verse for VerSe ids")
        vol.data = vol.data.astype(np.uint8)
    else:
        if top > 255:
            raise InvalidImageError(f"{vol.path}: value {top} is not a VerSe id")
        vol.data = L.verse_to_model(vol.data)
    return vol


def case_key(path: Path) -> str:
    stem = nifti_stem(path)
    changed = True
    while changed:
        changed = False
        for suf in _MATCH_SUFFIXES:
            if stem.endswith(suf) and len(stem) > len(suf):
                stem, changed = stem[: -len(suf)], True
    return stem


@dataclass(frozen=True)
class Pair:
    name: str
    pred: Path
    gt: Path


def pair_inputs(pred: Path, gt: Path) -> list[Pair]:
    """Two files, or two folders matched by case name."""
    pred, gt = Path(pred), Path(gt)
    for p in (pred, gt):
        if not p.exists():
            raise InputFileError(f"{p}: no such file or folder")
    if pred.is_dir() != gt.is_dir():
        raise InputFileError("PRED and GT must both be files or both be folders")
    if not pred.is_dir():
        return [Pair(case_key(gt), pred, gt)]
    preds = {case_key(p): p for p in sorted(pred.iterdir()) if is_nifti_path(p)}
    gts = {case_key(p): p for p in sorted(gt.iterdir()) if is_nifti_path(p)}
    if not gts:
        raise InputFileError(f"{gt}: no .nii/.nii.gz files")
    names = sorted(set(preds) & set(gts))
    if not names:
        raise InputFileError(f"no case names in common between {pred} and {gt}")
    return [Pair(n, preds[n], gts[n]) for n in names]


def evaluate_pair(pair: Pair, *, pred_labels: str = "auto", gt_labels: str = "auto") -> CaseScore:
    gt = to_model_ids(load_volume(pair.gt, as_labels=True), gt_labels)
    pred = to_model_ids(load_volume(pair.pred, as_labels=True), pred_labels)
    check_same_grid(pred, gt)
    return evaluate_case(pred.data, gt.data, gt.spacing, gt.affine, name=pair.name)


def unmatched(pred: Path, gt: Path) -> list[str]:
    """Reference cases with no prediction (reported, not silently dropped)."""
    if not Path(gt).is_dir():
        return []
    preds = {case_key(p) for p in Path(pred).iterdir() if is_nifti_path(p)}
    return sorted(case_key(p) for p in Path(gt).iterdir()
                  if is_nifti_path(p) and case_key(p) not in preds)
