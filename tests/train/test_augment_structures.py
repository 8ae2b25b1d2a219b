"""Issue 26's hard-case augmentations on a real SPIDER slice (bodies and discs labelled)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import SPIDER_IMG, SPIDER_SEG
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.evaluation.dataset import read_index
from scar_runtime.pipeline.preprocess import PreprocessConfig
from scar_train.augment_structures import (
    BODY_IDS,
    DISC_IDS,
    StructureAugmentConfig,
    augment_structures,
    dark_reference,
    motion_blur,
    oblique_slice,
    scale_structure,
    squeeze_structure,
    thick_slices,
)
from scar_train.data import AugmentConfig, SliceSampler, prepare_case

pytestmark = pytest.mark.xdist_group("augment_structures")

PRE = replace(PreprocessConfig(), context_slices=1)
OFF = StructureAugmentConfig(signal_p=0, collapse_p=0, thick_p=0, motion_p=0, oblique_p=0)


@pytest.fixture(scope="module")
def spider(tmp_path_factory):
    d = tmp_path_factory.mktemp("aug")
    (d / "index.json").write_text(json.dumps([
        {"dataset": "seg_spider2024", "case": "005", "image": str(SPIDER_IMG),
         "seg": str(SPIDER_SEG), "split": "train",
         "levels": ["L5/S1", "L5", "L4/L5", "L4", "L3/L4", "L3", "L2/L3", "L2", "L1/L2", "L1",
                    "T12/L1", "T12", "T11/T12", "T11"]}]))
    return prepare_case(read_index(d / "index.json")[0], PRE)


@pytest.fixture(scope="module")
def slice_(spider):
    """(image (3, H, W), labels, distance) of the middle slice and its neighbours."""
    s = spider.image.shape[2] // 2
    x = np.moveaxis(spider.image[:, :, [s - 1, s, s + 1]], 2, 0).astype(np.float32)
    return x, spider.labels[:, :, s].copy(), spider.distance[:, :, s].astype(np.float32)


def _interior(lab, cls, px=4):
    return ndimage.binary_erosion(lab == cls, iterations=px)


def test_a_darkened_body_drops_to_the_target_level_and_its_labels_stay(slice_):
    x, lab, _ = slice_
    ref = dark_reference(x)
    out = scale_structure(x, lab, L.BY_NAME["L3"].model_id, 0.2, ref, edge_sigma_px=1.5)
    inside = _interior(lab, L.BY_NAME["L3"].model_id)
    assert inside.sum() > 200
    before = float(x[1][inside].mean())
    target = ref + (before - ref) * 0.2
    assert abs(float(out[1][inside].mean()) - target) < 0.02 * abs(before - ref)
    assert float(out[1][inside].mean()) < before - 0.5 * (before - ref)
    # the texture is kept (scaled, not flattened) and the neighbours' channels get the same map
    assert np.corrcoef(x[1][inside], out[1][inside])[0, 1] > 0.99
    assert float(out[0][inside].mean()) < float(x[0][inside].mean())
    # far from the body nothing changes
    far = ndimage.distance_transform_edt(lab != L.BY_NAME["L3"].model_id) > 8
    np.testing.assert_allclose(out[:, far], x[:, far], atol=1e-4)


def test_a_brightened_disc_gets_brighter_but_not_beyond_the_image(slice_):
    x, lab, _ = slice_
    disc = L.BY_NAME["L4/L5"].model_id
    out = scale_structure(x, lab, disc, 1.6, dark_reference(x))
    inside = _interior(lab, disc, 2)
    assert inside.sum() > 30
    assert float(out[1][inside].mean()) > float(x[1][inside].mean())
    assert float(out.max()) <= float(x.max()) + 1e-5


def test_a_squeezed_disc_is_thinner_and_image_labels_and_distance_move_together(slice_):
    x, lab, dist = slice_
    disc = L.BY_NAME["L3/L4"].model_id
    x2, y2, d2 = squeeze_structure(x, lab, dist, disc, 0.5)
    assert y2.dtype == lab.dtype and y2.shape == lab.shape
    area = (lab == disc).sum()
    assert area > 50
    assert 0.35 * area <= (y2 == disc).sum() <= 0.65 * area
    # the classes are the same; bodies are not squeezed (they come closer, within +-15%)
    assert set(np.unique(y2)) == set(np.unique(lab))
    for b in ("L3", "L4"):
        i = L.BY_NAME[b].model_id
        assert 0.85 <= (y2 == i).sum() / (lab == i).sum() <= 1.2
    # one warp for all: the label map drawn as an image and squeezed like the image lands on
    # the squeezed labels (up to the edges)
    xl, _, _ = squeeze_structure((lab == disc).astype(np.float32)[None], lab, dist, disc, 0.5)
    agree = ((xl[0] > 0.5) == (y2 == disc)).mean()
    assert agree > 0.998
    # the image's disc went with its labels: its mean inside the new disc stays a disc's
    inside = _interior(y2, disc, 1)
    assert inside.sum() > 10
    assert abs(float(x2[1][inside].mean()) - float(x[1][_interior(lab, disc, 1)].mean())) < 0.3
    assert np.isfinite(d2).all() and d2.min() >= 0


def test_thick_slices_average_the_neighbours_and_sigma_zero_like_is_the_slice(spider):
    s = spider.image.shape[2] // 2
    chans = np.array([s - 1, s, s + 1])
    thin = thick_slices(spider.image, chans, 0.05)
    np.testing.assert_allclose(thin, np.moveaxis(spider.image[:, :, chans], 2, 0), atol=1e-3)
    thick = thick_slices(spider.image, chans, 1.2)
    assert thick.shape == (3, *spider.image.shape[:2]) and thick.dtype == np.float32
    mean3 = spider.image[:, :, s - 2:s + 3].astype(np.float32).mean(2)
    # closer to the slab's mean than the single slice is
    single = spider.image[:, :, s].astype(np.float32)
    assert np.abs(thick[1] - mean3).mean() < np.abs(single - mean3).mean()
    # clamped at the ends of the volume: no index error, finite
    assert np.isfinite(thick_slices(spider.image, np.array([0, 0, 1]), 1.5)).all()


def test_motion_blur_smooths_along_its_direction_and_keeps_the_mean(slice_):
    x, _, _ = slice_
    out = motion_blur(x, 9, 0.0)  # horizontal: along the columns
    assert out.shape == x.shape
    assert abs(float(out.mean()) - float(x.mean())) < 0.01
    gc = lambda a: np.abs(np.diff(a[1], axis=1)).mean()  # noqa: E731
    gr = lambda a: np.abs(np.diff(a[1], axis=0)).mean()  # noqa: E731
    assert gc(out) < 0.6 * gc(x)
    assert gr(out) > 0.6 * gr(x)  # across the motion less changes


def test_probability_zero_is_the_identity_and_draws_nothing(slice_):
    x, lab, dist = slice_
    rng = np.random.default_rng(0)
    x2, y2, d2 = augment_structures(x, lab, dist, set(BODY_IDS + DISC_IDS), OFF, rng)
    assert x2 is x and y2 is lab and d2 is dist
    assert rng.random() == np.random.default_rng(0).random()


def test_the_sampler_with_the_augmentations_keeps_labels_on_the_image(spider):
    """Through the sampler (p = 1 each): every label map is still a SPIDER label set and its
    key-point targets sit on the (possibly squeezed) structures."""
    cfg = StructureAugmentConfig(signal_p=1, collapse_p=1, thick_p=1, motion_p=1, oblique_p=0.5)
    s = SliceSampler([spider], crop=(160, 160), batch_size=4, weak_per_batch=0, seed=2,
                     augment=AugmentConfig(structures=cfg), context_slices=1)
    checked = 0
    for _ in range(3):
        b = s.next_batch()
        assert b.image.shape == (4, 3, 160, 160) and np.isfinite(b.image).all()
        for i in range(4):
            assert set(np.unique(b.labels[i])) - {0} <= set(spider.labelled_classes)
            for c in L.LUMBAR_IDS:
                m = b.labels[i] == c
                if m.sum() < 40:
                    continue
                rc = np.argwhere(m).mean(0)
                hm = b.heatmaps[i, L.keypoint_index(c)]
                pi, pj = np.unravel_index(hm.argmax(), hm.shape)
                assert abs(4 * pi + 1.5 - rc[0]) <= 3 and abs(4 * pj + 1.5 - rc[1]) <= 3
                checked += 1
    assert checked >= 8
    # off (None, the runs before issue 26) and all-zero probabilities give the same batches
    a = SliceSampler([spider], crop=(96, 96), batch_size=2, weak_per_batch=0, seed=5,
                     context_slices=1).next_batch()
    z = SliceSampler([spider], crop=(96, 96), batch_size=2, weak_per_batch=0, seed=5,
                     augment=AugmentConfig(structures=OFF), context_slices=1).next_batch()
    np.testing.assert_array_equal(a.image, z.image)
    np.testing.assert_array_equal(a.labels, z.labels)


def test_an_oblique_plane_drifts_across_the_slices_and_takes_its_labels_along(spider):
    s = spider.image.shape[2] // 2
    vols = [(spider.image, 1), (spider.labels, 0), (spider.distance, 1)]
    flat = oblique_slice(vols, s, 0.0, 1.0, spider.slice_mm)
    np.testing.assert_array_equal(flat[1], spider.labels[:, :, s])
    np.testing.assert_allclose(flat[0], spider.image[:, :, s].astype(np.float32))
    img, lab, dist = oblique_slice(vols, s, 10.0, 1.0, spider.slice_mm)
    rows = spider.image.shape[0]
    assert img.shape == lab.shape == dist.shape == spider.image.shape[:2]
    assert lab.dtype == spider.labels.dtype
    # the middle row is still slice s; far rows come from other slices (the plane drifts by
    # tan(10 deg) * 1 mm / slice spacing per row), clamped to the volume
    np.testing.assert_array_equal(lab[rows // 2], spider.labels[rows // 2, :, s])
    z_top = s + np.tan(np.radians(10.0)) * (0 - rows / 2) / spider.slice_mm
    top = int(np.clip(np.rint(z_top), 0, spider.image.shape[2] - 1))
    assert top != s
    np.testing.assert_array_equal(lab[0], spider.labels[0, :, top])
    # every label comes from the volume's own label map at the same voxel as the image's
    for r in (10, rows // 3, rows - 10):
        z = float(np.clip(s + np.tan(np.radians(10.0)) * (r - rows / 2) / spider.slice_mm, 0,
                          spider.image.shape[2] - 1))
        np.testing.assert_array_equal(lab[r], spider.labels[r, :, int(np.rint(z))])
        lo = int(np.floor(z))
        hi = min(lo + 1, spider.image.shape[2] - 1)
        t = z - lo
        want = spider.image[r, :, lo].astype(np.float32) * (1 - t) + spider.image[r, :, hi] * t
        np.testing.assert_allclose(img[r], want, rtol=1e-5, atol=1e-4)
