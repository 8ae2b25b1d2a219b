"""Slice preprocessing: exact inverse back to the input grid, normalisation, pad/crop records."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import CHU_IMG, CHU_SEG, SHARED_DATA, needs_shared

from scar_runtime.evaluation.metrics import dice
from scar_runtime.io import load_volume
from scar_runtime.labels import verse_to_model
from scar_runtime.pipeline.preprocess import (
    PreprocessConfig,
    image_to_slices,
    iter_slice_batches,
    labels_to_slices,
    normalise,
    plan_grid,
    slices_to_labels,
)


def _chu():
    img = load_volume(CHU_IMG)
    seg = load_volume(CHU_SEG, as_labels=True)
    return img, verse_to_model(seg.data)


def test_network_grid_is_network_friendly():
    img, _ = _chu()
    x, grid = image_to_slices(img.data, img.inplane_spacing, PreprocessConfig())
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1] == 1
    assert x.shape[0] == img.shape[2]  # one network input per sagittal slice
    assert x.shape[2] % 16 == 0 and x.shape[3] % 16 == 0
    # 2 mm input at 1 mm: twice the size, then padded to a multiple of 16
    assert grid.resampled_shape == (img.shape[0] * 2, img.shape[1] * 2)
    assert np.isfinite(x).all()


@pytest.mark.parametrize("cfg", [PreprocessConfig(), PreprocessConfig(spacing_mm=2.0),
                                 PreprocessConfig(fixed_size=(256, 64)),
                                 PreprocessConfig(fixed_size=(64, 256))])
def test_label_inverse_restores_input_grid_exactly(cfg):
    # Upsampling (2 mm -> 1 mm), identity, and crops/pads: every case where no information is
    # lost must come back voxel for voxel; pixels cropped away come back as background.
    img, seg = _chu()
    grid = plan_grid(seg.shape[:2], img.inplane_spacing, cfg)
    back = slices_to_labels(labels_to_slices(seg, grid), grid)
    assert back.shape == seg.shape
    if cfg.fixed_size is None:
        np.testing.assert_array_equal(back, seg)
    else:
        # the window that survives the crop, found by pushing an all-ones map through
        ones = np.ones_like(seg)
        window = slices_to_labels(labels_to_slices(ones, grid), grid).astype(bool)
        np.testing.assert_array_equal(back, np.where(window, seg, 0))
        rows, cols = np.nonzero(window[:, :, 0])
        # a fixed window of H x W network pixels at 1 mm covers H/2 x W/2 input pixels at 2 mm
        expect = [min(n, o // 2) for n, o in zip(seg.shape[:2], cfg.fixed_size, strict=True)]
        assert [np.ptp(rows) + 1, np.ptp(cols) + 1] == expect


def test_inverse_after_downsampling_is_close():
    # 2 mm -> 3 mm loses detail; nearest-neighbour back must still overlap almost everywhere.
    img, seg = _chu()
    grid = plan_grid(seg.shape[:2], img.inplane_spacing, PreprocessConfig(spacing_mm=3.0))
    back = slices_to_labels(labels_to_slices(seg, grid), grid)
    assert back.shape == seg.shape
    for c in (1, 3, 5):
        assert dice(back == c, seg == c) > 0.9


@needs_shared
def test_anisotropic_real_case_grid():
    path = SHARED_DATA / "kp_zukic2014" / "AKs5_img.nii.gz"
    vol = load_volume(path)
    assert vol.spacing == pytest.approx((0.7, 0.7, 4.0), abs=1e-3)
    x, grid = image_to_slices(vol.data, vol.inplane_spacing, PreprocessConfig())
    assert grid.resampled_shape == (358, 358)  # 512 * 0.7 = 358.4 mm at 1 mm
    assert x.shape == (vol.shape[2], 1, 368, 368)
    # a point maps to the network grid and back exactly
    rc = np.array([[100.0, 200.0], [0.0, 511.0]])
    np.testing.assert_allclose(grid.to_input(grid.to_network(rc)), rc)


def test_normalise_is_robust_and_zscored():
    img, _ = _chu()
    n = normalise(img.data, PreprocessConfig())
    assert abs(float(n.mean())) < 1e-3 and abs(float(n.std()) - 1) < 1e-3
    spiked = img.data.copy()
    spiked[0, 0, 0] = 1e6  # one hot pixel must not rescale the whole volume
    n2 = normalise(spiked, PreprocessConfig())
    assert np.abs(n2[1:] - n[1:]).max() < 1e-3


def test_max_size_crops_large_slices():
    cfg = PreprocessConfig(max_size=128)
    grid = plan_grid((400, 90), (1.0, 1.0), cfg)
    assert grid.out_shape == (128, 96) and grid.offset == (-136, 3)


def test_config_round_trip():
    cfg = PreprocessConfig(fixed_size=(256, 256))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        PreprocessConfig(clip_percentiles=(50, 10))


def test_fixture_spacing_matches_header():
    assert nib.load(str(CHU_IMG)).header.get_zooms() == pytest.approx((2.0, 2.0, 2.0))


# --- 2.5D input: neighbouring slices as channels -------------------------------------------

def test_context_channels_are_the_neighbouring_slices_clamped_at_the_ends():
    """Channel j of slice i is the 2D preprocessing of slice i + j - k, the edge slice repeated
    beyond the volume; the batch size does not change a value."""
    img, _ = _chu()
    flat, grid2d = image_to_slices(img.data, img.inplane_spacing, PreprocessConfig())
    cfg = PreprocessConfig(context_slices=2)
    assert cfg.input_channels == 5
    x, grid = image_to_slices(img.data, img.inplane_spacing, cfg)
    n = img.shape[2]
    assert grid == grid2d and x.shape == (n, 5) + flat.shape[2:]
    for i in range(n):
        for j in range(5):
            src = min(max(i + j - 2, 0), n - 1)
            np.testing.assert_array_equal(x[i, j], flat[src, 0])
    for batch in (1, 3):
        _, batches = iter_slice_batches(img.data, img.inplane_spacing, cfg, batch)
        got = np.concatenate([b for _, b in batches])
        np.testing.assert_array_equal(got, x)


def test_context_on_a_single_slice_image_repeats_it():
    img, _ = _chu()
    one = img.data[:, :, 10:11]
    x, _ = image_to_slices(one, img.inplane_spacing, PreprocessConfig(context_slices=1))
    assert x.shape[:2] == (1, 3)
    np.testing.assert_array_equal(x[0, 0], x[0, 1])
    np.testing.assert_array_equal(x[0, 2], x[0, 1])


@pytest.mark.parametrize("bad", [-1, 1.5, "1"])
def test_context_slices_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="context_slices"):
        PreprocessConfig(context_slices=bad)


def test_model_metadata_keeps_2d_models_readable_by_older_runtimes():
    """A 2D model is written as format 1 without the new key (what older scar-nets read); a
    2.5D model is format 2, which an older runtime refuses with "upgrade" instead of feeding it
    one channel. Both read back to the same config."""
    from scar_runtime.model_meta import ModelMetadata

    for k, version in ((0, "1"), (1, "2")):
        meta = ModelMetadata(preprocess=PreprocessConfig(context_slices=k), model_config={})
        props = meta.to_props()
        assert props["scar.format_version"] == version
        assert ("context_slices" in json.loads(props["scar.preprocess"])) == bool(k)
        assert ModelMetadata.from_props(props).preprocess.context_slices == k
