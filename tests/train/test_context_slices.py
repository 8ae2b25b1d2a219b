"""2.5D input (``--context-slices K``): the slice and its K neighbours on each side as channels.

On real volumes (tests/data): the sampler's centre channel is the 2D sampler's slice, the
neighbours are the volume's own neighbouring slices, a single-slice key-point image repeats its
one slice; a 2D checkpoint starts a 2.5D model that computes exactly what the 2D one did; and a
2.5D run trains, exports (its ONNX takes 2K+1 channels and says so in its metadata) and runs
through `scar infer`.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from helpers import CHU_IMG, CHU_SEG, assert_one_line_error, run_scar

from scar_runtime.commands.cli import NO_LUMBAR_SPINE_EXIT
from scar_runtime.evaluation.dataset import read_index
from scar_runtime.pipeline.preprocess import PreprocessConfig
from scar_train.checkpoint import load_checkpoint
from scar_train.data import AugmentConfig, SliceSampler, prepare_case
from scar_train.model import ScarNetConfig, build_model
from scar_train.train import init_from_checkpoint

SMOKE = ["--batch", "2", "--crop", "64", "--val-every", "100", "--steps-per-epoch", "2",
         "--epochs", "1"]


def _prepared(tmp_path, mini_index):
    cases = {c.id: c for c in read_index(mini_index)}
    return prepare_case(cases["vb/06"], PreprocessConfig()), prepare_case(cases["kp/06"],
                                                                          PreprocessConfig())


def _draw(pc, k: int, seed: int = 3):
    s = SliceSampler([pc], batch_size=1, weak_per_batch=0, augment=AugmentConfig(enabled=False),
                     seed=seed, context_slices=k)
    return s.sample(pc)


def test_sampler_channels_are_the_slice_and_its_real_neighbours(tmp_path, mini_index):
    full, _ = _prepared(tmp_path, mini_index)
    d2, d3 = _draw(full, 0), _draw(full, 1)
    x2, y2, x3, y3 = d2.image, d2.labels, d3.image, d3.labels
    assert x2.shape == (1, 256, 256)
    assert x3.shape == (3,) + x2.shape[1:]
    np.testing.assert_array_equal(x3[1], x2[0])  # same draw: the centre is the 2D sample
    np.testing.assert_array_equal(y3, y2)  # supervision is the centre slice's
    # the neighbours are other slices of the same volume, not copies of the centre
    assert not np.array_equal(x3[0], x3[1]) and not np.array_equal(x3[2], x3[1])
    # with augmentation on, every channel shares one contrast draw: a channel's histogram
    # moves with the centre's, so neighbours stay as similar to it as without augmentation
    s = SliceSampler([full], batch_size=4, weak_per_batch=0, seed=1, context_slices=1)
    b = s.next_batch()
    assert b.image.shape[1] == 3
    for img in b.image:
        r = np.corrcoef(img[0].ravel(), img[1].ravel())[0, 1]
        assert r > 0.5, f"neighbour and centre decorrelated (r={r:.2f}): separate draws?"


def test_single_slice_keypoint_image_repeats_its_slice(tmp_path, mini_index):
    """Tianchi key-point cases are single slices: the runtime repeats the edge slice, so
    training must too."""
    _, weak = _prepared(tmp_path, mini_index)
    one = weak.image[:, :, 10:11]
    weak.image = one
    weak.fg_slices = np.array([0])
    weak.keypoints = {k: (r, c, 0, 0) for k, (r, c, _, _) in weak.keypoints.items()}
    x = _draw(weak, 2).image
    assert x.shape[0] == 5
    for j in range(5):
        np.testing.assert_array_equal(x[j], x[2])


def test_2d_checkpoint_starts_a_2_5d_model_that_computes_the_same(tiny_model):
    ck = load_checkpoint(tiny_model["checkpoint"])
    m2 = build_model(ScarNetConfig.from_dict(ck["model_config"])).eval()
    m2.load_state_dict(ck["model"])
    m3 = build_model(ScarNetConfig.from_dict({**ck["model_config"], "in_channels": 3})).eval()
    init_from_checkpoint(m3, str(tiny_model["checkpoint"]))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = m2(x[:, 1:2]), m3(x)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
    # and the neighbour channels are trainable weights, not a frozen copy
    w = m3.seg_encoder.stem[0][0].weight
    assert w.shape[1] == 3 and w.requires_grad and float(w.detach()[:, [0, 2]].abs().max()) == 0.0


def test_a_2_5d_run_trains_exports_and_infers(tiny_model, mini_index, tmp_path):
    run = tmp_path / "ctx"
    p = run_scar("train", "--data", mini_index, "--out", run, "--max-steps", "2",
                 "--context-slices", "1", "--init", tiny_model["checkpoint"], *SMOKE,
                 env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    ck = load_checkpoint(run / "last.pt")
    assert ck["model_config"]["in_channels"] == 3 and ck["preprocess"]["context_slices"] == 1
    # --resume with another context is another run: refused in one line
    assert_one_line_error(run_scar("train", "--data", mini_index, "--out", run, "--resume",
                                   "--context-slices", "2", *SMOKE), "context_slices")
    model = tmp_path / "ctx.onnx"
    p = run_scar("export", run / "last.pt", "-o", model, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    proto = onnx.load(str(model), load_external_data=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    props = {q.key: q.value for q in proto.metadata_props}
    assert props["scar.format_version"] == "2"
    assert json.loads(props["scar.preprocess"])["context_slices"] == 1
    parity = json.loads((tmp_path / "ctx.parity.json").read_text())
    assert parity["slices"], "parity ran on no slices"
    out = tmp_path / "out"
    p = run_scar("infer", CHU_IMG, "-o", out, "--model", model)
    # a 2-step model may find no lumbar spine: that is exit 3 with every output written
    assert p.returncode in (0, NO_LUMBAR_SPINE_EXIT), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    seg = nib.load(str(next(out.glob("*_seg.nii.gz"))))
    assert seg.shape == nib.load(str(CHU_SEG)).shape


@pytest.mark.parametrize("bad", ["-1", "4"])
def test_context_slices_out_of_range_is_one_line(mini_index, tmp_path, bad):
    assert_one_line_error(run_scar("train", "--data", mini_index, "--out", tmp_path / "r",
                                   "--context-slices", bad, *SMOKE), "context-slices")
