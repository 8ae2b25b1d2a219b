"""The lean runtime (ONNX Runtime, CPU) gives the labels PyTorch gives, on real slices."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import IVD_IMG, SHARED_INDEX, needs_shared

from scar_runtime import Segmenter
from scar_runtime.evaluation.dataset import read_index
from scar_runtime.io import load_volume
from scar_runtime.pipeline.preprocess import PreprocessConfig
from scar_train.checkpoint import load_checkpoint
from scar_train.model import ScarNetConfig, build_model
from scar_train.validate import predict_labels


def _pytorch(ckpt):
    doc = load_checkpoint(ckpt)
    model = build_model(ScarNetConfig.from_dict(doc["model_config"]))
    model.load_state_dict(doc["model"])
    return model.eval(), PreprocessConfig.from_dict(doc["preprocess"])


def _agreement(tiny_model, vol):
    model, cfg = _pytorch(tiny_model["checkpoint"])
    with torch.no_grad():
        ref = predict_labels(model, vol.data, vol.inplane_spacing, cfg, batch=4)
    with Segmenter(tiny_model["onnx"], use_postprocess=False, batch=4) as seg:
        got = seg.segment(vol).labels
    return float((got == ref).mean())


def test_onnxruntime_labels_match_pytorch_on_a_real_volume(tiny_model):
    agree = _agreement(tiny_model, load_volume(IVD_IMG))
    print(f"ONNX Runtime vs PyTorch label agreement: {agree:.6f}")
    assert agree >= 0.999


@needs_shared
@pytest.mark.slow
def test_onnxruntime_labels_match_pytorch_on_a_val_case(tiny_model):
    """At the val case's real in-plane size (381 x 381, a 384 x 384 network grid); its 16
    central sagittal slices (the lumbar column), not all 77: both paths get the same slab."""
    case = next(c for c in read_index(SHARED_INDEX) if c.id == "vb_chu2015/14")
    vol = case.load_image()
    mid = vol.shape[2] // 2
    vol = dataclasses.replace(vol, data=np.ascontiguousarray(vol.data[:, :, mid - 8:mid + 8]))
    agree = _agreement(tiny_model, vol)
    print(f"ONNX Runtime vs PyTorch label agreement (vb_chu2015/14): {agree:.6f}")
    assert agree >= 0.999
