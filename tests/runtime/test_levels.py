"""Levels named right on real volumes through the shipped model (`scar infer` defaults).

The volume is the shipped sample: a crop of val case vb_chu2015/14 (1 mm, T12-L5 labelled, never
trained on). Fields of view that start or end elsewhere must not shift the names; a header that
flips the head-feet axis (same world image) must give the same world-space result; a spine
tilted 15-30 degrees in the image keeps its names (the runtime straightens it); a cervical scan
must give "no lumbar spine" and no lumbar labels.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import CERVICAL_IMG, REPO, run_scar
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.commands.cli import NO_LUMBAR_SPINE_EXIT
from scar_runtime.evaluation import metrics as M
from scar_runtime.io import load_volume
from scar_runtime.pipeline.segmenter import Segmenter

SAMPLE = REPO / "scar_runtime" / "sample"
IMG, SEG = SAMPLE / "chu2015_14_crop_img.nii.gz", SAMPLE / "chu2015_14_crop_seg.nii.gz"


@pytest.fixture(scope="module")
def seg():
    with Segmenter(batch=1) as s:
        yield s


@pytest.fixture(scope="module")
def sample():
    img, gt = nib.load(str(IMG)), nib.load(str(SEG))
    return img, L.verse_to_model(np.asarray(gt.dataobj))


def _crop(img: nib.Nifti1Image, rows: slice) -> nib.Nifti1Image:
    """Rows of axis 0 (superior->inferior here) with the affine shifted: same world positions."""
    return img.slicer[rows]


def _names_at_centres(labels: np.ndarray, gt: np.ndarray, full: np.ndarray | None = None,
                      min_share: float = 0.6) -> dict:
    """Predicted class at the centre of every lumbar structure in view: at least ``min_share``
    of its voxels in ``full`` (the uncropped reference) lie inside the crop."""
    out = {}
    for c in L.LUMBAR_IDS:
        vox = np.argwhere(gt == c)
        total = (full == c).sum() if full is not None else len(vox)
        if len(vox) and len(vox) >= min_share * total:
            out[L.BY_ID[c].name] = L.CLASS_NAMES[labels[tuple(np.round(vox.mean(0)).astype(int))]]
    return out


@pytest.fixture(scope="module")
def upright(seg, sample):
    """The untilted sample's result, segmented once for the tilt tests."""
    return _segment(seg, sample[0])


def _tilted(img: nib.Nifti1Image, angle: float, fill: str = "noise floor") -> nib.Nifti1Image:
    """The image data rotated in the sagittal plane (axes 0 and 1: head-feet, front-back).

    A real tilted scan has image in its corners; the rotated copy's new corners are filled at
    the image's noise floor (its 0.5th percentile: the normalisation's lower clip), where air
    is. Filling them with 0, far below this image's darkest air (35), moves the clip window
    and by itself breaks the network (``fill="zero"``: test_zero_filled_corners_keep_the_names)."""
    data = np.asarray(img.dataobj).astype(np.float32)
    cval = 0.0 if fill == "zero" else float(np.percentile(data, 0.5))
    data = ndimage.rotate(data, angle, axes=(0, 1), order=1, cval=cval)
    return nib.Nifti1Image(np.clip(np.round(data), 0, 255).astype(np.uint8), img.affine)


@pytest.fixture(scope="module")
def tilted(seg, sample):
    """angle -> the sample tilted by it, segmented (once per angle for the whole module)."""
    done = {}

    def get(angle):
        if angle not in done:
            done[angle] = _segment(seg, _tilted(sample[0], angle))
        return done[angle]
    return get


def _segment(seg, img):
    res = seg.segment(img)
    return res, np.asarray(res.to_nifti().dataobj)


def test_full_sample_levels_right(seg, sample):
    img, gt = sample
    res, lab = _segment(seg, img)
    assert res.report.lumbar_spine_found
    names = _names_at_centres(lab, gt)
    assert names == {n: n for n in names} and len(names) == 5


@pytest.mark.parametrize("rows, what", [(slice(22, None), "T12 and L1 at the top edge"),
                                        (slice(None, 222), "L5/S1 at the bottom edge")])
def test_levels_right_when_the_view_is_cut(seg, sample, rows, what):
    img, gt = sample
    res, lab = _segment(seg, _crop(img, rows))
    g = gt[rows]
    names = _names_at_centres(lab, g, gt)
    assert len(names) == 5, what
    assert names == {n: n for n in names}, f"{what}: {names} ({res.report.to_dict()})"


def test_three_crop_heights_give_the_same_names(seg, sample):
    img, gt = sample
    seen = []
    for rows in (slice(None, None), slice(30, 230), slice(60, None)):
        _, lab = _segment(seg, _crop(img, rows))
        seen.append(_names_at_centres(lab, gt[rows], gt))
    common = set.intersection(*(set(s) for s in seen))
    assert len(common) >= 3
    for name in common:
        assert {s[name] for s in seen} == {name}, seen


def test_header_flip_gives_the_identical_world_space_result(seg, sample, tmp_path):
    img, _ = sample
    data = np.asarray(img.dataobj)
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = data.shape[0] - 1
    aff = img.affine @ flip  # voxel i of the flipped file is voxel n-1-i of the original
    flipped = nib.Nifti1Image(data[::-1].copy(), aff, img.header)
    flipped.set_qform(aff, 1)
    flipped.set_sform(aff, 1)
    _, a = _segment(seg, img)
    rb, b = _segment(seg, flipped)
    np.testing.assert_array_equal(b[::-1], a)
    np.testing.assert_allclose(rb.to_nifti().affine, aff)


@pytest.mark.parametrize("angle", [-30, -15, 15, 30])
def test_a_tilted_spine_keeps_its_names_and_bodies(sample, upright, tilted, angle):
    """A patient lying obliquely, or an oblique acquisition, tilts the spine in the sagittal
    plane of the data itself (the header cannot undo it): names and bodies must survive. The
    network alone loses names at -30, -15 and +30 here (it learned +-10 degrees); the runtime
    straightens the column and segments it again (straighten.py)."""
    _, gt = sample
    g = ndimage.rotate(gt, angle, axes=(0, 1), order=0)
    res, lab = tilted(angle)
    names = _names_at_centres(lab, g)
    assert len(names) == 5 and names == {n: n for n in names}, (names, res.report.to_dict())
    for c in L.VERTEBRA_IDS:
        d, d0 = M.dice(lab == c, g == c), M.dice(upright[1] == c, gt == c)
        assert d >= d0 - 0.08, f"{L.BY_ID[c].name}: Dice {d:.3f} tilted vs {d0:.3f} upright"


ZERO_FILL_LIMIT = ("a known limit of the shipped model v2.3: the normalisation clips at the "
                   "volume's 0.5th percentile, and a block of zeros below this image's darkest "
                   "air (35) moves that clip and shifts every normalised value; the network "
                   "then loses L5 or more at each tilt tried (-30, -15, 15, 30), and a border "
                   "padded below a "
                   "scan's air does the same (vb_chu2015/14, 40 px: VB Dice 0.88 -> 0.59). "
                   "Mending it needs a normalisation that ignores fill, and a "
                   "model trained with it")


@pytest.mark.xfail(strict=True, reason=ZERO_FILL_LIMIT)
def test_zero_filled_corners_keep_the_names(seg, sample):
    """Resampling tools fill the corners of a rotated or re-gridded image with 0; where 0 is
    far below the scan's own air that must not change the answer. Today it does (strict xfail:
    a runtime or model that mends it makes this pass, and then the mark must go)."""
    img, gt = sample
    g = ndimage.rotate(gt, 15, axes=(0, 1), order=0)
    res, lab = _segment(seg, _tilted(img, 15, fill="zero"))
    names = _names_at_centres(lab, g)
    assert len(names) == 5 and names == {n: n for n in names}, (names, res.report.to_dict())


def test_a_tilted_spine_is_straightened_and_says_so(seg, sample, upright):
    """The upright sample (its column leans ~-6 degrees, the training median) is segmented as
    it is. Tilted by -30 degrees, on 0.8 mm pixels (not the network's 1 mm, so the rotated grid
    differs from the input's), it is rotated back by about that much, with a warning and the
    angles in the report (stats.json); the names are right and every key-point lies inside the
    structure of its name on the input's grid."""
    rep = upright[0].report
    assert rep.column_axis_deg == pytest.approx(-6, abs=6)
    assert rep.straightened_deg is None and rep.straighten_passes == 0
    assert not [w for w in rep.warnings if "leans" in w]
    img, gt = sample
    fine = _zoomed(_tilted(img, -30), 1.25)
    g = ndimage.zoom(ndimage.rotate(gt, -30, axes=(0, 1), order=0), (1.25, 1.25, 1), order=0)
    res, lab = _segment(seg, fine)
    rep = res.report
    assert rep.straightened_deg == pytest.approx(-30, abs=8), rep.to_dict()
    assert rep.straighten_passes >= 1
    assert [w for w in rep.warnings if "leans" in w and "rotated" in w], rep.warnings
    assert rep.to_dict()["straightening"] == {"column_axis_deg": rep.column_axis_deg,
                                              "rotated_deg": rep.straightened_deg,
                                              "passes": rep.straighten_passes}
    names = _names_at_centres(lab, g)
    assert len(names) == 5 and names == {n: n for n in names}, (names, rep.to_dict())
    # the points come back where they were read, inside their structures, not re-placed
    assert not [m for m in rep.keypoint_moves if "after rotating back" in m], rep.keypoint_moves
    for kp in res.keypoints:
        c = L.BY_NAME[kp.name].model_id
        if (lab == c).any():
            assert lab[tuple(np.round(kp.voxel).astype(int))] == c, kp


def _zoomed(img: nib.Nifti1Image, factor: float) -> nib.Nifti1Image:
    """The same anatomy on pixels ``factor`` x smaller in the first two axes."""
    data = ndimage.zoom(np.asarray(img.dataobj).astype(np.float32), (factor, factor, 1), order=1)
    aff = img.affine.copy()
    aff[:3, :2] /= factor
    return nib.Nifti1Image(np.clip(np.round(data), 0, 255).astype(np.uint8), aff)


def test_without_straightening_a_spine_tilted_30_degrees_is_flagged(sample, upright, tmp_path):
    """`scar infer --no-straighten` still says when the column leans too far: the upright
    sample gets no warning; tilted by 30 degrees it gets one on stderr, with the tilt in
    stats.json and no rotation."""
    rep = upright[0].report
    assert rep.column_tilt_deg < 10
    assert not [w for w in rep.warnings if "tilted" in w]
    src = tmp_path / "tilted.nii.gz"
    nib.save(_tilted(sample[0], -30), str(src))
    p = run_scar("infer", src, "--no-straighten", "-o", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "tilted" in p.stderr and "leans" not in p.stderr, p.stderr
    stats = json.loads((tmp_path / "out" / "tilted_stats.json").read_text())
    post = stats["postprocessing"]
    assert post["column_tilt_deg"] > 20
    assert post["straightening"]["rotated_deg"] is None
    assert post["straightening"]["passes"] == 0


def test_cervical_scan_has_no_lumbar_spine(tmp_path):
    out = tmp_path / "out"
    p = run_scar("infer", CERVICAL_IMG, "-o", out)
    assert p.returncode == NO_LUMBAR_SPINE_EXIT, p.stderr
    assert "no lumbar spine found" in p.stderr
    stem = CERVICAL_IMG.name.removesuffix(".nii.gz")
    stats = json.loads((out / f"{stem}_stats.json").read_text())
    assert stats["lumbar_spine_found"] is False and stats["reason"]
    lab = load_volume(out / f"{stem}_seg.nii.gz", as_labels=True).data
    assert not np.isin(lab, L.LUMBAR_IDS).any()
