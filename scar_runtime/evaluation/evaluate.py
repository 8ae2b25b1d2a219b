"""``scar evaluate``: compare predicted label maps with reference masks.

Both sides are read through ``io.load_volume`` (any orientation, validated) and brought to model
class ids; files may hold model classes (0..10, what ``scar infer`` writes) or VerSe ids (what
public data uses). ``auto`` decides per file (see ``guess_scheme``) and refuses to guess when a file
could be either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scar_runtime import labels as L
from scar_runtime.core.errors import InputFileError, InvalidImageError
from scar_runtime.evaluation.metrics import CaseScore, evaluate_case
from scar_runtime.io import Volume, check_same_grid, is_nifti_path, load_volume, nifti_stem

LABEL_SCHEMES = ("auto", "model", "verse")
# Suffixes stripped when matching files of two folders by case name: "02_img_seg" and "02_seg"
# (what `scar infer` writes for 02_img.nii.gz, and the reference mask) are the same case.
_MATCH_SUFFIXES = ("_seg", "_msk", "_mask", "_label", "_labels", "_img", "_image")


# Below this share of foreground voxels, values above the model's classes are not evidence of
# VerSe ids (a VerSe mask of the lumbar spine is almost all values 19..26 and 119..124) but a
# stray voxel in a model-id file: then ``auto`` refuses to guess instead of misreading the file.
_VERSE_EVIDENCE = 0.01


def guess_scheme(vol: Volume, option: str) -> str:
    """"model" when every value is a model class, "verse" when values above the model's classes
    are a real share of the mask; a file in between is refused with the option that decides."""
    top_class = L.NUM_CLASSES - 1
    foreground = int(np.count_nonzero(vol.data))
    above = int(np.count_nonzero(vol.data > top_class))
    if above == 0:
        return "model"
    if above >= _VERSE_EVIDENCE * foreground:
        return "verse"
    raise InvalidImageError(
        f"{vol.path}: {above} of {foreground} labelled voxels hold values above "
        f"{top_class} (not model classes), the rest look like model classes: say which with "
        f"{option} model or {option} verse")


def to_model_ids(vol: Volume, scheme: str, option: str = "--gt-labels") -> Volume:
    """``option``: the command-line option that sets ``scheme`` for this file (for hints)."""
    if scheme not in LABEL_SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r} (valid: {', '.join(LABEL_SCHEMES)})")
    top = int(vol.data.max(initial=0))
    if scheme == "auto":
        scheme = guess_scheme(vol, option)
    if scheme == "model":
        if top > L.NUM_CLASSES - 1:
            raise InvalidImageError(
                f"{vol.path}: value {top} is not a model class (0..{L.NUM_CLASSES - 1}); "
                f"use {option} verse for VerSe ids")
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
    preds = _by_case(pred)
    gts = _by_case(gt)
    if not gts:
        raise InputFileError(f"{gt}: no .nii/.nii.gz files")
    names = sorted(set(preds) & set(gts))
    if not names:
        raise InputFileError(f"no case names in common between {pred} and {gt}")
    return [Pair(n, preds[n], gts[n]) for n in names]


def _by_case(folder: Path) -> dict[str, Path]:
    """Case name -> file; two files of one folder that map to one name are refused (keeping
    one of them silently would score the wrong file)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not is_nifti_path(p):
            continue
        key = case_key(p)
        if key in out:
            raise InputFileError(f"{folder}: {out[key].name} and {p.name} both map to case "
                                 f"{key!r}; remove or rename one")
        out[key] = p
    return out


def evaluate_pair(pair: Pair, *, pred_labels: str = "auto", gt_labels: str = "auto") -> CaseScore:
    gt = to_model_ids(load_volume(pair.gt, as_labels=True), gt_labels, "--gt-labels")
    pred = to_model_ids(load_volume(pair.pred, as_labels=True), pred_labels, "--pred-labels")
    check_same_grid(pred, gt)
    return evaluate_case(pred.data, gt.data, gt.spacing, gt.affine, name=pair.name)


def unmatched(pred: Path, gt: Path) -> list[str]:
    """Reference cases with no prediction (reported, not silently dropped)."""
    if not Path(gt).is_dir():
        return []
    preds = {case_key(p) for p in Path(pred).iterdir() if is_nifti_path(p)}
    return sorted(case_key(p) for p in Path(gt).iterdir()
                  if is_nifti_path(p) and case_key(p) not in preds)
