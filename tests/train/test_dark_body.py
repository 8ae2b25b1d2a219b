"""Issue 26, done-when: a vertebral body darkened to a degenerated structure's intensity is still
segmented and named by the SHIPPED model, through the runtime's Segmenter (its defaults).

On the hidden hold-out v2.3 left one body that is dark on T2 (degenerated, Modic-type signal)
unsegmented. Here each lumbar body of each SPIDER val volume (small: 13-24 sagittal slices, both
kinds labelled) is darkened in turn, in every slice, with a soft edge, to the mean intensity of
the darkest disc of the same scan (a real degenerated "black" disc of that scanner and sequence),
its texture kept; the volume goes through ``Segmenter().segment``.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import SHARED_DATA
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.evaluation.metrics import dice

INDEX = SHARED_DATA / "index_v2.json"
BODIES = ("L1", "L2", "L3", "L4", "L5")
DISC_VERSE = (120, 121, 122, 123, 124)

pytestmark = [
    pytest.mark.skipif(not INDEX.is_file(), reason=f"the public data sets are not at "
                       f"{SHARED_DATA} (set SCAR_SHARED_DATA): the test needs SPIDER val cases"),
    pytest.mark.xdist_group("dark_body"),
]


def darken_body(a: np.ndarray, seg: np.ndarray, verse_id: int) -> np.ndarray:
    """``a`` with body ``verse_id`` scaled towards the 2nd percentile until its mean equals the
    darkest labelled disc's mean (a Gaussian edge of 1 voxel in-plane)."""
    body = seg == verse_id
    target = min(float(a[seg == d].mean()) for d in DISC_VERSE if (seg == d).any())
    ref = float(np.percentile(a, 2))
    f = (target - ref) / (float(a[body].mean()) - ref)
    w = ndimage.gaussian_filter(body.astype(np.float32), (1.0, 1.0, 0))
    return (a + w * (ref + (a - ref) * f - a)).astype(np.float32)


def _body_dice(seg_model, pred) -> dict[str, float]:
    return {n: dice(pred == L.BY_NAME[n].model_id, seg_model == L.BY_NAME[n].model_id)
            for n in BODIES}


@pytest.fixture(scope="module")
def results():
    """case -> {"upright": dice per body, body name: dice per body with that body darkened}."""
    from scar_runtime.pipeline.segmenter import Segmenter

    cases = [e for e in json.loads(INDEX.read_text())
             if e["split"] == "val" and e["dataset"] == "seg_spider2024"]
    assert len(cases) >= 3
    out = {}
    with Segmenter() as seg_:
        for e in cases:
            img = nib.load(str(INDEX.parent / e["image"]))
            a = np.asanyarray(img.dataobj).astype(np.float32)
            seg = np.asanyarray(nib.load(str(INDEX.parent / e["seg"])).dataobj)
            gt = L.verse_to_model(seg)
            res = {}
            for name in (None, *BODIES):
                x = a if name is None else darken_body(a, seg, L.BY_NAME[name].verse_id)
                if name is not None:  # the darkening did what it says
                    body = seg == L.BY_NAME[name].verse_id
                    assert float(x[body].mean()) < 0.75 * float(a[body].mean())
                r = seg_.segment(nib.Nifti1Image(x, img.affine))
                res[name or "upright"] = _body_dice(gt, np.asanyarray(r.to_nifti().dataobj))
            out[e["case"]] = res
    return out


def test_a_body_darkened_to_a_degenerated_disc_is_still_segmented_and_named(results):
    """Segmented and named: the darkened body's Dice at its own level (a wrong name scores 0
    there) is at least 0.65, and no other body loses more than 10 points (the count holds).
    v2.3's lowest: 0.715 (SPIDER 065, L4; 0.853 upright)."""
    for case, res in results.items():
        for name in BODIES:
            d = res[name]
            assert d[name] >= 0.65, (case, name, d[name], res["upright"][name])
            for other in BODIES:
                if other != name:
                    assert d[other] >= res["upright"][other] - 0.10, (case, name, other)


@pytest.mark.xfail(strict=True, reason="v2.3 loses up to 14 Dice points on a darkened body: "
                   "issue 26")
def test_a_darkened_body_is_segmented_about_as_well_as_upright(results):
    """The v3 target: darkening a body costs it at most 5 Dice points."""
    worst = min((res[name][name] - res["upright"][name], case, name)
                for case, res in results.items() for name in BODIES)
    assert worst[0] >= -0.05, worst
