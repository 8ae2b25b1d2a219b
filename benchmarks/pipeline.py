"""The runtime's own pipeline, timed stage by stage, on any runner.

``Segmenter(runner=...)`` runs exactly the code users run (the PyTorch runner included) and
records its stages in ``result.timings``: ``preprocess_s`` (intensity statistics, normalisation,
resampling, padding), ``inference_s`` (runner calls) and ``postprocess_s`` (argmax, inverse
mapping, key-points, 3D post-processing). ``load_s`` and ``write_s`` are timed by the caller.
"""

from __future__ import annotations

import time

from scar_runtime.pipeline.segmenter import SegmentationResult, Segmenter


def timed_segment(seg: Segmenter, volume) -> tuple[SegmentationResult, dict]:
    """``seg.segment(volume)`` and its time split, plus the whole call as ``segment_s``."""
    t0 = time.perf_counter()
    result = seg.segment(volume)
    total = time.perf_counter() - t0
    return result, {**result.timings, "segment_s": total}
