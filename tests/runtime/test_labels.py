from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import CHU_SEG, IVD_SEG, run_scar

from scar_runtime import labels as L


def test_label_map_shape():
    assert L.NUM_CLASSES == 11 and len(L.KEYPOINT_NAMES) == 10
    assert L.CLASS_NAMES[0] == "background" and L.CLASS_NAMES[1] == "L1"
    assert L.CLASS_NAMES[6] == "L1/L2" and L.CLASS_NAMES[10] == "L5/S1"
    assert L.VERTEBRA_IDS == (1, 2, 3, 4, 5) and L.DISC_IDS == (6, 7, 8, 9, 10)
    assert [L.BY_ID[i].name for i in L.CRANIOCAUDAL_ORDER] == [
        "L1", "L1/L2", "L2", "L2/L3", "L3", "L3/L4", "L4", "L4/L5", "L5", "L5/S1"]


@pytest.mark.parametrize("path", [CHU_SEG, IVD_SEG])
def test_verse_ids_round_trip_on_real_masks(path):
    verse = np.asanyarray(nib.load(str(path)).dataobj)
    model = L.verse_to_model(verse)
    assert model.max() <= 10
    lumbar = np.isin(verse, [s.verse_id for s in L.STRUCTURES])
    # lumbar structures round-trip exactly; everything else (T11, T12, S1...) is background
    np.testing.assert_array_equal(L.model_to_verse(model)[lumbar], verse[lumbar])
    assert (model[~lumbar] == 0).all()
    np.testing.assert_array_equal(L.verse_to_model(L.model_to_verse(model)), model)


def test_thoracic_levels_map_to_background():
    assert L.verse_to_model(np.array([19, 20, 26, 119, 124])).tolist() == [0, 1, 0, 0, 10]


def test_labels_json_cli():
    p = run_scar("labels", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["num_classes"] == 11
    assert d["classes"][3] == {"id": 3, "name": "L3", "kind": "vertebra", "verse_id": 22,
                               "color": list(L.BY_ID[3].color)}
    assert [k["name"] for k in d["keypoints"]] == list(L.KEYPOINT_NAMES)
