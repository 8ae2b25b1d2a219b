"""Data index reader: supervision kinds, subjects, key-points, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import CHU_IMG, CHU_SEG, IVD_IMG, IVD_SEG, SHARED_INDEX, needs_shared

from scar_runtime.core.errors import DataIndexError
from scar_runtime.evaluation.dataset import index_hash, read_index


def _mini_index(tmp_path):
    for p in (CHU_IMG, CHU_SEG, IVD_IMG, IVD_SEG):
        shutil.copy(p, tmp_path / p.name)
    entries = [
        {"dataset": "vb", "case": "06", "image": CHU_IMG.name, "seg": CHU_SEG.name,
         "levels": ["L5", "L4", "L3", "L2", "L1", "T12", "T11"], "split": "train"},
        {"dataset": "ivd", "case": "25", "image": IVD_IMG.name, "seg": IVD_SEG.name,
         "levels": ["L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2"], "split": "val"},
    ]
    p = tmp_path / "index.json"
    p.write_text(json.dumps(entries))
    return p


def test_mini_index(tmp_path):
    vb, ivd = read_index(_mini_index(tmp_path))
    # the mini index's vertebra case lists T12: that anchor class is labelled there too
    assert vb.supervision == "vertebrae" and vb.labelled_classes == {1, 2, 3, 4, 5, 11}
    assert ivd.supervision == "discs" and ivd.labelled_classes == {6, 7, 8, 9, 10}
    assert vb.labelled_keypoints == {0, 1, 2, 3, 4}
    assert ivd.labelled_keypoints == {5, 6, 7, 8, 9}
    img = vb.load_image()
    seg = vb.load_seg(img)
    assert seg.data.shape == img.shape and set(np.unique(seg.data)) == {0, 1, 2, 3, 4, 5, 11}
    seg = ivd.load_seg()
    assert set(np.unique(seg.data)) == {0, 6, 7, 8, 9, 10}


def test_mismatched_seg_is_refused(tmp_path):
    p = _mini_index(tmp_path)
    entries = json.loads(p.read_text())
    entries[0]["seg"] = IVD_SEG.name
    p.write_text(json.dumps(entries))
    vb = read_index(p)[0]
    with pytest.raises(Exception, match="shape"):
        vb.load_seg(vb.load_image())


@pytest.mark.parametrize("content,word", [("not json", "JSON"), ('{"a": 1}', "list"),
                                          ('[{"case": "1"}]', "dataset"),
                                          ('[{"dataset": "d", "case": "1", "image": "x.nii.gz"}]',
                                           "not found")])
def test_bad_index(tmp_path, content, word):
    p = tmp_path / "index.json"
    p.write_text(content)
    with pytest.raises(DataIndexError, match=word):
        read_index(p)
    with pytest.raises(DataIndexError, match="no such"):
        read_index(tmp_path / "missing.json")


@needs_shared
def test_shared_index():
    cases = read_index(SHARED_INDEX)
    kinds = {c.dataset: c.supervision for c in cases}
    assert kinds == {"vb_myosegmentum": "vertebrae", "vb_chu2015": "vertebrae",
                     "vb_zukic2014": "vertebrae", "ivd_menezes2016": "discs",
                     "kp_zukic2014": "keypoints"}
    by_id = {c.id: c for c in cases}
    # one subject scanned twice (key-point set and mask set) shares a subject id
    assert by_id["kp_zukic2014/AKs7"].subject == by_id["vb_zukic2014/07"].subject == "AKs"
    assert by_id["kp_zukic2014/St1"].subject == by_id["vb_zukic2014/17"].subject
    # no subject in both splits
    train = {c.subject for c in cases if c.split == "train"}
    val = {c.subject for c in cases if c.split == "val"}
    assert not train & val
    kp = by_id["kp_zukic2014/St1"].load_keypoints()
    assert sorted(kp) == [0, 1, 2, 3, 4] and all(v.shape == (3,) for v in kp.values())
    vb = by_id["vb_chu2015/14"].load_keypoints()
    assert sorted(vb) == [0, 1, 2, 3, 4]  # T11/T12 centroids are not model key-points
    assert len(index_hash(SHARED_INDEX)) == 64
