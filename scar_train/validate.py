"""Validation with the runtime's own pipeline: preprocess -> model -> argmax -> inverse -> metrics.

No post-processing: this measures the network itself. Every val set is judged, per set, with a
false-positive measure beside Dice (the v0.1 lesson: Dice on the structures a set labels cannot
see a class leaking over the background):
- mask cases: Dice on the structures the set labels, the far-false-positive share (predicted
  lumbar voxels > 20 mm from every labelled structure, whatever the set labels) and the size
  outlier ratio (largest structure / median of its kind);
- key-point cases: centre error (mm) of the key-points the file annotates, and the far share
  measured from the annotated centres.
"""

from __future__ import annotations

import numpy as np
import torch
from nibabel.affines import apply_affine

from scar_runtime.evaluation import metrics as M
from scar_runtime.evaluation.dataset import Case
from scar_runtime.pipeline.preprocess import PreprocessConfig, image_to_slices, slices_to_labels


@torch.no_grad()
def predict(model: torch.nn.Module, volume: np.ndarray, spacing: tuple[float, float],
            cfg: PreprocessConfig, *, batch: int = 8, device: torch.device | str = "cpu"):
    """Working-layout volume -> (label map, key-points (S, K, 2) network px, peak (S, K), grid)."""
    x, grid = image_to_slices(volume, spacing, cfg)
    out = np.zeros((x.shape[0],) + x.shape[2:], np.uint8)
    kps, peaks = [], []
    for i in range(0, x.shape[0], batch):
        o = model(torch.from_numpy(x[i:i + batch]).to(device))
        out[i:i + batch] = o.logits.argmax(1).to(torch.uint8).cpu().numpy()
        kps.append(o.keypoints.cpu().numpy())
        peaks.append(o.heatmaps.flatten(2).amax(-1).cpu().numpy())
    return slices_to_labels(out, grid), np.concatenate(kps), np.concatenate(peaks), grid


def predict_labels(model: torch.nn.Module, volume: np.ndarray, spacing: tuple[float, float],
                   cfg: PreprocessConfig, *, batch: int = 8,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Working-layout volume -> working-layout label map (model classes)."""
    return predict(model, volume, spacing, cfg, batch=batch, device=device)[0]


def keypoint_errors_mm(case: Case, vol, kp: np.ndarray, peak: np.ndarray, grid) -> list[float]:
    """World-mm error of each annotated key-point, read on the slice where its heatmap peaks."""
    errs = []
    for k, world in case.load_keypoints().items():
        s = int(peak[:, k].argmax())
        r, c = grid.to_input(kp[s, k])
        pred_world = apply_affine(vol.affine, [r, c, s])
        errs.append(float(np.linalg.norm(pred_world - world)))
    return errs


def _world_to_voxel(vol, world: np.ndarray) -> np.ndarray:
    return apply_affine(np.linalg.inv(vol.affine), world)


def validate(model: torch.nn.Module, cases: list[Case], cfg: PreprocessConfig, *,
             device="cpu", batch: int = 8) -> dict:
    """Scores on every val case (mask and key-point ones), pooled and per data set."""
    was_training = model.training
    model.eval()
    scores, per_case, kp_errs = [], {}, {}
    try:
        for case in cases:
            vol = case.load_image()
            pred, kp, peak, grid = predict(model, vol.data, vol.inplane_spacing, cfg,
                                           batch=batch, device=device)
            row: dict = {"dataset": case.dataset}
            if case.seg is not None:
                raw = case.load_raw_seg(vol)
                gt = case.load_seg(raw=raw).data
                s = case.score(pred, gt, vol)
                scores.append(s)
                row.update(mean_dice=s.mean_dice, vb=s.mean_vertebra_dice,
                           ivd=s.mean_disc_dice,
                           far_fp=M.masked_case_far_share(pred, raw.data > 0, gt, vol.spacing))
            if case.supervision == "keypoints" or case.keypoints is not None:
                errs = keypoint_errors_mm(case, vol, kp, peak, grid)
                kp_errs[case.id] = errs
                row["kp_error_median_mm"] = float(np.median(errs)) if errs else None
                if case.seg is None:
                    pts = [_world_to_voxel(vol, w) for w in case.load_keypoints().values()]
                    row["far_fp"] = M.keypoint_reference_far_share(pred, pts, vol.spacing)
            row["size_ratio"] = M.size_outlier_ratio(pred)
            per_case[case.id] = row
    finally:
        model.train(was_training)
    summary = M.summarize(scores) if scores else {}
    summary["cases"] = per_case
    summary["per_dataset"] = _per_dataset(per_case)
    summary.update(M.far_fp_stats(r.get("far_fp") for r in per_case.values()))
    all_errs = [e for v in kp_errs.values() for e in v]
    summary["keypoint_error_median_mm"] = float(np.median(all_errs)) if all_errs else None
    # One number to pick the best checkpoint: Dice, discounted by far false positives.
    md = summary.get("mean_dice") or 0.0
    summary["selection_score"] = md * (1.0 - (summary["far_fp_mean"] or 0.0))
    return summary


def _per_dataset(per_case: dict) -> dict:
    out: dict = {}
    for row in per_case.values():
        d = out.setdefault(row["dataset"], {"n": 0})
        d["n"] += 1
        for k, v in row.items():
            if k != "dataset" and v is not None:
                d.setdefault(k, []).append(v)
    return {ds: {k: (float(np.mean(v)) if isinstance(v, list) else v) for k, v in d.items()}
            for ds, d in out.items()}
