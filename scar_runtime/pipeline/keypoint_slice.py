"""Which sagittal slice a key-point lies on: the centre of its heatmap's peak across slices.

The network draws a key-point's heatmap on every sagittal slice that cuts its body or disc, with
nearly the same peak height across the structure's width. The slice of the single highest peak
is then close to a coin toss between slices up to half a body apart, and it changed with the
in-plane window the network saw (the spine-first crop moved points by up to 18 mm). The centre
of the run of slices around the highest peak that reach half of it (the full width at half
maximum, the usual estimate of a peak's centre) is stable: on the 13 val volumes it halved the
median key-point error, with and without the crop (docs/performance.md, "Key-point slice").
"""

from __future__ import annotations

import numpy as np

# a slice belongs to the peak while its heatmap maximum is at least this share of the highest
HALF_MAXIMUM = 0.5


def peak_run(confidence: np.ndarray, share: float = HALF_MAXIMUM) -> tuple[int, int, int]:
    """``(first, highest, last)`` slice of the contiguous run around the highest value of
    ``confidence`` (one value per slice) whose values reach ``share`` of it."""
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.ndim != 1 or conf.size == 0:
        raise ValueError("confidence must be a non-empty 1D array (one value per slice)")
    top = int(conf.argmax())
    below = np.flatnonzero(conf < share * conf[top])
    first = int(below[below < top].max()) + 1 if (below < top).any() else 0
    last = int(below[below > top].min()) - 1 if (below > top).any() else conf.size - 1
    return first, top, last


def keypoint_slice(confidence: np.ndarray, share: float = HALF_MAXIMUM) -> tuple[float, int]:
    """``(centre, highest)``: the centre of the half-maximum run, in slices (may fall halfway
    between two), and the slice of the highest value, where the in-plane point is read."""
    first, top, last = peak_run(confidence, share)
    return (first + last) / 2.0, top
