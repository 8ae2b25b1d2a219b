"""Which real data the benchmark uses: val cases to score, the end-to-end reference volume, the
latency input (real val slices) and the INT8 calibration slices (TRAIN slices only).

Everything degrades gracefully: cases whose files are absent are skipped (and listed), and
without any data index the shipped sample volume stands in for the latency and end-to-end
inputs (accuracy is then skipped, with the reason in the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from scar_runtime.core.errors import ScarError
from scar_runtime.evaluation.dataset import Case, read_index
from scar_runtime.io import load_volume
from scar_runtime.pipeline.preprocess import PreprocessConfig, image_to_slices

SAMPLE_IMAGE = "chu2015_14_crop_img.nii.gz"


def sample_image() -> Path:
    return Path(str(resources.files("scar_runtime") / "sample" / SAMPLE_IMAGE))


@dataclass
class DataPlan:
    index: Path | None
    val_cases: list[Case] = field(default_factory=list)  # scored (have image + mask)
    train_cases: list[Case] = field(default_factory=list)  # calibration (have an image)
    volume_image: Path | None = None  # end-to-end reference volume
    volume_id: str = ""
    volume_shape: tuple[int, ...] = ()
    skipped: list[str] = field(default_factory=list)  # why cases/sets were left out
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"index": str(self.index) if self.index else None,
                "val_cases": [c.id for c in self.val_cases],
                "volume": {"case": self.volume_id, "image": str(self.volume_image),
                           "shape": list(self.volume_shape)},
                "skipped": self.skipped, "notes": self.notes}


def _shape(path: Path) -> tuple[int, ...]:
    return tuple(int(s) for s in nib.load(str(path)).shape[:3])


def _voxels(path: Path) -> int:
    return int(np.prod(_shape(path)))


def plan_data(index: Path | None, *, max_cases: int | None) -> DataPlan:
    """Pick the val cases (all with a mask, or ``max_cases`` of them: the smallest vertebra case
    and the smallest disc case first, so both Table-2 halves get numbers) and the reference
    volume for end-to-end timing (the largest scored case: the ~381x381x77 val volumes)."""
    plan = DataPlan(index=index if index and Path(index).is_file() else None)
    cases: list[Case] = []
    if plan.index is None:
        plan.notes.append(f"no data index at {index}: accuracy skipped, the shipped sample "
                          f"volume ({SAMPLE_IMAGE}) is the latency/end-to-end input")
    else:
        try:
            cases = read_index(plan.index, check_files=False)
        except ScarError as e:
            plan.notes.append(f"data index unusable ({e}): accuracy skipped")
            plan.index = None
    for c in cases:
        files = [c.image] + ([c.seg] if c.seg is not None else [])
        absent = [str(f) for f in files if not Path(f).is_file()]
        if absent:
            plan.skipped.append(f"{c.id} ({c.split}): missing {', '.join(absent)}")
            continue
        if c.split == "val" and c.seg is not None and c.labelled_classes:
            plan.val_cases.append(c)
        elif c.split == "train":
            plan.train_cases.append(c)
    val_nomask = [c.id for c in cases if c.split == "val" and c.seg is None]
    if val_nomask:
        plan.notes.append(f"val cases without a mask (not scored): {', '.join(val_nomask)}")
    size = {c.id: _voxels(c.image) for c in plan.val_cases}
    if max_cases is not None and len(plan.val_cases) > max_cases:
        by_size = sorted(plan.val_cases, key=lambda c: (size[c.id], c.id))
        first = [next((c for c in by_size if c.supervision == kind), None)
                 for kind in ("vertebrae", "discs")]
        chosen = [c for c in first if c is not None]
        chosen += [c for c in by_size if c not in chosen]
        plan.val_cases = sorted(chosen[:max_cases], key=lambda c: c.id)
    if plan.index is not None and not plan.val_cases:
        plan.notes.append(f"no val case with a mask in {plan.index}: accuracy skipped")
    if plan.val_cases:
        ref = max(plan.val_cases, key=lambda c: (size[c.id], c.id))
        plan.volume_image, plan.volume_id = Path(ref.image), ref.id
    else:
        plan.volume_image, plan.volume_id = sample_image(), f"sample/{SAMPLE_IMAGE}"
    plan.volume_shape = _shape(plan.volume_image)
    return plan


def fit(a: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Centre crop and/or pad the last two axes of ``a`` to size x size."""
    *lead, h, w = a.shape
    out = np.full((*lead, size, size), fill, dtype=a.dtype)
    r0, c0 = (h - size) // 2, (w - size) // 2
    src = a[..., max(r0, 0):max(r0, 0) + size, max(c0, 0):max(c0, 0) + size]
    r1, c1 = max(-r0, 0), max(-c0, 0)
    out[..., r1:r1 + src.shape[-2], c1:c1 + src.shape[-1]] = src
    return out


def volume_slices(image: Path, cfg: PreprocessConfig) -> np.ndarray:
    """A volume through the runtime's own preprocessing: (slices, 1, H, W) float32."""
    vol = load_volume(image)
    x, _ = image_to_slices(vol.data, vol.inplane_spacing, cfg)
    return x


def latency_input(image: Path, cfg: PreprocessConfig, *, size: int, n: int) -> np.ndarray:
    """``n`` central sagittal slices of a real volume, preprocessed, centre-cropped/padded to
    ``size`` x ``size``: (n, 1, size, size) float32."""
    x = volume_slices(image, cfg)
    mid = x.shape[0] // 2
    idx = np.clip(np.arange(mid - n // 2, mid - n // 2 + n), 0, x.shape[0] - 1)
    return np.ascontiguousarray(fit(x[idx], size, float(x.min())))


def calibration_slices(cases: list[Case], cfg: PreprocessConfig, *, size: int, n: int,
                       max_cases: int = 10) -> tuple[np.ndarray, list[str]]:
    """``n`` TRAIN slices for INT8 calibration, spread over up to ``max_cases`` cases taken
    round-robin across data sets (so every contrast is seen) and evenly over each volume's
    central 80% of slices (where the spine is); (n, 1, size, size) float32 and the case ids."""
    by_set: dict[str, list[Case]] = {}
    for c in sorted(cases, key=lambda c: c.id):
        by_set.setdefault(c.dataset, []).append(c)
    order: list[Case] = []
    while any(by_set.values()) and len(order) < max_cases:
        for k in sorted(by_set):
            if by_set[k] and len(order) < max_cases:
                order.append(by_set[k].pop(0))
    if not order:
        return np.zeros((0, 1, size, size), np.float32), []
    per = [n // len(order) + (i < n % len(order)) for i in range(len(order))]
    out, used = [], []
    for case, k in zip(order, per, strict=True):
        if k == 0:
            continue
        x = volume_slices(case.image, cfg)
        lo, hi = int(0.1 * (x.shape[0] - 1)), int(round(0.9 * (x.shape[0] - 1)))
        idx = np.unique(np.linspace(lo, hi, k).round().astype(int))
        out.append(fit(x[idx], size, float(x.min())))
        used.append(case.id)
    return np.ascontiguousarray(np.concatenate(out)), used
