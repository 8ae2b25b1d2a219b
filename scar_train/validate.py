"""Validation with the runtime's own pipeline: preprocess -> model -> argmax -> inverse -> metrics.

No post-processing: this measures the network itself.
"""

from __future__ import annotations

import numpy as np
import torch

from scar_runtime.dataset import Case
from scar_runtime.metrics import summarize
from scar_runtime.preprocess import PreprocessConfig, image_to_slices, slices_to_labels


@torch.no_grad()
def predict_labels(model: torch.nn.Module, volume: np.ndarray, spacing: tuple[float, float],
                   cfg: PreprocessConfig, *, batch: int = 8,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Working-layout volume -> working-layout label map (model classes)."""
    x, grid = image_to_slices(volume, spacing, cfg)
    out = np.zeros((x.shape[0],) + x.shape[2:], np.uint8)
    for i in range(0, x.shape[0], batch):
        logits = model(torch.from_numpy(x[i:i + batch]).to(device)).logits
        out[i:i + batch] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return slices_to_labels(out, grid)


def validate(model: torch.nn.Module, cases: list[Case], cfg: PreprocessConfig, *,
             device="cpu", batch: int = 8) -> dict:
    """Per-structure Dice etc. on cases with masks; the structures a set does not label are
    reported as not labelled (a vertebra set's disc predictions are not scored)."""
    was_training = model.training
    model.eval()
    scores = []
    try:
        for case in cases:
            if case.seg is None:
                continue
            vol = case.load_image()
            gt = case.load_seg(vol).data
            pred = predict_labels(model, vol.data, vol.inplane_spacing, cfg, batch=batch,
                                  device=device)
            scores.append(case.score(pred, gt, vol))
    finally:
        model.train(was_training)
    summary = summarize(scores) if scores else {}
    summary["cases"] = {s.name: s.mean_dice for s in scores}
    return summary
