"""Post-processing on a real mask: swapped levels, duplicates, stray blobs, holes, order."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CHU_SEG

from scar_runtime.io import load_volume
from scar_runtime.labels import verse_to_model
from scar_runtime.postprocess import PostprocessConfig, postprocess

KP = PostprocessConfig(use_keypoints=True)


@pytest.fixture(scope="module")
def real():
    v = load_volume(CHU_SEG, as_labels=True)
    seg = verse_to_model(v.data)
    sp = np.array(v.spacing)
    kps = {c - 1: np.argwhere(seg == c).mean(0) * sp for c in range(1, 6)}
    return seg, sp, kps


def test_clean_mask_is_unchanged(real):
    seg, sp, kps = real
    out, rep = postprocess(seg, sp, kps, cfg=KP)
    np.testing.assert_array_equal(out, seg)
    assert not rep.corrections and not rep.order_warnings


def test_swapped_levels_are_fixed_with_keypoints_and_reported(real):
    seg, sp, kps = real
    sw = seg.copy()
    sw[seg == 2], sw[seg == 3] = 3, 2
    out, rep = postprocess(sw, sp, kps, cfg=KP)
    np.testing.assert_array_equal(out, seg)
    assert len(rep.corrections) == 2 and "relabelled L3" in " ".join(rep.corrections)
    # without key-points nothing can tell: the swap stays, and the order check reports it
    out, rep = postprocess(sw, sp, None)
    np.testing.assert_array_equal(out, sw)
    assert any("L2 is not above L3" in w or "L3" in w for w in rep.order_warnings)


def test_duplicated_level_is_relabelled(real):
    seg, sp, kps = real
    dup = seg.copy()
    dup[seg == 4] = 3  # the network called both L3 and L4 "L3"
    out, rep = postprocess(dup, sp, kps, cfg=KP)
    np.testing.assert_array_equal(out, seg)
    assert rep.corrections == [c for c in rep.corrections if "relabelled L4" in c]


def test_stray_blob_far_from_keypoints_is_dropped_even_if_large(real):
    seg, sp, kps = real
    blob = seg.copy()
    blob[0:12, 0:12, 0:12] = 5  # a false L5 far from the spine
    out, rep = postprocess(blob, sp, kps, cfg=KP)
    np.testing.assert_array_equal(out, seg)
    assert any("L5" in r for r in rep.removed)


def test_default_ignores_keypoints_and_keeps_the_largest_component(real):
    seg, sp, kps = real
    blob = seg.copy()
    blob[0:12, 0:12, 0:12] = 5  # a false L5, smaller than the real one
    sw = seg.copy()
    sw[seg == 2], sw[seg == 3] = 3, 2
    out, rep = postprocess(blob, sp, kps)  # default config
    np.testing.assert_array_equal(out, seg)
    assert any("L5: smaller component" in r for r in rep.removed)
    # key-points are not used by default: a swap stays, and the order check reports it
    out, rep = postprocess(sw, sp, kps)
    np.testing.assert_array_equal(out, sw)
    assert not rep.corrections and rep.order_warnings


def test_small_fragments_and_holes(real):
    seg, sp, kps = real
    noisy = seg.copy()
    noisy[2, 2, 2] = 1  # a one-voxel fragment
    z = np.argwhere(seg == 3)
    c = np.round(z.mean(0)).astype(int)
    noisy[c[0], c[1], c[2]] = 0  # a hole inside L3
    out, rep = postprocess(noisy, sp, kps, cfg=PostprocessConfig(min_component_mm3=50))
    np.testing.assert_array_equal(out, seg)
    assert any("fragment" in r for r in rep.removed)
