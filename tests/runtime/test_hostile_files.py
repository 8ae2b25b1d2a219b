"""Hostile data indexes, checkpoints and evaluation folders (issue 13): one line and exit 1,
never an internal error, and nothing written before the input is known to be usable."""

from __future__ import annotations

import json
import os
import shutil
import time
import tracemalloc
import zipfile

import nibabel as nib
import numpy as np
import pytest
from helpers import CHU_SEG, REPO, assert_one_line_error, run_scar

from scar_runtime import labels as L
from scar_runtime.core.errors import DataIndexError, ModelError
from scar_runtime.evaluation.dataset import read_index

RELEASE_CKPT = REPO / "scar_runtime" / "models" / "scarnet_small.pt"

# --------------------------------------------------------------------------- data index


@pytest.mark.parametrize("edit,words", [
    (lambda e: e.update(image=5), "'image' must be a file path"),
    (lambda e: e.update(seg=["a.nii.gz"]), "'seg' must be a file path"),
    (lambda e: e.update(dataset={"name": "vb"}), "'dataset' must be a name"),
    (lambda e: e.update(case=[1, 2]), "'case' must be a name"),
    (lambda e: e.update(levels="L1"), "'levels' must be a list"),
    (lambda e: e.update(split={"train": True}), "unknown split"),
    (lambda e: e.update(extra=[[[[[[1]]]]]]), "nested too deeply"),
])
def test_malformed_index_entries_are_one_data_index_error(mini_index, edit, words):
    entries = json.loads(mini_index.read_text())
    edit(entries[0])
    mini_index.write_text(json.dumps(entries))
    with pytest.raises(DataIndexError) as e:
        read_index(mini_index)
    assert words in str(e.value) and "case #0" in str(e.value) and "\n" not in str(e.value)


def test_very_deep_json_index_is_refused(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DataIndexError, match="nested too deeply"):
        read_index(p)


def test_train_refuses_a_bad_index_before_writing_anything(mini_index, tmp_path):
    entries = json.loads(mini_index.read_text())
    entries[1]["image"] = 42
    mini_index.write_text(json.dumps(entries))
    run = tmp_path / "run"
    assert_one_line_error(run_scar("train", "--data", mini_index, "--out", run,
                                   "--max-steps", "1"), "'image' must be a file path")
    assert not run.exists()


def test_train_refuses_an_unreadable_image_before_writing_anything(mini_index, tmp_path):
    (mini_index.parent / "fcs_vb2_chu_06_2mm_img.nii.gz").write_bytes(b"not an image")
    run = tmp_path / "run"
    p = run_scar("train", "--data", mini_index, "--out", run, "--max-steps", "1",
                 env={"OMP_NUM_THREADS": "1"})
    assert_one_line_error(p, "gzip")
    assert not (run / "config.json").exists() and not (run / "log.jsonl").exists()


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_train_out_that_cannot_be_a_folder_is_one_line(mini_index, tmp_path, kind):
    f = tmp_path / "afile"
    f.write_text("x")
    out = f if kind == "file" else f / "run"
    assert_one_line_error(run_scar("train", "--data", mini_index, "--out", out,
                                   "--max-steps", "1"), "file")
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_train_out_in_a_read_only_folder_is_one_line(mini_index, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_one_line_error(run_scar("train", "--data", mini_index, "--out", ro / "run",
                                       "--max-steps", "1"), "not writable")
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------- checkpoints


def _resaved_checkpoint(tmp_path, **changes):
    torch = pytest.importorskip("torch")
    doc = torch.load(RELEASE_CKPT, map_location="cpu", weights_only=True)
    doc.update(changes)
    p = tmp_path / "bad.pt"
    torch.save(doc, p)
    return p


@pytest.mark.parametrize("changes,words", [
    ({"model_config": "{not json"}, "model_config is not valid JSON"),
    ({"model_config": "[1, 2]"}, "model_config is not a JSON object"),
    ({"step": "ten"}, "step 'ten' is not a whole number"),
    ({"step": -5}, "step -5"),
    ({"format_version": 99}, "format_version 99"),
    ({"model": {"w": 3}}, "not a dict of named weight tensors"),
    ({"preprocess": 7}, "preprocess is not a JSON string"),
])
def test_malformed_checkpoint_fields_are_one_model_error(tmp_path, changes, words):
    from scar_train.checkpoint import load_checkpoint

    with pytest.raises(ModelError) as e:
        load_checkpoint(_resaved_checkpoint(tmp_path, **changes))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_absurd_model_size_in_a_checkpoint_is_refused_before_building(tmp_path):
    from scar_train.checkpoint import load_checkpoint

    doc_cfg = json.loads(pytest.importorskip("torch").load(
        RELEASE_CKPT, map_location="cpu", weights_only=True)["model_config"])
    doc_cfg["block_channels"] = [200_000, 400_000]
    p = _resaved_checkpoint(tmp_path, model_config=json.dumps(doc_cfg))
    with pytest.raises(ModelError, match="block_channels = 200000 is outside"):
        load_checkpoint(p)  # scar export and --resume read checkpoints through this


def test_checkpoint_zip_bomb_is_refused_before_inflating(tmp_path):
    """The probe's 3 MB checkpoint that inflates to 3 GiB was read into memory first. Here:
    the release checkpoint plus one deflated entry of 1 GiB of zeros (about 1 MB on disk)."""
    from scar_train.checkpoint import load_checkpoint

    bomb = tmp_path / "bomb.pt"
    shutil.copy(RELEASE_CKPT, bomb)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        prefix = z.namelist()[0].split("/")[0]
        with z.open(f"{prefix}/data/99999", "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(64):
                f.write(chunk)
    assert bomb.stat().st_size < RELEASE_CKPT.stat().st_size + (8 << 20)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="would inflate"):
        load_checkpoint(bomb)
    elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"refused in {elapsed:.3f} s, peak Python allocation {peak / 2**20:.1f} MiB")
    assert peak < 64 << 20


def test_release_checkpoint_still_loads():
    from scar_train.checkpoint import load_checkpoint

    pytest.importorskip("torch")
    doc = load_checkpoint(RELEASE_CKPT)
    assert doc["step"] > 0 and isinstance(doc["model_config"], dict)


# --------------------------------------------------------------------------- evaluate


def _model_ids(tmp_path, name, stray: int | None = None):
    img = nib.load(str(CHU_SEG))
    data = L.verse_to_model(np.asanyarray(img.dataobj))
    if stray is not None:
        data[0, 0, 0] = stray
    p = tmp_path / name
    nib.save(nib.Nifti1Image(data.astype(np.uint8), img.affine, header=img.header), str(p))
    return p


def test_evaluate_refuses_two_predictions_of_one_case(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    _model_ids(pred, "06_seg.nii.gz")
    _model_ids(pred, "06.nii.gz")  # the same case name once the suffix is stripped
    shutil.copy(CHU_SEG, gt / "06_seg.nii.gz")
    assert_one_line_error(run_scar("evaluate", pred, gt), "both map to case '06'")


def test_evaluate_does_not_read_a_model_id_file_as_verse_after_one_stray_voxel(tmp_path):
    pred = _model_ids(tmp_path, "pred.nii.gz", stray=200)
    p = run_scar("evaluate", pred, CHU_SEG)
    assert_one_line_error(p, "--pred-labels model", "--pred-labels verse")
    assert "--labels " not in p.stderr  # the old hint named an option that does not exist
    p = run_scar("evaluate", pred, CHU_SEG, "--pred-labels", "model")
    assert_one_line_error(p, "value 200 is not a model class", "--pred-labels verse")
    # without the stray voxel the same file is read as model ids, and scores perfectly
    clean = _model_ids(tmp_path, "clean.nii.gz")
    p = run_scar("evaluate", clean, CHU_SEG, "--json", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "s.json").read_text())["cases"][0]["mean_dice"] == 1.0
