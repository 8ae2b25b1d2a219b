"""Repetition and case counts of ``make bench`` and ``make bench-quick``, and default paths.

Sized for a 2-core CPU and the small model (~2.8 GFLOP per 256x256 slice; a val volume is ~77
slices of 384x384), so that a run from a clean clone stays short, the quick one a few minutes (the
measured times: docs/performance.md, "Time budget"). Every worker also has a soft time budget: past
it, timing loops stop after their minimum repetitions (the JSON records how many were made), so a
slow backend cannot blow the total. The accuracy case set is never cut short, so every row is
scored on the same cases.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "scar_runtime" / "models"
DEFAULT_CHECKPOINT = MODELS_DIR / "scarnet_small.pt"
DEFAULT_ONNX = MODELS_DIR / "scarnet_small.onnx"
DEFAULT_ONNX_FP16 = MODELS_DIR / "scarnet_small_fp16.onnx"
DEFAULT_DATA = Path(os.environ.get("SCAR_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "index.json"
DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_CACHE = REPO / "benchmarks" / ".cache"


@dataclass(frozen=True)
class Settings:
    mode: str
    batches: tuple[int, ...] = (1, 8)
    size: int = 256  # latency input: size x size crops of real val slices
    latency_slices: int = 8  # distinct real slices the latency input is made of
    warmup: int = 3  # untimed calls before each latency series
    reps_batch1: int = 30  # timed calls at batch 1 (p50/p95 over these)
    reps_batchn: int = 10  # timed calls at batch > 1
    min_reps: int = 5  # never fewer, whatever the time budget says
    volume_reps: int = 3  # end-to-end runs of the reference volume per batch size
    max_cases: int | None = None  # val cases scored (None: all with a mask)
    calib_slices: int = 50  # INT8 calibration: TRAIN slices
    worker_budget_s: float = 150.0  # soft: past it, only minimum repetitions
    worker_timeout_s: float = 900.0  # hard: the worker is killed and its rows marked failed
    # INT8 (onnxruntime.quantization.quantize_static): which op types get QDQ pairs
    int8_op_types: tuple[str, ...] = ("Conv",)
    int8_keep_io_fp32: bool = True  # first conv + class/heatmap heads stay FP32
    # the default path's peak RSS on a large volume (issue 14: <= 2 GB at 512 x 512 x 200): the
    # reference volume resampled to this shape (voxels; 1 mm), full mode only
    big_volume: tuple[int, int, int] | None = (512, 512, 200)
    # the v0.1 export form's latency row (an extra export from the checkpoint, cached)
    v01_form: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


FULL = Settings(mode="full")
QUICK = Settings(mode="quick", warmup=2, reps_batch1=10, reps_batchn=3, min_reps=3,
                 volume_reps=1, max_cases=2, worker_budget_s=30.0, worker_timeout_s=300.0,
                 big_volume=None, v01_form=False)


def settings_for(quick: bool, **overrides) -> Settings:
    base = QUICK if quick else FULL
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
