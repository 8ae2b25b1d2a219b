"""The geometry of straightening a tilted column (scar_runtime/pipeline/straighten.py), on synthetic
label volumes: the measured axis, the rotation's round trip, and the world positions of the
rotated copy. The whole pipeline on a real tilted spine is in test_levels.py."""

from __future__ import annotations

import numpy as np
import pytest

from scar_runtime.io.nifti import Volume
from scar_runtime.pipeline.preprocess import PreprocessConfig, iter_slice_batches
from scar_runtime.pipeline.straighten import InplaneRotation, column_axis_deg

SPACING = (0.8, 1.2, 4.0)  # anisotropic in-plane pixels: the rotation must work in mm
SHAPE = (220, 160, 5)


def _bar(angle_deg: float, centre=(90.0, 95.0), length=150.0, width=30.0) -> np.ndarray:
    """A column-like bar (in mm) at ``angle_deg`` from the head-feet axis, on every slice."""
    r, c = np.meshgrid(np.arange(SHAPE[0]) * SPACING[0], np.arange(SHAPE[1]) * SPACING[1],
                       indexing="ij")
    t = np.radians(angle_deg)
    along = (r - centre[0]) * np.cos(t) + (c - centre[1]) * np.sin(t)
    across = -(r - centre[0]) * np.sin(t) + (c - centre[1]) * np.cos(t)
    bar = (np.abs(along) < length / 2) & (np.abs(across) < width / 2)
    return np.repeat(bar[:, :, None], SHAPE[2], axis=2).astype(np.uint8)


@pytest.mark.parametrize("angle", [-35.0, -6.0, 0.0, 12.5, 30.0])
def test_the_axis_of_a_bar_is_its_angle(angle):
    assert column_axis_deg(_bar(angle), SPACING) == pytest.approx(angle, abs=0.5)


def test_a_stray_blob_far_off_the_column_does_not_pull_the_axis():
    lab = _bar(20.0)
    lab[190:215, 10:30] = 10  # 20 x 24 mm, ~70 mm from the bar's line
    untrimmed = np.degrees(np.arctan2(*_raw_axis(lab)[::-1]))
    assert abs(untrimmed - 20.0) > 2.0  # the blob does pull a plain fit...
    assert column_axis_deg(lab, SPACING) == pytest.approx(20.0, abs=1.0)  # ...not the trimmed


def _raw_axis(lab):
    rc = np.argwhere(lab.any(axis=2)) * np.asarray(SPACING[:2])
    d = rc - rc.mean(0)
    v = np.linalg.eigh(d.T @ d)[1][:, 1]
    return v if v[0] > 0 else -v


def test_nothing_or_a_round_blob_has_no_axis():
    assert column_axis_deg(np.zeros(SHAPE, np.uint8), SPACING) is None
    tiny = np.zeros(SHAPE, np.uint8)
    tiny[100:110, 80:90] = 3  # 8 x 12 mm: less than one body
    assert column_axis_deg(tiny, SPACING) is None
    assert column_axis_deg(_bar(10.0, length=40, width=40), SPACING) is None


@pytest.mark.parametrize("turn", [-30.0, 14.0, 41.0])
def test_rotating_turns_the_column_and_the_labels_come_back(turn):
    lab = _bar(20.0)
    rot = InplaneRotation.plan(SHAPE, SPACING, turn)
    turned = _rotate_labels(rot, lab)
    assert column_axis_deg(turned, SPACING) == pytest.approx(20.0 - turn, abs=0.7)
    # the rotated grid holds all of it
    assert np.count_nonzero(turned) == pytest.approx(np.count_nonzero(lab), rel=0.01)
    back = rot.labels_back(turned)
    assert back.shape == lab.shape
    dice = 2 * np.logical_and(back, lab).sum() / (np.count_nonzero(back) + np.count_nonzero(lab))
    assert dice > 0.99


def _rotate_labels(rot: InplaneRotation, lab: np.ndarray) -> np.ndarray:
    vol = _volume(lab.astype(np.float32))
    return np.round(rot.volume(vol).data).astype(np.uint8)


def _volume(data: np.ndarray) -> Volume:
    affine = np.diag(list(SPACING) + [1.0])
    affine[:3, 3] = (-40.0, 12.0, 7.0)
    return Volume(data=data, affine=affine, source=None)  # type: ignore[arg-type]  # unused here


def test_the_rotated_copy_keeps_world_positions():
    """A bright spot keeps its world position in the rotated copy (its affine is the input's
    composed with the rotation), so key-points read on it need no conversion."""
    data = np.zeros(SHAPE, np.float32)
    data[40:46, 120:125, 2] = 100.0
    vol = _volume(data)
    turned = InplaneRotation.plan(SHAPE, SPACING, 33.0).volume(vol)
    assert turned.spacing == pytest.approx(vol.spacing)

    def world_centre(v):
        w = v.data.astype(np.float64)
        idx = np.argwhere(w > 0)
        c = (idx * w[w > 0][:, None]).sum(0) / w[w > 0].sum()
        return v.affine[:3, :3] @ c + v.affine[:3, 3]

    np.testing.assert_allclose(world_centre(turned), world_centre(vol), atol=0.3)


def test_in_view_marks_the_rotated_image_not_its_filled_corners():
    rot = InplaneRotation.plan(SHAPE, SPACING, 30.0)
    view = rot.in_view()
    assert view.shape == rot.shape[:2]
    area_in = SHAPE[0] * SHAPE[1] * SPACING[0] * SPACING[1]
    assert view.sum() * SPACING[0] * SPACING[1] == pytest.approx(area_in, rel=0.02)
    assert not view[0, 0] and not view[-1, -1] and view[view.shape[0] // 2, view.shape[1] // 2]


def test_a_capped_grid_is_the_window_the_network_would_keep():
    """The network centre-crops grids larger than its max size (preprocess.plan_grid); the
    rotated grid is capped to exactly that window, so the network sees the same pixels."""
    cfg = PreprocessConfig(max_size=96)
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    full = InplaneRotation.plan(SHAPE, SPACING, 30.0, (1.0, 1.0))
    capped = InplaneRotation.plan(SHAPE, SPACING, 30.0, (1.0, 1.0), max_pixels=96)
    assert max(full.shape[:2]) > 96 and capped.shape[:2] == (96, 96)
    np.testing.assert_allclose(capped.matrix, full.matrix)
    vol = _volume(data)
    seen = []
    for r in (full, capped):
        _, batches = iter_slice_batches(r.volume(vol).data, (1.0, 1.0), cfg, 5,
                                        intensity=(0.0, 1.0, 0.5, 0.3))
        seen.append(next(batches)[1])
    np.testing.assert_allclose(seen[1], seen[0], atol=1e-5)
