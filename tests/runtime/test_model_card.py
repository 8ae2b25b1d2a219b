"""The model card's tilted copies (issue 26: tilted val cases, header unchanged)."""

from __future__ import annotations

import numpy as np
from helpers import CHU_IMG, CHU_SEG

from scar_runtime.evaluation.model_card import tilted
from scar_runtime.io import load_volume


def axis_deg(mask: np.ndarray) -> float:
    """The in-plane principal axis of a mask's projection (degrees, 0..180), in pixels."""
    r, c = np.nonzero(mask.any(axis=2))
    v = np.linalg.eigh(np.cov(np.stack([r, c])))[1][:, -1]
    return float(np.degrees(np.arctan2(v[1], v[0])) % 180)


def test_a_tilted_copy_rotates_image_and_mask_together_on_the_same_header():
    img = load_volume(CHU_IMG)
    seg = load_volume(CHU_SEG, as_labels=True)
    t_img, t_seg = tilted(img, 25, order=1), tilted(seg, 25, order=0, cval=0)
    np.testing.assert_array_equal(t_img.affine, img.affine)
    assert t_img.shape == img.shape and t_seg.shape == seg.shape
    assert set(np.unique(t_seg.data)) <= set(np.unique(seg.data))  # no new label values
    # the corners get the noise floor, not 0
    assert t_img.data[0, 0, 0] == np.float32(np.percentile(img.data, 0.5)).astype(img.data.dtype)
    turn = (axis_deg(t_seg.data > 0) - axis_deg(seg.data > 0)) % 180
    assert min(abs(turn - 25), abs(turn - 155)) < 3
