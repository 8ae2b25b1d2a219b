"""Accuracy of an exported model on the val split, as users get it (runtime + post-processing).

    python -m scar_runtime.evaluation.model_card --model MODEL.onnx --data INDEX.json \
        --out card.json

Per data set: per-structure 3D Dice in the paper's Table 2 layout (L1..L5, L1/L2..L5/S1, VB /
IVD averages), HD95, the share of cases with every level named right, the far-false-positive
share and the size-outlier ratio (judged whatever a set labels), and the key-point error in mm
(predicted key-points vs the reference centres: mask centroids, or the key-point files).
Everything is computed with scar_runtime (Segmenter, metrics): the numbers are the product's.
``--tilt DEG``: the same on tilted copies of the masked cases (image and mask rotated by DEG in
the sagittal plane, header unchanged, new corners at the image's noise floor), key-points not
scored.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer
from nibabel.affines import apply_affine
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.backends import read_model_metadata
from scar_runtime.core.atomic import atomic_write_text, check_output_path
from scar_runtime.core.hashing import file_sha256
from scar_runtime.evaluation import metrics as M
from scar_runtime.evaluation.dataset import read_index
from scar_runtime.evaluation.metrics import summarize
from scar_runtime.io import Volume
from scar_runtime.pipeline.segmenter import Segmenter
from scar_runtime.postprocess import PostprocessConfig


def _levels_right_at_points(labels: np.ndarray, vol, points: dict[int, np.ndarray]) -> bool:
    """Key-point case: every annotated centre lies inside the predicted structure of its name."""
    inv = np.linalg.inv(vol.affine)
    for k, world in points.items():
        ijk = np.round(apply_affine(inv, world)).astype(int)
        ijk = np.clip(ijk, 0, np.array(labels.shape) - 1)
        if labels[tuple(ijk)] != k + 1:
            return False
    return bool(points)


def tilted(vol: Volume, angle_deg: float, *, order: int, cval: float | None = None) -> Volume:
    """``vol`` with its data rotated by ``angle_deg`` in the sagittal plane (the working axes 0
    and 1), the affine unchanged: a tilted acquisition. New corners get ``cval`` (default: the
    image's 0.5th percentile, its noise floor, where air is: a 0 fill below it would move the
    normalisation's clip and test that, not the tilt)."""
    if cval is None:
        cval = float(np.percentile(vol.data, 0.5))
    data = ndimage.rotate(vol.data, angle_deg, axes=(0, 1), reshape=False, order=order,
                          cval=cval, mode="constant")
    return replace(vol, data=data.astype(vol.data.dtype, copy=False))


def evaluate_case(seg: Segmenter, case, tilt_deg: float = 0.0) -> dict:
    """One case through the runtime: scores, far false positives, sizes, key-points, levels.
    ``tilt_deg``: on a tilted copy of a masked case (key-points not scored)."""
    vol = case.load_image()
    raw = case.load_raw_seg(vol) if case.seg is not None else None
    if tilt_deg:
        vol, raw = tilted(vol, tilt_deg, order=1), tilted(raw, tilt_deg, order=0, cval=0)
    res = seg.segment(vol)
    row = {"case": case.case, "lumbar_spine_found": res.report.lumbar_spine_found,
           "anchor": res.report.anchor, "size_ratio": M.size_outlier_ratio(res.labels),
           "straightened_deg": res.report.straightened_deg}
    pred_kp = {L.KEYPOINT_NAMES.index(k.name): np.array(k.world_mm) for k in res.keypoints}
    points = {} if tilt_deg else case.load_keypoints()
    row["kp_errors_mm"] = {L.KEYPOINT_NAMES[k]: float(np.linalg.norm(pred_kp[k] - ref))
                           for k, ref in points.items()}
    if raw is not None:
        gt = case.load_seg(raw=raw).data
        row["score"] = case.score(res.labels, gt, vol)
        row["far_fp"] = M.masked_case_far_share(res.labels, raw.data > 0, gt, vol.spacing)
        row["levels_right"] = row["score"].identification_rate == 1.0
    else:
        inv = np.linalg.inv(vol.affine)
        vox = [apply_affine(inv, w) for w in points.values()]
        row["far_fp"] = M.keypoint_reference_far_share(res.labels, vox, vol.spacing)
        row["levels_right"] = _levels_right_at_points(res.labels, vol, points)
    return row


def evaluate_model(model: Path, index: Path, split: str = "val", batch: int = 1,
                   use_postprocess: bool = True, slice_smoothing: float | None = None,
                   tilt_deg: float = 0.0, roi: bool = True) -> dict:
    """Every case of ``split``, per data set: Dice (the structures a set labels), the
    far-false-positive share and the size-outlier ratio (whatever the set labels), levels all
    named right, key-point error (every annotated point: vertebral bodies and, where a set
    annotates them, discs). ``slice_smoothing``: that weight instead of the runtime's default
    (for A/B runs); ``roi``: False scores the full-field path (``scar infer --roi off``)."""
    cases = [c for c in read_index(index)
             if c.split == split and (c.seg is not None or not tilt_deg)]
    post = PostprocessConfig()
    if slice_smoothing is not None:
        post = replace(post, slice_smoothing=slice_smoothing)
    per_set: dict[str, list[dict]] = {}
    t0 = time.time()
    with Segmenter(model, batch=batch, use_postprocess=use_postprocess,
                   postprocess_config=post, roi=roi) as seg:
        for case in cases:
            per_set.setdefault(case.dataset, []).append(evaluate_case(seg, case, tilt_deg))
    out = {"split": split, "model": str(model), "postprocess": use_postprocess,
           "slice_smoothing": post.slice_smoothing if use_postprocess else 0.0,
           "tilt_deg": tilt_deg, "roi": roi,
           "wall_s": round(time.time() - t0, 1), "sets": {}}
    for name, rows in per_set.items():
        out["sets"][name] = _set_summary(rows)
    out["all"] = _set_summary([r for rows in per_set.values() for r in rows])
    return out


def _set_summary(rows: list[dict]) -> dict:
    scores = [r["score"] for r in rows if "score" in r]
    errs = [e for r in rows for e in r["kp_errors_mm"].values()]
    vb_errs = [e for r in rows for n, e in r["kp_errors_mm"].items()
               if L.BY_NAME[n].kind == "vertebra"]
    return {
        "cases": [r["case"] for r in rows],
        "summary": summarize(scores) if scores else {},
        "vertebra_centre_error_mm": float(np.mean(vb_errs)) if vb_errs else None,
        "keypoint_error_median_mm": float(np.median(errs)) if errs else None,
        "n_keypoints": len(errs),
        **M.far_fp_stats(r["far_fp"] for r in rows),
        "size_ratio_max": max((r["size_ratio"] or 0.0) for r in rows) if rows else None,
        "levels_right": float(np.mean([r["levels_right"] for r in rows])) if rows else None,
        "spine_found": float(np.mean([r["lumbar_spine_found"] for r in rows])) if rows else None,
        "per_case": {r["case"]: {k: v for k, v in r.items() if k not in ("score", "case")}
                     for r in rows},
    }


FACTS_MARKER = ("<!-- model-facts: tests/runtime/test_shipped_model.py checks these against the "
                "model -->")


def model_facts(model: Path) -> dict[str, str]:
    """What MODEL_CARD.md states about the shipped file, read from the file itself."""
    meta = read_model_metadata(model)
    return {
        "file": model.name,
        "size_bytes": str(model.stat().st_size),
        "sha256": file_sha256(model),
        "scar_version": meta.version,
        "model_size": str(meta.model_config.get("size")),
        "precision": meta.precision,
        "data_index_sha256": meta.data_index_sha256,
        "training_step": str(meta.training.get("step")),
    }


def facts_markdown(facts: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in facts.items())
    return f"{FACTS_MARKER}\n| fact | value |\n|---|---|\n{rows}\n"


def _f(x, pct=True):
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.1f}"


def markdown(card: dict) -> str:
    names = list(L.KEYPOINT_NAMES)
    head = ("| set (cases) | " + " | ".join(names)
            + " | VB | IVD | HD95 mm | levels right | far-FP max % | size ratio max "
              "| kp err median mm |")
    lines = [head, "|" + "---|" * (len(names) + 8)]
    rows = list(card["sets"].items()) + [("**all**", card["all"])]
    for name, e in rows:
        s = e.get("summary") or {}
        st = s.get("structures", {})
        cells = [_f(st.get(n, {}).get("dice_3d")) if st.get(n, {}).get("n") else "n/l"
                 for n in names]
        hd = [v.get("hd95_mm") for v in st.values() if v.get("hd95_mm") is not None]
        lines.append(f"| {name} ({len(e['cases'])}) | " + " | ".join(cells)
                     + f" | {_f(s.get('mean_vertebra_dice'))} | {_f(s.get('mean_disc_dice'))} | "
                     f"{_f(float(np.mean(hd)) if hd else None, False)} | "
                     f"{_f(e.get('levels_right'))} | {_f(e.get('far_fp_max'))} | "
                     f"{_f(e.get('size_ratio_max'), False)} | "
                     f"{_f(e.get('keypoint_error_median_mm'), False)} |")
    return ("\n".join(lines) + "\n\nDice in %, n/l = not labelled by that set. levels right: "
            "share of cases with every labelled level named right (key-point sets: every "
            "annotated centre inside the structure of its name). far-FP: share of predicted "
            "lumbar voxels > 20 mm from every labelled structure (sets labelling one kind only: "
            "the other kind's structures > 35 mm; key-point sets: > 45 mm from every "
            "annotated centre). size ratio: largest structure / median of its kind.\n")


def card(
    model: Path = typer.Option(..., help="The exported model (.onnx)."),
    data: Path = typer.Option(..., help="Data index JSON."),
    split: str = typer.Option("val", help="Which split of the index to score."),
    out: Path = typer.Option(..., help="The card's JSON (written atomically)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    no_postprocess: bool = typer.Option(False, "--no-postprocess",
                                        help="Score the bare network."),
    slice_smoothing: float | None = typer.Option(
        None, help="Neighbour weight of the slice smoothing (default: the runtime's)."),
    tilt: float = typer.Option(0.0, help="Score tilted copies of the masked cases (degrees)."),
    roi: str = typer.Option("on", help="on: spine-first, as `scar infer` by default; off: the "
                            "full field (`scar infer --roi off`)."),
) -> None:
    """Accuracy of an exported model on a split, per data set, as users get it."""
    if roi not in ("on", "off"):
        raise typer.BadParameter(f"--roi must be on or off, not {roi!r}")
    check_output_path(out, force=force, inputs=[model, data])
    doc = evaluate_model(model, data, split, use_postprocess=not no_postprocess,
                         slice_smoothing=slice_smoothing, tilt_deg=tilt, roi=roi == "on")
    atomic_write_text(out, json.dumps(doc, indent=1, default=str), force=force)
    print(facts_markdown(model_facts(model)))
    print(markdown(doc))


if __name__ == "__main__":
    typer.run(card)
