"""Tests of scar_runtime.evaluation.metrics on real label volumes and on hand-worked examples.

The real fixtures are 2 mm copies of a vertebra-only case (Chu 2015, case 06: T11-L5 labelled, no
discs) and a disc-only case (Menezes-Reis 2016, case 25), so partial labelling is exercised by the
data itself rather than by a toy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scar_runtime.evaluation.metrics import (
    NOT_LABELLED,
    CaseScore,
    centroids,
    dice,
    evaluate_case,
    hd95,
    keypoint_errors,
    level_identification,
    summarize,
)
from scar_runtime.labels import BY_NAME, DISC_IDS, STRUCTURES, VERTEBRA_IDS, verse_to_model

DATA_DIRS = (
    Path(__file__).resolve().parents[1] / "data",
    Path("/work/shared/data/fixtures"),
)
CHU = "fcs_vb2_chu_06_2mm_seg.nii.gz"
MENEZES = "fcs_ivd_menezes_25_2mm_seg.nii.gz"


def _load(fname: str) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    for d in DATA_DIRS:
        if (d / fname).is_file():
            img = nib.load(d / fname)
            # Already I,P,L: axis 2 is the sagittal slice axis, as metrics expects.
            assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
            seg = verse_to_model(np.asarray(img.dataobj))
            return seg, tuple(float(z) for z in img.header.get_zooms()[:3]), img.affine
    pytest.skip(f"fixture {fname} not found in {[str(d) for d in DATA_DIRS]}")


@pytest.fixture(scope="module")
def chu():
    # the lumbar structures only: these tests are about the scored classes 1-10, and the
    # T12 of this mask now maps to the anchor class 11 (unscored)
    seg, spacing, affine = _load(CHU)
    return np.where(seg > 10, 0, seg).astype(seg.dtype), spacing, affine


@pytest.fixture(scope="module")
def menezes():
    return _load(MENEZES)


def _shift(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Translate by k voxels along axis, filling with zeros (no wrap-around like np.roll)."""
    out = np.zeros_like(a)
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    if k >= 0:
        src[axis], dst[axis] = slice(0, a.shape[axis] - k), slice(k, None)
    else:
        src[axis], dst[axis] = slice(-k, None), slice(0, a.shape[axis] + k)
    out[tuple(dst)] = a[tuple(src)]
    return out


# ---------------------------------------------------------------------------------------------
# Dice
# ---------------------------------------------------------------------------------------------


def test_fixture_has_expected_partial_labels(chu, menezes):
    seg, _, _ = chu
    assert set(np.unique(seg)) == {0, *VERTEBRA_IDS}  # T11 background, T12 dropped, no discs
    seg, _, _ = menezes
    assert set(np.unique(seg)) == {0, *DISC_IDS}


def test_dice_self_is_one_and_unlabelled_is_not_labelled(chu):
    seg, spacing, affine = chu
    score = evaluate_case(seg, seg, spacing, affine, name="chu06")
    for s in score.structures:
        if s.class_id in VERTEBRA_IDS:
            assert s.labelled and s.status == "ok"
            assert s.dice_3d == 1.0
            assert s.hd95_mm == 0.0
            assert s.centroid_error_mm == 0.0
            assert s.identified is True
        else:  # discs are not labelled in this set: unknown, never scored 0 or 1
            assert not s.labelled
            assert s.status == NOT_LABELLED
            assert s.dice_3d is None and s.dice_2d_mid is None and s.hd95_mm is None
            assert s.centroid_error_mm is None and s.identified is None
    for cid in VERTEBRA_IDS:
        assert dice(seg == cid, seg == cid) == 1.0


def test_unlabelled_structure_stays_unscored_even_when_predicted(chu):
    seg, spacing, affine = chu
    pred = seg.copy()
    pred[(seg == BY_NAME["L3"].model_id) & (np.arange(seg.shape[0])[:, None, None] % 2 == 0)] = (
        BY_NAME["L3/L4"].model_id
    )
    s = evaluate_case(pred, seg, spacing, affine).structure("L3/L4")
    assert s.pred_present and not s.labelled and s.dice_3d is None
    d = s.to_dict()
    assert d["status"] == NOT_LABELLED and d["dice_3d"] is None


@pytest.mark.parametrize(("k", "axis"), [(1, 0), (3, 0), (-2, 1), (1, 2), (-3, 2)])
def test_dice_of_shifted_real_mask_matches_hand_count(chu, k, axis):
    seg, _, _ = chu
    for cid in VERTEBRA_IDS:
        a = seg == cid
        b = _shift(a, k, axis)
        # Count independently with slicing: B[i] = A[i - k], so A∩B pairs A[i] with A[i - k].
        n = a.shape[axis]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, n - abs(k)), slice(abs(k), n)
        inter = int(np.sum(a[tuple(lo)] & a[tuple(hi)]))
        kept = a[tuple(lo)] if k > 0 else a[tuple(hi)]  # voxels not shifted out of the array
        expected = 2 * inter / (int(a.sum()) + int(kept.sum()))
        assert 0.0 < expected < 1.0
        assert dice(b, a) == pytest.approx(expected, abs=1e-12)
        assert dice(a, b) == pytest.approx(expected, abs=1e-12)


def test_dice_hand_worked_boxes():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[0:4, 0:4, 0:4] = True  # 64 voxels
    b[1:5, 0:4, 0:4] = True  # 64 voxels, overlap 3*4*4 = 48
    assert dice(a, b) == 0.75  # 2*48 / 128
    a[:] = False
    b[:] = False
    a[0:2, 0:3, 0:4] = True  # 24 voxels
    b[1:4, 0:3, 0:4] = True  # 36 voxels, overlap 1*3*4 = 12
    assert dice(a, b) == pytest.approx(0.4)  # 24 / 60
    assert dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="both masks are empty"):
        dice(np.zeros_like(a), np.zeros_like(a))
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, a[:-1])


# ---------------------------------------------------------------------------------------------
# HD95
# ---------------------------------------------------------------------------------------------

ANISO = (0.7, 0.7, 4.0)


@pytest.mark.parametrize(("axis", "k"), [(0, 1), (0, 3), (1, 2), (2, 1), (2, 2)])
def test_hd95_of_shifted_plate_is_the_shift_in_mm(axis, k):
    # A one-voxel plate spanning the whole array is all surface, so after a shift along its normal
    # every surface distance in both directions is exactly k * spacing[axis].
    shape = (20, 18, 12)
    a = np.zeros(shape, bool)
    idx = [slice(None)] * 3
    idx[axis] = 4
    a[tuple(idx)] = True
    b = _shift(a, k, axis)
    assert hd95(a, b, ANISO) == pytest.approx(k * ANISO[axis], abs=1e-9)
    assert hd95(b, a, ANISO) == pytest.approx(k * ANISO[axis], abs=1e-9)


def test_hd95_is_symmetric_max_of_directed():
    # Prediction = the true plate plus a second plate 5 slices away (in mm: 20). From the truth
    # every distance is 0, from the prediction half the surface is 20 mm away: the symmetric HD95
    # must take the larger directed percentile.
    a = np.zeros((20, 18, 12), bool)
    a[:, :, 2] = True
    b = a.copy()
    b[:, :, 7] = True
    assert hd95(b, a, ANISO) == pytest.approx(5 * 4.0)
    assert hd95(a, b, ANISO) == pytest.approx(5 * 4.0)


def test_hd95_real_mask_self_and_shift(chu):
    seg, spacing, _ = chu
    for cid in VERTEBRA_IDS:
        m = seg == cid
        assert hd95(m, m, spacing) == 0.0
        # Translating by t moves every surface point by |t|, so no distance can exceed it.
        h = hd95(m, _shift(m, 2, 0), spacing)
        assert 0.0 < h <= 2 * spacing[0] + 1e-9
    m = seg == VERTEBRA_IDS[0]
    with pytest.raises(ValueError, match="empty"):
        hd95(m, np.zeros_like(m), spacing)
    with pytest.raises(ValueError, match="empty"):
        hd95(np.zeros_like(m), m, spacing)
    with pytest.raises(ValueError, match="spacing"):
        hd95(m, m, (1.0, 1.0))


def test_hd95_matches_literal_edt_definition(chu):
    # The definition, computed literally on the whole (uncropped) volume: surface = mask XOR its
    # 6-connected erosion, distances = distance_transform_edt(~surface, sampling=spacing) read on
    # the other surface, max of the two directed 95th percentiles. evaluate_case must agree too.
    from scipy import ndimage

    seg, _, affine = chu
    spacing = (0.9, 1.3, 3.0)
    st = ndimage.generate_binary_structure(3, 1)

    def surface(m):
        return m ^ ndimage.binary_erosion(m, structure=st)

    pred = np.zeros_like(seg)
    for cid in VERTEBRA_IDS:
        g = seg == cid
        p = ndimage.binary_dilation(_shift(g, 1, 2)) & ~_shift(g, 3, 0)
        p[:3, :3, 3 * cid : 3 * cid + 2] = True  # a stray blob in a corner, far from everything
        p[-1, 20:22, 10:12] = True  # and one on the array edge
        pred[p] = cid
    score = evaluate_case(pred, seg, spacing, affine)
    for cid in VERTEBRA_IDS:
        g, p = seg == cid, pred == cid
        sp, sg = surface(p), surface(g)
        d_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
        d_gp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
        expected = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
        assert expected > 0
        assert hd95(p, g, spacing) == pytest.approx(expected, rel=1e-9)
        assert score.structure(cid).hd95_mm == pytest.approx(expected, rel=1e-9)
        assert score.structure(cid).dice_3d == pytest.approx(dice(p, g), abs=1e-12)


def test_hd95_uses_spacing_not_voxels():
    a = np.zeros((12, 12, 12), bool)
    a[3, :, :] = True
    b = _shift(a, 2, 0)
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95(a, b, (2.5, 1.0, 1.0)) == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------------
# Centroids, key-points, level identification
# ---------------------------------------------------------------------------------------------


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def test_centroid_of_box_through_nontrivial_affine():
    labels = np.zeros((30, 25, 20), np.uint8)
    labels[4:10, 6:15, 3:6] = 3  # centre in voxels: (6.5, 10, 4)
    labels[20:21, 1:2, 19:20] = 7  # one voxel at (20, 1, 19)
    aff = np.eye(4)
    aff[:3, :3] = _rotation(30) @ np.diag([0.7, 0.9, 4.0])
    aff[:3, 3] = [-12.5, 40.0, 3.0]
    c = centroids(labels, aff)
    assert set(c) == {3, 7}
    np.testing.assert_allclose(c[3], aff[:3, :3] @ [6.5, 10.0, 4.0] + aff[:3, 3], atol=1e-9)
    np.testing.assert_allclose(c[7], aff[:3, :3] @ [20.0, 1.0, 19.0] + aff[:3, 3], atol=1e-9)
    with pytest.raises(ValueError, match="class ids"):
        centroids(labels + 20, aff)
    with pytest.raises(ValueError, match="integer"):
        centroids(labels.astype(float), aff)


def test_centroids_real_match_direct_mean(chu):
    seg, _, affine = chu
    c = centroids(seg, affine)
    assert set(c) == set(VERTEBRA_IDS)
    for cid in VERTEBRA_IDS:
        ijk = np.argwhere(seg == cid).mean(axis=0)
        np.testing.assert_allclose(c[cid], nib.affines.apply_affine(affine, ijk), atol=1e-9)
    # Craniocaudal order: axis 0 runs superior->inferior and world z falls with it.
    zs = [c[cid][2] for cid in VERTEBRA_IDS]
    assert np.all(np.diff(zs) < 0)


def test_keypoint_errors_omit_missing():
    gt = {1: np.array([0.0, 0.0, 0.0]), 2: np.array([10.0, 0.0, 0.0])}
    pred = {1: np.array([3.0, 4.0, 0.0]), 9: np.array([1.0, 1.0, 1.0])}
    assert keypoint_errors(pred, gt) == {1: 5.0}


def test_level_identification_swapped_levels(chu):
    seg, spacing, affine = chu
    l2, l3 = BY_NAME["L2"].model_id, BY_NAME["L3"].model_id
    pred = seg.copy()
    pred[seg == l2] = l3
    pred[seg == l3] = l2
    ident = level_identification(centroids(pred, affine), centroids(seg, affine))
    assert ident == {cid: cid not in (l2, l3) for cid in VERTEBRA_IDS}

    score = evaluate_case(pred, seg, spacing, affine)
    assert [s.identified for s in score.structures if s.labelled] == [
        cid not in (l2, l3) for cid in VERTEBRA_IDS
    ]
    assert score.identification_rate == pytest.approx(3 / 5)
    assert score.structure("L2").dice_3d == 0.0  # the swapped masks do not overlap at all


def test_level_identification_distance_threshold(chu):
    seg, _, affine = chu
    gt = centroids(seg, affine)
    l4 = BY_NAME["L4"].model_id
    for offset, expected in ((15.0, True), (25.0, False)):
        pred = dict(gt)
        # Move L4 sideways (left-right: away from every other level, which lie above/below).
        pred[l4] = gt[l4] + np.array([offset, 0.0, 0.0])
        assert np.linalg.norm(pred[l4] - gt[l4]) == pytest.approx(offset)
        ident = level_identification(pred, gt)
        assert ident[l4] is expected
        assert all(ident[k] for k in gt if k != l4)
    missing = {k: v for k, v in gt.items() if k != l4}
    assert level_identification(missing, gt)[l4] is False
    assert level_identification({}, {}) == {}


# ---------------------------------------------------------------------------------------------
# evaluate_case / summarize
# ---------------------------------------------------------------------------------------------


def test_evaluate_case_identity_real(chu, menezes):
    for seg, spacing, affine in (chu, menezes):
        score = evaluate_case(seg, seg, spacing, affine)
        assert score.mean_dice == 1.0
        assert score.identification_rate == 1.0
    seg, spacing, affine = chu
    score = evaluate_case(seg, seg, spacing, affine, name="chu")
    assert score.mean_vertebra_dice == 1.0 and score.mean_disc_dice is None
    d = score.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["name"] == "chu" and d["n_labelled"] == 5
    assert [s["status"] for s in d["structures"]] == ["ok"] * 5 + [NOT_LABELLED] * 5
    seg, spacing, affine = menezes
    score = evaluate_case(seg, seg, spacing, affine)
    assert score.mean_vertebra_dice is None and score.mean_disc_dice == 1.0


def test_evaluate_case_mid_slice_and_missing(chu):
    seg, spacing, affine = chu
    mid = seg.shape[2] // 2
    pred = seg.copy()
    l1, l5 = BY_NAME["L1"].model_id, BY_NAME["L5"].model_id
    pred[pred == l1] = 0  # L1 missed entirely
    pred[:, :, mid][pred[:, :, mid] == l5] = 0  # L5 missed on the mid-sagittal slice only
    score = evaluate_case(pred, seg, spacing, affine)
    s1 = score.structure("L1")
    assert (s1.status, s1.dice_3d, s1.dice_2d_mid) == ("missing", 0.0, 0.0)
    assert s1.hd95_mm is None and s1.centroid_error_mm is None and s1.identified is False
    s5 = score.structure(l5)
    assert s5.dice_2d_mid == 0.0 and 0.0 < s5.dice_3d < 1.0
    assert score.structure("L3").dice_2d_mid == 1.0
    # A slice outside every structure: nothing to compare on it -> None, not 0 or 1.
    empty = next(k for k in range(seg.shape[2]) if not seg[:, :, k].any())
    score = evaluate_case(seg, seg, spacing, affine, mid_slice=empty)
    assert all(s.dice_2d_mid is None for s in score.structures)
    with pytest.raises(ValueError, match="mid_slice"):
        evaluate_case(seg, seg, spacing, affine, mid_slice=seg.shape[2])


def test_evaluate_case_rejects_bad_input(chu):
    seg, spacing, affine = chu
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(seg[:-1], seg, spacing, affine)
    with pytest.raises(ValueError, match="class ids"):
        evaluate_case(seg, seg + 20, spacing, affine)
    with pytest.raises(ValueError, match="affine"):
        evaluate_case(seg, seg, spacing, affine[:3])


def test_summarize_counts_only_labelled(chu, menezes):
    cases = [
        evaluate_case(chu[0], chu[0], chu[1], chu[2], name="chu_a"),
        evaluate_case(_shift(chu[0], 1, 0), chu[0], chu[1], chu[2], name="chu_b"),
        evaluate_case(menezes[0], menezes[0], menezes[1], menezes[2], name="menezes"),
    ]
    summ = summarize(cases)
    json.dumps(summ, allow_nan=False)
    assert summ["n_cases"] == 3
    for st in STRUCTURES:
        row = summ["structures"][st.name]
        assert row["n"] == (2 if st.kind == "vertebra" else 1)
        assert row["n_missing"] == 0
    l3 = summ["structures"]["L3"]
    b = cases[1].structure("L3").dice_3d
    assert l3["dice_3d"] == pytest.approx((1.0 + b) / 2)
    assert summ["n_vertebra"] == 10 and summ["n_disc"] == 5
    assert summ["mean_disc_dice"] == 1.0
    assert summ["mean_vertebra_dice"] == pytest.approx(
        np.mean([s.dice_3d for c in cases[:2] for s in c.structures if s.labelled])
    )
    assert summ["identification_rate"] == 1.0
    empty = summarize([CaseScore("none", [])])
    assert empty["mean_dice"] is None and empty["identification_rate"] is None
    assert empty["structures"]["L1"]["status"] == NOT_LABELLED


def test_evaluate_case_on_a_clinical_sized_volume(chu):
    # Upsample the real case to ~ 432x392x78 (13M voxels, larger than a 381x381x76 scan) and score a
    # shifted copy, so every structure needs a real HD95.
    seg, _, affine = chu
    big = np.repeat(np.repeat(np.repeat(seg, 3, axis=0), 8, axis=1), 2, axis=2)
    pred = _shift(big, 2, 0)
    spacing = (2 / 3, 0.25, 1.0)
    aff = affine @ np.diag([1 / 3, 1 / 8, 1 / 2, 1])
    t0 = time.perf_counter()
    score = evaluate_case(pred, big, spacing, aff)
    elapsed = time.perf_counter() - t0
    print(f"evaluate_case {big.shape}: {elapsed:.2f} s", file=sys.stderr)
    assert 0.9 < score.mean_vertebra_dice < 1.0
    assert score.identification_rate == 1.0
    # The time is printed, not asserted: wall-clock bounds belong to benchmarks/.


def test_runtime_metrics_do_not_import_torch():
    # The lean runtime must install and run without torch; check in a fresh interpreter.
    code = "import sys, scar_runtime.evaluation.metrics; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_far_fp_of_a_one_kind_reference_gives_the_other_kind_35_mm():
    """Issue 26's definition: in a disc-only reference a body predicted 20-35 mm from the
    labelled discs (a correct L1 above the field's top disc) is not far; beyond 35 mm it is;
    a predicted disc keeps the 20 mm margin. A both-kind reference keeps 20 mm for all."""
    from scar_runtime.evaluation.metrics import (
        OTHER_KIND_MARGIN_MM,
        far_false_positive_share,
        masked_case_far_share,
    )

    sp = (1.0, 1.0, 1.0)
    disc, body = BY_NAME["L1/L2"].model_id, BY_NAME["L1"].model_id
    gt = np.zeros((100, 10, 10), np.uint8)
    gt[0:5] = disc
    pred = np.zeros_like(gt)
    pred[0:5] = disc  # right: 500 voxels
    pred[30:35] = body  # a body 26-30 mm from the disc: 500 voxels
    assert far_false_positive_share(pred, gt > 0, sp) == pytest.approx(0.5)
    assert masked_case_far_share(pred, gt > 0, gt, sp) == 0.0
    pred[60:65] = body  # 56-60 mm: beyond OTHER_KIND_MARGIN_MM
    assert OTHER_KIND_MARGIN_MM < 55
    assert masked_case_far_share(pred, gt > 0, gt, sp) == pytest.approx(500 / 1500)
    pred[60:65] = 0
    pred[30:35] = disc  # the labelled kind far off: 20 mm as before
    assert masked_case_far_share(pred, gt > 0, gt, sp) == pytest.approx(0.5)
    # both kinds labelled: 20 mm for every class
    both = gt.copy()
    both[6:8] = body
    pred[30:35] = body
    assert masked_case_far_share(pred, both > 0, both, sp) == \
        far_false_positive_share(pred, both > 0, sp) > 0


def test_far_fp_class_margins_for_every_class_replace_the_default():
    """``class_margins`` covering every class is that margin, not ``margin_mm``."""
    from scar_runtime.evaluation.metrics import far_false_positive_share

    disc, body = BY_NAME["L1/L2"].model_id, BY_NAME["L1"].model_id
    ref = np.zeros((100, 10, 10), bool)
    ref[0:5] = True
    pred = np.zeros(ref.shape, np.uint8)
    pred[30:35] = body  # 26-30 mm from the reference
    every = {c: 40.0 for c in (body, disc)}
    assert far_false_positive_share(pred, ref, (1, 1, 1), classes=(body, disc)) == 1.0
    assert far_false_positive_share(pred, ref, (1, 1, 1), classes=(body, disc),
                                    class_margins=every) == 0.0
