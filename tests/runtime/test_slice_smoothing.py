"""Softmax averaged with the neighbouring slices before the argmax (postprocess/slice_smoothing).

The streaming smoother against a direct whole-volume computation (synthetic probabilities: this
is arithmetic), and the real pipeline: the shipped model on the shipped sample gives the same
labels whatever the batch size, and smoothing changes some voxels but few (edges).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import REPO

from scar_runtime import Segmenter
from scar_runtime.postprocess import PostprocessConfig
from scar_runtime.postprocess.slice_smoothing import SliceSmoother

SAMPLE = REPO / "scar_runtime" / "sample" / "chu2015_14_crop_img.nii.gz"


def _direct(p: np.ndarray, w: float) -> np.ndarray:
    left = np.concatenate([p[:1], p[:-1]])
    right = np.concatenate([p[1:], p[-1:]])
    return ((1 - 2 * w) * p + w * (left + right)).argmax(1)


def _stream(p: np.ndarray, w: float, batch: int) -> np.ndarray:
    sm = SliceSmoother(len(p), w)
    out = np.full((len(p),) + p.shape[2:], 255, np.uint8)
    for start in range(0, len(p), batch):
        for first, lab in sm.push(start, p[start:start + batch]):
            out[first:first + len(lab)] = lab
    return out


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_streaming_equals_the_whole_volume_computation(n, batch):
    rng = np.random.default_rng(n * 10 + batch)
    p = rng.dirichlet(np.ones(5), size=(n, 6, 4)).transpose(0, 3, 1, 2).astype(np.float32)
    for w in (0.0, 0.25, 1 / 3):
        np.testing.assert_array_equal(_stream(p, w, batch), _direct(p, w))
    np.testing.assert_array_equal(_stream(p, 0.0, batch), p.argmax(1))
    if n == 1:  # a single slice (Tianchi-like) is its own argmax
        np.testing.assert_array_equal(_stream(p, 0.25, batch), p.argmax(1))


@pytest.mark.parametrize("w", [0.0, 0.25])
def test_ties_go_to_the_lower_class_as_argmax_does(w):
    """The plane-by-plane decision keeps np.argmax's rule: of equal maxima, the first class."""
    p = np.zeros((3, 4, 2, 2), np.float32)
    p[:, 1:3] = 0.5          # classes 1 and 2 tie everywhere
    p[:, :, 1, 1] = 0.25     # all four tie in one pixel
    got = _stream(p, w, 1)
    np.testing.assert_array_equal(got, _direct(p, w))
    assert got[:, 0, 0].tolist() == [1, 1, 1] and got[:, 1, 1].tolist() == [0, 0, 0]


def test_a_neighbourhood_majority_flips_a_lone_slice():
    """Slice 1 says class 1 by a hair; both neighbours say class 2 firmly: smoothed, class 2."""
    p = np.zeros((3, 3, 1, 1), np.float32)
    p[:, :, 0, 0] = [[0.1, 0.1, 0.8], [0.3, 0.36, 0.34], [0.1, 0.1, 0.8]]
    assert _stream(p, 0.0, 1)[:, 0, 0].tolist() == [2, 1, 2]
    assert _stream(p, 0.25, 1)[:, 0, 0].tolist() == [2, 2, 2]


def test_out_of_order_batches_and_bad_weights_are_refused():
    p = np.full((2, 2, 1, 1), 0.5, np.float32)
    sm = SliceSmoother(4, 0.25)
    list(sm.push(0, p))
    with pytest.raises(ValueError, match="in order"):
        list(sm.push(3, p[:1]))
    with pytest.raises(ValueError, match="weight"):
        SliceSmoother(4, 0.5)


def test_real_pipeline_is_batch_invariant_and_smoothing_changes_few_voxels():
    results = {}
    for batch, w in ((1, 0.25), (4, 0.25), (1, 0.0)):
        with Segmenter(batch=batch, backend="onnxruntime",
                       postprocess_config=PostprocessConfig(slice_smoothing=w)) as seg:
            results[batch, w] = seg.segment(SAMPLE).labels
    np.testing.assert_array_equal(results[1, 0.25], results[4, 0.25])
    smooth, plain = results[1, 0.25], results[1, 0.0]
    changed = smooth != plain
    assert changed.any(), "smoothing changed nothing on a real volume"
    assert changed.mean() < 0.02, f"smoothing changed {changed.mean():.1%} of the voxels"
