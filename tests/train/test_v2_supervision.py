"""Model v2 supervision on real data: both-kind masks, disc key-points, "far is background".

- A SPIDER case (tests/data, CC BY 4.0) labels vertebral bodies AND discs: every lumbar class and
  the T12 / T12-L1 anchors are known, disc key-points are supervised.
- A vertebra-only case (vb_chu2015) says nothing about discs near its vertebrae, but a disc
  predicted far from every labelled structure is wrong: the loss sees it there and only there.
- A Tianchi key-point case (research use: read from ../shared only) supervises disc key-points,
  and its pixels far from every annotated centre are background for the cross-entropy.
- The far-false-positive measure against a hand computation on a real mask.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import CHU_IMG, CHU_SEG, SHARED_DATA, SPIDER_IMG, SPIDER_SEG

from scar_runtime import labels as L
from scar_runtime.evaluation.dataset import read_index
from scar_runtime.evaluation.metrics import far_false_positive_share
from scar_runtime.io import load_volume
from scar_train.data import AugmentConfig, SliceSampler, gap_weight_map, prepare_case
from scar_train.losses import UNKNOWN_MARGIN_MM, marginal_log_probs, scar_loss
from scar_train.model import ScarNetConfig, build_model
from scar_train.train import PREPROCESS, _batch_to_torch

# one worker builds this module's fixtures (make test runs pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("v2_supervision")

TIANCHI_INDEX = SHARED_DATA / "index_v2.json"


def _index(tmp_path, entries) -> list:
    p = tmp_path / "index.json"
    p.write_text(json.dumps(entries))
    return read_index(p)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("v2")
    entries = [
        {"dataset": "seg_spider2024", "case": "005", "image": str(SPIDER_IMG),
         "seg": str(SPIDER_SEG), "split": "train",
         "levels": ["L5/S1", "L5", "L4/L5", "L4", "L3/L4", "L3", "L2/L3", "L2", "L1/L2", "L1",
                    "T12/L1", "T12", "T11/T12", "T11"]},
        {"dataset": "vb_chu2015", "case": "06", "image": str(CHU_IMG), "seg": str(CHU_SEG),
         "split": "train", "levels": ["L5", "L4", "L3", "L2", "L1", "T12", "T11"]},
    ]
    spider, chu = _index(d, entries)
    return {"spider": spider, "chu": chu}


def _batch(pc, n=2, seed=0):
    s = SliceSampler([pc], crop=(128, 128), batch_size=n, weak_per_batch=0 if not pc.is_weak
                     else n, augment=AugmentConfig(enabled=False), seed=seed)
    return s.next_batch()


def test_both_kind_mask_labels_every_lumbar_class_and_the_t12_anchors(cases):
    c = cases["spider"]
    assert c.supervision == "both"
    assert c.labelled_classes == frozenset(L.LUMBAR_IDS) | {L.T12_ID, L.T12_L1_ID}
    assert c.labelled_keypoints == frozenset(range(L.NUM_KEYPOINTS))  # discs too
    pc = prepare_case(c, PREPROCESS)
    assert set(np.unique(pc.labels)) >= set(L.LUMBAR_IDS) | {L.T12_ID, L.T12_L1_ID}
    b = _batch(pc, n=4)
    assert b.class_mask[:, list(L.DISC_IDS) + list(L.VERTEBRA_IDS)].all()
    assert not b.class_mask[:, L.S1_ID].any()  # SPIDER leaves the sacrum unlabelled
    # disc key-points get heatmap targets where the disc is in the crop
    for i in range(4):
        for d in L.DISC_IDS:
            if (b.labels[i] == d).sum() > 20:
                assert b.kp_mask[i, L.keypoint_index(d)]
                assert b.heatmaps[i, L.keypoint_index(d)].max() > 0.5


def test_training_steps_on_a_both_kind_case_learn_discs(cases):
    """A few optimiser steps on one both-kind batch: every loss term is finite and the disc
    Dice term falls (discs are supervised, not merged into background)."""
    torch.manual_seed(0)
    pc = prepare_case(cases["spider"], PREPROCESS)
    b = _batch_to_torch(_batch(pc, n=2), "cpu")
    model = build_model(ScarNetConfig.from_size("small"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(4):
        terms = scar_loss(model(b["image"]), b, 50.0, 20.0)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        vals = terms.as_floats()
        assert all(np.isfinite(v) for v in vals.values())
        first = first or vals
    assert vals["seg_ce"] < first["seg_ce"]
    assert vals["rec"] > 0


def _pixel_nll(logits, batch):
    logp = marginal_log_probs(logits, batch["class_mask"], batch.get("distance"))
    return -logp.gather(1, batch["labels"][:, None]).squeeze(1)  # (N, H, W)


def _disc_over_background(logits):
    """The same logits with the background's evidence moved to L3/L4: a disc painted over it."""
    out = logits.clone()
    out[:, 8], out[:, 0] = logits[:, 0], logits[:, 8]
    return out


def test_vertebra_only_case_teaches_not_a_disc_only_far_from_its_vertebrae(cases):
    pc = prepare_case(cases["chu"], PREPROCESS)
    b = _batch_to_torch(_batch(pc, n=4, seed=3), "cpu")
    torch.manual_seed(0)
    logits = torch.randn(4, L.NUM_CLASSES, 128, 128) - 8
    logits[:, 0] += 12  # confident background everywhere
    bg = b["labels"] == 0
    near = bg & (b["distance"] < UNKNOWN_MARGIN_MM[8])
    far = bg & ~near
    assert near.any() and far.any()
    before = _pixel_nll(logits, b)
    after = _pixel_nll(_disc_over_background(logits), b)
    # near the vertebrae a disc may be there: painting it costs nothing
    torch.testing.assert_close(after[near], before[near])
    # far from every labelled structure it is background: painting it costs a lot
    assert float((after[far] - before[far]).min()) > 5.0
    # the v0.1 loss (no distance map) could not see it anywhere
    nod = {k: v for k, v in b.items() if k != "distance"}
    torch.testing.assert_close(_pixel_nll(_disc_over_background(logits), nod)[bg],
                               _pixel_nll(logits, nod)[bg])


@pytest.mark.skipif(not TIANCHI_INDEX.is_file(), reason=f"{TIANCHI_INDEX} not present "
                    "(kp_tianchi2020 is research-use data and is never copied into the repo)")
def test_disc_keypoint_case_supervises_disc_points_and_far_background():
    tianchi = [c for c in read_index(TIANCHI_INDEX) if c.dataset == "kp_tianchi2020"][0]
    assert tianchi.labelled_kinds == {"vertebra", "disc"}
    assert tianchi.labelled_keypoints == frozenset(range(L.NUM_KEYPOINTS))
    pc = prepare_case(tianchi, PREPROCESS)
    assert set(pc.keypoints) == set(range(L.NUM_KEYPOINTS))
    b = _batch(pc, n=2)
    assert b.kp_mask.all() and not b.has_seg.any()
    # every annotated point inside the crop has a unit-peak heatmap target, discs included
    for i in range(2):
        assert sum(b.heatmaps[i, k].max() > 0.9 for k in range(5, 10)) >= 1
    tb = _batch_to_torch(b, "cpu")
    torch.manual_seed(0)
    model = build_model(ScarNetConfig.from_size("small"))
    out = model(tb["image"])
    terms = scar_loss(out, tb, 50.0, 20.0)
    assert float(terms.seg_dice.detach()) == 0.0  # no mask: no Dice term
    assert float(terms.rec.detach()) > 0
    logits = out.logits.detach()
    at = tb["distance"] == 0  # within KEYPOINT_EXTENT_MM of an annotated centre
    far = tb["distance"] >= UNKNOWN_MARGIN_MM[8]
    assert at.any() and far.any()
    before, after = _pixel_nll(logits, tb), _pixel_nll(_disc_over_background(logits), tb)
    torch.testing.assert_close(after[at], before[at])  # at the structures: unknown
    assert bool((after[far] != before[far]).all())  # far from every centre: background


def test_far_false_positive_share_equals_a_hand_computation():
    """A real mask with a blob pasted 40 mm behind its most posterior labelled voxel."""
    v = load_volume(CHU_SEG, as_labels=True)
    raw = np.pad(v.data, ((0, 0), (0, 40), (0, 0)))  # room behind the spine (2 mm voxels)
    sp = np.array(v.spacing)
    pred = L.verse_to_model(raw)
    ref = raw > 0  # every labelled structure, T11 included
    back = int(np.nonzero(ref.any(axis=(0, 2)))[0].max())  # most posterior labelled column
    rows = np.nonzero(ref.any(axis=(1, 2)))[0]
    r0, s0 = int(rows.mean()), raw.shape[2] // 2
    c0 = back + 20  # 40 mm behind it
    pred[r0:r0 + 4, c0:c0 + 4, s0:s0 + 4] = 10  # a 64-voxel "L5/S1" blob
    n_blob = 64
    n_lumbar = int(np.isin(L.verse_to_model(raw), L.LUMBAR_IDS).sum())
    # by hand: every blob voxel is >= 40 mm from the reference, every true voxel is on it
    expected = n_blob / (n_blob + n_lumbar)
    assert far_false_positive_share(pred, ref, sp) == pytest.approx(expected, rel=1e-12)
    # a blob 10-18 mm behind a labelled voxel is not "far"
    near = L.verse_to_model(raw)
    r, _, sl = np.round(np.argwhere(raw == 22).mean(0)).astype(int)  # L3's centre row/slice
    c = int(np.nonzero(raw[r, :, sl])[0].max())  # L3's back wall there
    near[r:r + 4, c + 5:c + 9, sl:sl + 4] = 10
    assert far_false_positive_share(near, ref, sp) == 0.0


def test_gap_weight_map_equals_a_hand_computation():
    """U-Net's weight map with the nearest body and the nearest disc as the two "cells"."""
    lab = np.zeros((12, 4), np.uint8)
    lab[0:3] = L.VERTEBRA_IDS[2]  # a body, rows 0-2
    lab[5:8] = L.DISC_IDS[2]  # a disc, rows 5-7, after a 2-row background gap
    w = gap_weight_map(lab, mm_per_px=1.5, weight=10.0, sigma_mm=3.0)
    # row 3: 1 px from the body, 2 px from the disc -> 4.5 mm in all
    assert w[3, 0] == pytest.approx(1 + 10 * np.exp(-(4.5**2) / 18))
    assert w[4, 0] == pytest.approx(1 + 10 * np.exp(-(4.5**2) / 18))
    # row 11: 9 px below the body, 4 px below the disc
    assert w[11, 0] == pytest.approx(1 + 10 * np.exp(-(19.5**2) / 18))
    assert (w[lab > 0] == 1).all()  # structures keep weight 1: only the gap is stressed
    only_bodies = np.where(lab == L.DISC_IDS[2], 0, lab)
    assert (gap_weight_map(only_bodies, 1.0, 10.0, 3.0) == 1).all()  # no disc, no gap


def test_gap_weight_stresses_the_real_body_disc_gaps_of_a_both_kind_case_only(cases):
    spider = prepare_case(cases["spider"], PREPROCESS)
    chu = prepare_case(cases["chu"], PREPROCESS)

    def batch(pc, gap_weight):
        return SliceSampler([pc], crop=(128, 128), batch_size=4, weak_per_batch=0,
                            augment=AugmentConfig(enabled=False), seed=1,
                            gap_weight=gap_weight).next_batch()

    b = batch(spider, 10.0)
    body = np.isin(b.labels, [*L.VERTEBRA_IDS, L.T12_ID])
    disc = np.isin(b.labels, [*L.DISC_IDS, L.T12_L1_ID])
    # SPIDER's background gap between an endplate and its disc: next to both kinds at once
    grow = np.ones((1, 3, 3), bool)
    from scipy import ndimage
    gap = (b.labels == 0) & ndimage.binary_dilation(body, grow) & ndimage.binary_dilation(
        disc, grow)
    assert gap.sum() > 20, "the real SPIDER mask should have body-disc gaps"
    assert float(b.ce_weight[gap].min()) > 1 + 10 * np.exp(-(4.0**2) / 18)
    far = (b.labels == 0) & (b.distance > 30)
    assert far.any() and float(b.ce_weight[far].max()) < 1.01
    # off by default, and never where the gap is unknown (a vertebra-only set)
    assert batch(spider, 0.0).ce_weight is None  # off: the loss takes plain cross-entropy
    assert (batch(chu, 10.0).ce_weight == 1).all()
    # the weight makes a disc painted over the gap cost more, nowhere else
    tb = _batch_to_torch(b, "cpu")
    logits = torch.where(torch.nn.functional.one_hot(tb["labels"], L.NUM_CLASSES)
                         .permute(0, 3, 1, 2).bool(), 6.0, -6.0)
    painted = logits.clone()
    g = torch.from_numpy(gap)
    painted[:, 8][g], painted[:, 0][g] = 6.0, -6.0  # L3/L4 over every gap pixel
    plain = {k: v for k, v in tb.items() if k != "ce_weight"}
    extra = (scar_loss(_out(painted), tb, 50.0).seg_ce - scar_loss(_out(logits), tb, 50.0).seg_ce)
    extra_plain = (scar_loss(_out(painted), plain, 50.0).seg_ce
                   - scar_loss(_out(logits), plain, 50.0).seg_ce)
    assert float(extra_plain) > 0
    assert float(extra) > 5 * float(extra_plain)


def _out(logits):
    from types import SimpleNamespace

    n, _, h, w = logits.shape
    return SimpleNamespace(logits=logits, heatmaps=torch.zeros(n, L.NUM_KEYPOINTS, h // 4, w // 4))
