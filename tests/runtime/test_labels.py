from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import CHU_SEG, IVD_SEG, run_scar

from scar_runtime import labels as L


def test_label_map_shape():
    assert L.NUM_CLASSES == 14 and len(L.KEYPOINT_NAMES) == 10
    # the anchors come after the ten scored classes, whose values never change
    assert L.ANCHOR_IDS == (11, 12, 13)
    assert list(L.LUMBAR_IDS) == list(range(1, 11))
    assert [L.CLASS_NAMES[i] for i in L.ANCHOR_IDS] == ["T12", "T12/L1", "S1"]
    assert L.CLASS_NAMES[0] == "background" and L.CLASS_NAMES[1] == "L1"
    assert L.CLASS_NAMES[6] == "L1/L2" and L.CLASS_NAMES[10] == "L5/S1"
    assert L.VERTEBRA_IDS == (1, 2, 3, 4, 5) and L.DISC_IDS == (6, 7, 8, 9, 10)
    assert [L.BY_ID[i].name for i in L.CRANIOCAUDAL_ORDER] == [
        "L1", "L1/L2", "L2", "L2/L3", "L3", "L3/L4", "L4", "L4/L5", "L5", "L5/S1"]


@pytest.mark.parametrize("path", [CHU_SEG, IVD_SEG])
def test_verse_ids_round_trip_on_real_masks(path):
    verse = np.asanyarray(nib.load(str(path)).dataobj)
    model = L.verse_to_model(verse)
    assert model.max() <= 13
    lumbar = np.isin(verse, [s.verse_id for s in L.ALL_STRUCTURES])
    # lumbar structures and anchors round-trip exactly; everything else (T11, S2...) is
    # background
    np.testing.assert_array_equal(L.model_to_verse(model)[lumbar], verse[lumbar])
    assert (model[~lumbar] == 0).all()
    np.testing.assert_array_equal(L.verse_to_model(L.model_to_verse(model)), model)


def test_anchor_levels_map_to_their_classes_and_others_to_background():
    assert L.verse_to_model(np.array([18, 19, 20, 26, 27, 118, 119, 124])).tolist() == [
        0, L.T12_ID, 1, L.S1_ID, 0, 0, L.T12_L1_ID, 10]


def test_labels_json_cli():
    p = run_scar("labels", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["num_classes"] == 14
    assert d["classes"][3] == {"id": 3, "name": "L3", "kind": "vertebra", "verse_id": 22,
                               "color": list(L.BY_ID[3].color), "anchor": False}
    assert d["classes"][13]["name"] == "S1" and d["classes"][13]["anchor"] is True
    assert [k["name"] for k in d["keypoints"]] == list(L.KEYPOINT_NAMES)
