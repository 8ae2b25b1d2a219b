"""Partial-label loss and the mixed-supervision batch sampler, on real slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scar_runtime import labels as L
from scar_runtime.evaluation.dataset import read_index
from scar_runtime.pipeline.preprocess import PreprocessConfig
from scar_train.data import AugmentConfig, SliceSampler, gaussian_heatmaps, prepare_case
from scar_train.losses import heatmap_loss, partial_ce, partial_soft_dice

VB = torch.tensor([True] * 6 + [False] * 5)  # background + L1..L5
DISC = torch.tensor([True] + [False] * 5 + [True] * 5)
ALL = torch.ones(11, dtype=torch.bool)


def _logits_predicting(cls: int, h=4, w=4) -> torch.Tensor:
    z = torch.zeros(1, 11, h, w)
    z[:, cls] = 12.0
    return z


@pytest.mark.parametrize("loss", [partial_ce, partial_soft_dice])
def test_vertebra_case_puts_no_loss_on_discs(loss):
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 3  # L3 on the top half, background below
    one = torch.ones(1)

    def cost(logits, mask):
        return float(loss(logits, target, mask[None], one))

    good = _logits_predicting(0)
    good[0, 3, :2] = 24.0  # correct everywhere
    disc = good.clone()
    disc[0, 8, 2:] = 36.0  # predicts the L3/L4 disc where the mask says background
    # vertebra-only case: a disc where the mask has "background" is not penalised (it merges
    # into background, so it costs no more than predicting background there)...
    assert cost(disc, VB) <= cost(good, VB) + 1e-4
    # ...but a fully labelled case is, and so is a wrong vertebra
    assert cost(disc, ALL) > cost(good, ALL) + 0.05
    wrong_vb = good.clone()
    wrong_vb[0, 4, 2:] = 36.0
    assert cost(wrong_vb, VB) > cost(good, VB) + 0.05


def test_disc_case_puts_no_loss_on_vertebrae():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :1] = 7
    one = torch.ones(1)
    good = _logits_predicting(0)
    good[0, 7, :1] = 24.0
    vb = good.clone()
    vb[0, 2, 2:] = 36.0
    assert (
        float(partial_ce(vb, target, DISC[None], one))
        <= float(partial_ce(good, target, DISC[None], one)) + 1e-4
    )
    assert (
        float(partial_ce(vb, target, ALL[None], one))
        > float(partial_ce(good, target, ALL[None], one)) + 0.1
    )


def test_weak_samples_get_no_segmentation_loss():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    logits = torch.randn(2, 11, 4, 4, requires_grad=True)
    w = torch.tensor([1.0, 0.0])
    (
        partial_ce(logits, target, ALL.expand(2, 11), w)
        + partial_soft_dice(logits, target, ALL.expand(2, 11), w)
    ).backward()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0


def test_heatmap_peak_at_point():
    hm = gaussian_heatmaps({2: (101.5, 37.5)}, (256, 128), 6.0)
    assert hm.shape == (10, 64, 32)
    i, j = np.unravel_index(hm[2].argmax(), hm[2].shape)
    assert (i, j) == (25, 9)  # cell i has its centre at 4 i + 1.5
    assert hm[2].max() == pytest.approx(1.0) and hm[0].max() == 0


def test_heatmap_loss_pulls_on_the_peak_not_the_background():
    target = torch.from_numpy(gaussian_heatmaps({0: (130.0, 90.0)}, (256, 256), 6.0))[None]
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 0] = True
    zeros = torch.zeros_like(target)
    # the exact target costs nothing, with or without the weighting
    assert float(heatmap_loss(target, target, mask, 20.0)) == 0.0
    # an all-zero prediction (the collapse the first run fell into) costs ~21x more per unit of
    # peak error when the peak cells are weighted 1 + 20 * target
    plain = float(heatmap_loss(zeros, target, mask, 0.0))
    weighted = float(heatmap_loss(zeros, target, mask, 20.0))
    assert 0.001 < plain < 0.003  # the ~0.002 collapse level quoted in losses.py
    assert weighted > 10 * plain
    # channels the sample's set does not supervise carry no loss
    other = torch.zeros(1, 10, dtype=torch.bool)
    other[0, 3] = True
    assert float(heatmap_loss(zeros, target, other, 20.0)) == 0.0


def test_sampler_mixes_full_and_weak_cases(mini_index):
    cases = [c for c in read_index(mini_index) if c.split == "train"]
    prepared = [prepare_case(c, PreprocessConfig()) for c in cases]
    s = SliceSampler(prepared, crop=(128, 96), batch_size=6, weak_per_batch=2, seed=3)
    b = s.next_batch()
    assert b.image.shape == (6, 1, 128, 96) and b.heatmaps.shape == (6, 10, 32, 24)
    assert b.has_seg.tolist() == [True] * 4 + [False] * 2
    # weak (key-point-only) samples supervise the vertebral-body key-points only
    assert b.kp_mask[4:, :5].all() and not b.kp_mask[4:, 5:].any()
    assert not b.labels[4:].any()
    for i in range(4):  # every mask sample says which classes its set labels
        labelled = set(np.nonzero(b.class_mask[i])[0]) - {0}
        # + the anchor T12 (11) where the vertebra case lists it
        assert labelled in ({1, 2, 3, 4, 5, 11}, {1, 2, 3, 4, 5}, {6, 7, 8, 9, 10})
        assert set(np.unique(b.labels[i])) - {0} <= labelled
    # determinism
    b2 = SliceSampler(prepared, crop=(128, 96), batch_size=6, weak_per_batch=2, seed=3).next_batch()
    np.testing.assert_array_equal(b.image, b2.image)


def test_augmented_keypoints_follow_the_mask(mini_index):
    # with rotation and scale on, the heatmap peak of every structure present in the crop must
    # sit on that structure's (augmented) mask centroid
    case = [c for c in read_index(mini_index) if c.dataset == "vb"][0]
    pc = prepare_case(case, PreprocessConfig())
    s = SliceSampler(
        [pc],
        crop=(160, 128),
        batch_size=4,
        weak_per_batch=0,
        augment=AugmentConfig(rotation_deg=15),
        seed=1,
    )
    checked = 0
    for _ in range(3):
        b = s.next_batch()
        for i in range(4):
            for c in range(1, 6):
                m = b.labels[i] == c
                if m.sum() < 50:
                    continue
                rc = np.argwhere(m).mean(0)
                hm = b.heatmaps[i, c - 1]
                pi, pj = np.unravel_index(hm.argmax(), hm.shape)
                assert abs(4 * pi + 1.5 - rc[0]) <= 3 and abs(4 * pj + 1.5 - rc[1]) <= 3
                checked += 1
    assert checked >= 5


def test_rotation_range_is_the_configured_one(mini_index):
    """``--rotation-deg`` sets the in-plane rotation range: tilted spines in training (30 deg
    here, the shipped model's setting) and never beyond it."""
    case = [c for c in read_index(mini_index) if c.dataset == "vb"][0]
    pc = prepare_case(case, PreprocessConfig())
    for limit in (10.0, 30.0):
        s = SliceSampler([pc], batch_size=1, weak_per_batch=0,
                         augment=AugmentConfig(rotation_deg=limit), seed=2)
        angles = []
        for _ in range(400):
            A, scale = s._affine()
            R = A * scale  # A = rotation / scale
            angles.append(np.degrees(np.arctan2(R[1, 0], R[0, 0])))
        angles = np.abs(angles)
        assert angles.max() <= limit + 1e-9 and angles.max() > 0.95 * limit
        assert np.mean(angles > limit / 2) > 0.4  # uniform, not concentrated near 0


def test_weak_case_keypoints_land_on_the_vertebrae(mini_index):
    # the key-point-only case is the vertebra image with its mask centroids as key-points:
    # prepared key-points must fall inside the right vertebral body of the resampled mask
    cases = {c.id: c for c in read_index(mini_index)}
    cfg = PreprocessConfig()
    weak = prepare_case(cases["kp/06"], cfg)
    full = prepare_case(cases["vb/06"], cfg)
    assert weak.is_weak and sorted(weak.keypoints) == [0, 1, 2, 3, 4]
    for k, (r, c, lo, hi) in weak.keypoints.items():
        s = (lo + hi) // 2
        assert full.labels[int(round(r)), int(round(c)), s] == k + 1
    assert L.NUM_KEYPOINTS == 10


def test_folds_split_by_subject():
    from helpers import SHARED_INDEX

    from scar_train.config import TrainConfig
    from scar_train.train import split_for_run

    if not SHARED_INDEX.is_file():
        pytest.skip(f"the public data index is not at {SHARED_INDEX}")
    cases = read_index(SHARED_INDEX)
    pool = [c for c in cases if c.split == "train"]
    seen_val = []
    for k in range(5):
        cfg = TrainConfig(data=str(SHARED_INDEX), out="x", fold=k, folds=5)
        train, val = split_for_run(cases, cfg)
        assert val and train
        assert not {c.subject for c in train} & {c.subject for c in val}
        assert not [c for c in train + val if c.split == "val"]  # the held-out split stays out
        assert len(train) + len(val) == len(pool)
        seen_val += [c.id for c in val]
    # every training case is validated exactly once over the 5 folds
    assert sorted(seen_val) == sorted(c.id for c in pool)
    # one person in two data sets (key-point set and mask set) is never split across folds
    by_subject = {}
    for k in range(5):
        _, val = split_for_run(cases, TrainConfig(data="i", out="x", fold=k, folds=5))
        for c in val:
            by_subject.setdefault(c.subject, set()).add(k)
    assert all(len(v) == 1 for v in by_subject.values())
