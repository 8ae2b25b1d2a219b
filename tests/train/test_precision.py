"""--precision (BF16 CPU autocast) and the settings issue 26 added, on real slices."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import SPIDER_IMG, SPIDER_SEG

from scar_runtime.core.errors import ConfigError
from scar_runtime.evaluation.dataset import read_index
from scar_runtime.pipeline.preprocess import PreprocessConfig
from scar_train.config import TrainConfig
from scar_train.data import AugmentConfig, SliceSampler, prepare_case
from scar_train.model import ScarNetConfig, build_model
from scar_train.train import _batch_to_torch, forward_loss, resolve_precision, structure_augment

CPU = torch.device("cpu")


def test_auto_is_bf16_only_where_the_cpu_computes_bf16_natively():
    assert resolve_precision("auto", CPU, {"avx2", "fma"}) == "fp32"  # emulated: 7x slower
    assert resolve_precision("auto", CPU, {"avx512f", "avx512_bf16"}) == "bf16"  # Zen 4
    assert resolve_precision("auto", CPU, {"avx512f", "amx_bf16", "amx_tile"}) == "bf16"
    assert resolve_precision("auto", torch.device("cuda", 0), {"amx_bf16"}) == "fp32"
    assert resolve_precision("fp32", CPU, {"amx_bf16"}) == "fp32"
    assert resolve_precision("bf16", CPU, set()) == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(data="d", out="o", precision="fp16")


def test_resume_of_a_run_saved_before_the_hard_case_augmentations_means_them_off():
    now = TrainConfig(data="d.json", out="r", resume=True)
    new = ("structure_signal_p", "disc_collapse_p", "thick_slice_p", "motion_blur_p",
           "oblique_slice_p", "precision")
    saved = {k: v for k, v in now.to_dict().items() if k not in new}
    # new runs have them on, so the old run's --resume must say they are off...
    with pytest.raises(ConfigError, match="structure_signal_p=0.0, not 0.3"):
        now.check_resumable_from(saved)
    off = TrainConfig(data="d.json", out="r", resume=True, structure_signal_p=0,
                      disc_collapse_p=0, thick_slice_p=0, motion_blur_p=0, oblique_slice_p=0,
                      precision="bf16")
    off.check_resumable_from(saved)  # ...and precision may change on resume (another CPU)
    with pytest.raises(ConfigError, match="--thick-slice-p"):
        TrainConfig(data="d", out="o", thick_slice_p=1.5)
    a = structure_augment(TrainConfig(data="d", out="o"))
    assert (a.signal_p, a.collapse_p, a.thick_p, a.motion_p, a.oblique_p) == (0.3, 0.15, 0.2,
                                                                             0.15, 0.2)


def test_bf16_training_steps_stay_finite_and_close_to_fp32(tmp_path):
    """A few optimiser steps of the shipped configuration under BF16 autocast on real crops:
    no NaN or inf, FP32 master weights, and the first loss within 5% of FP32's."""
    (tmp_path / "index.json").write_text(json.dumps([
        {"dataset": "seg_spider2024", "case": "005", "image": str(SPIDER_IMG),
         "seg": str(SPIDER_SEG), "split": "train",
         "levels": ["L5/S1", "L5", "L4/L5", "L4", "L3/L4", "L3", "L2/L3", "L2", "L1/L2", "L1",
                    "T12/L1", "T12"]}]))
    pre = replace(PreprocessConfig(), context_slices=1)
    pc = prepare_case(read_index(tmp_path / "index.json")[0], pre)
    cfg = TrainConfig(data="d", out="o", context_slices=1, fine_refinement=True)
    sampler = SliceSampler([pc], crop=(128, 128), batch_size=2, weak_per_batch=0, seed=0,
                           augment=AugmentConfig(structures=structure_augment(cfg)),
                           context_slices=1)
    torch.manual_seed(0)
    model = build_model(ScarNetConfig.from_size("small", fine_refinement=True, in_channels=3))
    model.train()
    batch = _batch_to_torch(sampler.next_batch(), CPU)
    with torch.no_grad():
        ref = float(forward_loss(model, batch, cfg, "fp32").total)
        first = float(forward_loss(model, batch, cfg, "bf16").total)
    assert abs(first - ref) < 0.05 * ref
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    for _ in range(4):
        terms = forward_loss(model, _batch_to_torch(sampler.next_batch(), CPU), cfg, "bf16")
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
        opt.step()
        assert np.isfinite([float(v) for v in terms.as_floats().values()]).all()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
