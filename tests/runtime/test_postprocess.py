"""Post-processing that knows the spine, on real masks: the column, names counted from an
anchor, cuts of leaks and far blobs, "no lumbar spine here", key-points inside their structures.

The inputs are real expert masks (vb_chu2015 case 06 at 2 mm: T11-L5)
with the kinds of damage a network does to them. The cervical fixture goes through the
model in test_levels.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CHU_SEG, SPIDER_SEG
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.evaluation.metrics import far_false_positive_share
from scar_runtime.io import load_volume
from scar_runtime.postprocess import PostprocessConfig, postprocess


@pytest.fixture(scope="module")
def real():
    v = load_volume(CHU_SEG, as_labels=True)
    seg = L.verse_to_model(v.data)  # T12 -> anchor class 11, T11 -> background
    assert (seg == L.T12_ID).any() and set(np.unique(seg)) >= set(L.VERTEBRA_IDS)
    return seg, np.array(v.spacing)


def _centroid(seg, c):
    return np.argwhere(seg == c).mean(0)


def test_clean_mask_is_unchanged_and_named_from_t12(real):
    seg, sp = real
    out, rep = postprocess(seg, sp)
    np.testing.assert_array_equal(out, seg)
    assert rep.lumbar_spine_found and rep.anchor == "T12" and rep.naming_confidence == 1.0
    assert not rep.corrections and not rep.order_warnings and not rep.warnings


def test_swapped_levels_are_renamed_by_counting(real):
    seg, sp = real
    sw = seg.copy()
    sw[seg == 2], sw[seg == 3] = 3, 2
    out, rep = postprocess(sw, sp)
    np.testing.assert_array_equal(out, seg)
    assert len(rep.corrections) == 2 and any("named L3" in c for c in rep.corrections)


def test_levels_shifted_at_the_top_are_renamed_by_counting_from_the_sacrum():
    """The hold-out failure at the top of the view: T12 called L1, L1 called L2, the T12/L1
    disc called L1/L2, ... while the lower levels are right. A real SPIDER mask (bodies AND
    discs, sacrum in view below the lowest disc): counting up the column from the disc above
    the sacrum names every structure right."""
    v = load_volume(SPIDER_SEG, as_labels=True)
    gt = L.verse_to_model(v.data)
    shifted = gt.copy()
    up = {L.T12_ID: 1, L.T12_L1_ID: 6, 1: 2, 6: 7}  # two "L2"s and two "L2/L3"s
    for c, to in up.items():
        shifted[gt == c] = to
    out, rep = postprocess(shifted, v.spacing)
    assert rep.anchor == "sacrum"
    for c in L.LUMBAR_IDS + (L.T12_ID, L.T12_L1_ID):
        m = gt == c
        assert (out[m] == c).mean() > 0.97, L.BY_ID[c].name
    assert any("counting from the sacrum" in c for c in rep.corrections)


def test_keypoints_vote_on_the_names(real):
    """No anchor in view and the classes one level off: the classes alone name the column
    wrong; key-points inside the right structures outvote them."""
    seg, sp = real
    no_t12 = np.where(seg == L.T12_ID, 0, seg).astype(np.uint8)
    off = no_t12.copy()
    for c in (1, 2, 3, 4):
        off[no_t12 == c] = c + 1  # L1 called "L2", ..., L4 called "L5"; L5 stays "L5"
    out, rep = postprocess(off, sp)
    assert (out[no_t12 == 1] == 2).all()  # without key-points: the network's shifted names
    kps = {c - 1: _centroid(seg, c) * sp for c in L.VERTEBRA_IDS}
    out, rep = postprocess(off, sp, kps)
    np.testing.assert_array_equal(out, no_t12)


def test_without_an_anchor_the_network_classes_name_the_levels(real):
    seg, sp = real
    no_t12 = np.where(seg == L.T12_ID, 0, seg).astype(np.uint8)
    out, rep = postprocess(no_t12, sp)
    np.testing.assert_array_equal(out, no_t12)
    assert rep.anchor == "network classes" and rep.naming_confidence == 1.0


def test_a_large_blob_far_from_the_column_is_dropped(real):
    seg, sp = real
    blob = seg.copy()
    # a false "L5/S1" disc larger than any real body, far from the spine (top-front corner)
    blob[0:30, 0:12, 0:30] = 10
    assert blob[0:30, 0:12, 0:30].size > max((seg == c).sum() for c in L.VERTEBRA_IDS)
    assert far_false_positive_share(blob, seg > 0, sp) > 0.3
    out, rep = postprocess(blob, sp)
    np.testing.assert_array_equal(out, seg)
    assert any("off the spinal column" in r for r in rep.removed)
    assert far_false_positive_share(out, seg > 0, sp) == 0.0


def test_a_disc_leaking_over_the_background_is_cut_to_the_column(real):
    seg, sp = real
    # a full field of view: the fixture is a 98 x 78 mm crop; pad it to 258 x 238 mm
    seg = np.pad(seg, ((0, 0), (40, 40), (40, 40)))
    leak = seg.copy()
    # "L3/L4" painted across the whole field of view, in the gap between L3 and L4
    r3 = np.nonzero((seg == 3).any(axis=(1, 2)))[0].max()
    r4 = np.nonzero((seg == 4).any(axis=(1, 2)))[0].min()
    assert r4 > r3 + 1
    band = leak[r3 + 1:r4]
    band[band == 0] = 8
    out, rep = postprocess(leak, sp)
    disc = out == 8
    assert disc.any(), "the real part of the disc stays"
    np.testing.assert_array_equal(out[~disc], seg[~disc])
    # what is left lies on the column: within its radius of the L3/L4 body centres (the fitted
    # curve passes within a few mm of them; the field of view is 98 x 78 mm)
    centre = (_centroid(seg, 3) + _centroid(seg, 4)) / 2 * sp
    d = np.linalg.norm((np.argwhere(disc) * sp - centre)[:, 1:], axis=1)
    assert d.max() <= PostprocessConfig().column_radius_mm + 6.0
    assert disc.sum() < 0.2 * (band == 8).sum()
    assert any("from the column cut" in r for r in rep.removed)


def test_a_spine_at_cervical_scale_is_not_a_lumbar_spine(real):
    """The real lumbar mask shrunk to cervical size (levels ~17 mm apart instead of ~37 mm):
    whatever classes a network gives it, it is not a lumbar spine."""
    seg, sp = real
    small = ndimage.zoom(seg, 0.45, order=0)
    out, rep = postprocess(small, sp)
    assert not rep.lumbar_spine_found and "apart" in rep.reason
    assert not out.any()
    # the same mask at its real size is one
    assert postprocess(seg, sp)[1].lumbar_spine_found


def test_empty_prediction_is_not_found(real):
    seg, sp = real
    out, rep = postprocess(np.zeros_like(seg), sp)
    assert not rep.lumbar_spine_found and rep.reason and not out.any()


def test_keypoints_are_moved_inside_their_structures(real):
    seg, sp = real
    kps = {c - 1: _centroid(seg, c) * sp for c in L.VERTEBRA_IDS}
    kps[1], kps[2] = kps[2], kps[1]  # the network swapped the L2 and L3 points
    kps[3] = np.array([0.0, 0.0, 0.0])  # and put L4's in a corner
    out, rep = postprocess(seg, sp, kps)
    moved = rep.keypoints_mm
    for c in L.VERTEBRA_IDS:
        idx = tuple(np.round(moved[c - 1] / sp).astype(int))
        assert out[idx] == c, f"key-point {L.BY_ID[c].name} is not inside it"
    np.testing.assert_allclose(moved[0], kps[0])  # already inside: untouched
    assert len(rep.keypoint_moves) == 3


def test_small_fragments_and_holes(real):
    seg, sp = real
    noisy = seg.copy()
    noisy[2, 2, 2] = 1  # a one-voxel fragment
    c = np.round(_centroid(seg, 3)).astype(int)
    noisy[c[0], c[1], c[2]] = 0  # a hole inside L3
    out, rep = postprocess(noisy, sp, cfg=PostprocessConfig(min_component_mm3=50))
    np.testing.assert_array_equal(out, seg)
    assert any("fragment" in r for r in rep.removed)
