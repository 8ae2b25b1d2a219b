"""Training configuration: one dataclass, saved as config.json in the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from scar_runtime.core.errors import ConfigError

# Fields that may differ between a run and its --resume (they do not change what is trained).
# precision: BF16 autocast is a speed setting for the CPU a run happens to be on (a run resumed
# on another machine may change it).
RESUMABLE_FIELDS = {"resume", "max_steps", "val_every", "log_every", "ckpt_every", "threads",
                    "device", "out", "data", "precision"}

# What a setting added later meant in a run saved before it existed (its behaviour then, which
# need not be today's default): lets --resume continue such runs.
ABSENT_MEANS = {"fine_refinement": False, "gap_weight": 0.0, "context_slices": 0,
                "rotation_deg": 10.0, "structure_signal_p": 0.0, "disc_collapse_p": 0.0,
                "thick_slice_p": 0.0, "motion_blur_p": 0.0, "oblique_slice_p": 0.0}

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    data: str
    out: str
    size: str = "small"
    epochs: int = 30
    steps_per_epoch: int = 100
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs)
    batch: int = 8
    weak_per_batch: int = 2  # key-point-only samples in each batch (paper: 2 full + 2 weak)
    disc_fraction: float = 0.25  # share of mask samples drawn from disc-only sets
    both_fraction: float = 0.35  # share drawn from sets labelling vertebrae AND discs (SPIDER)
    crop: int = 256
    rec_weight: float = 50.0  # lambda (paper sweeps 40..100)
    heatmap_pos_weight: float = 20.0  # heatmap MSE weight 1 + this * target (see losses.py)
    lr: float = 5e-4
    use_mcca: bool = True
    use_at: bool = True
    fine_refinement: bool = False  # stride-2 boundary refinement head (model/decoder.py)
    gap_weight: float = 0.0  # extra CE weight in body-disc gaps of both-kind masks (data.py)
    context_slices: int = 0  # 2.5D: neighbouring slices per side as input channels (0 = 2D)
    augment: bool = True
    # in-plane rotation drawn uniformly in +-this (degrees): tilted spines (a patient lying
    # obliquely, strong lordosis, an oblique acquisition) must not change the names
    rotation_deg: float = 10.0
    # issue 26's hard-case augmentations (augment_structures.py), per-sample probabilities:
    # one body or disc darkened/brightened, one disc squeezed, thick-slice blur, motion blur
    structure_signal_p: float = 0.3
    disc_collapse_p: float = 0.15
    thick_slice_p: float = 0.2
    motion_blur_p: float = 0.15
    oblique_slice_p: float = 0.2  # a plane tilted +-10 deg through the slices (mask cases)
    precision: str = "auto"  # fp32, bf16 (CPU autocast) or auto (train.resolve_precision)
    seed: int = 0
    fold: int | None = None
    folds: int | None = None
    val_every: int = 5  # epochs
    log_every: int = 10  # steps
    ckpt_every: int = 50  # steps: a killed run loses at most this many
    threads: int | None = None
    device: str = "auto"
    resume: bool = False
    init: str | None = None  # checkpoint whose weights start this run (fine-tuning)

    def __post_init__(self):
        if self.size not in ("small", "paper"):
            raise ConfigError(f"unknown size {self.size!r} (valid: small, paper)")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch < 1:
            raise ConfigError("epochs, steps-per-epoch and batch must be >= 1")
        if self.crop % 16:
            raise ConfigError(f"crop {self.crop} must be a multiple of 16")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("--max-steps must be >= 1")
        if (self.fold is None) != (self.folds is None):
            raise ConfigError("--fold and --folds go together")
        if self.folds is not None and not (self.folds >= 2 and 0 <= self.fold < self.folds):
            raise ConfigError(f"--fold must be in 0..{(self.folds or 1) - 1} and --folds >= 2")
        if self.gap_weight < 0:
            raise ConfigError(f"--gap-weight must be >= 0, not {self.gap_weight}")
        if not 0 <= self.context_slices <= 3:
            raise ConfigError(f"--context-slices must be in 0..3, not {self.context_slices}")
        if not 0 <= self.rotation_deg <= 180:
            raise ConfigError(f"--rotation-deg must be in 0..180, not {self.rotation_deg}")
        for k in ("structure_signal_p", "disc_collapse_p", "thick_slice_p", "motion_blur_p",
                  "oblique_slice_p"):
            if not 0 <= getattr(self, k) <= 1:
                raise ConfigError(f"--{k.replace('_', '-')} must be in 0..1, not "
                                  f"{getattr(self, k)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r} (valid: "
                              f"{', '.join(PRECISIONS)})")
        if self.weak_per_batch > self.batch:
            raise ConfigError("--weak-per-batch cannot exceed --batch")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> None:
        from scar_runtime.core.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1), force=True)

    def check_resumable_from(self, saved: dict) -> None:
        """Refuse --resume against a run trained with different settings."""
        mine = self.to_dict()
        saved = {**ABSENT_MEANS, **saved}
        diff = [k for k in mine if k not in RESUMABLE_FIELDS and saved.get(k) != mine[k]]
        if diff:
            k = diff[0]
            raise ConfigError(f"--resume: this run was started with {k}={saved.get(k)!r}, not "
                              f"{mine[k]!r} ({len(diff)} setting(s) differ: {', '.join(diff)})")
