"""Checkpoint -> the exact module that gets exported (eval mode, FP32 or FP16, custom ops or not).

The exported module takes ``image`` (N, 1, H, W) float32 and returns ``probs`` (softmax over the
11 classes), ``heatmaps`` and ``keypoints``, all float32, whatever the precision inside.

FP16 (``--fp16``): TensorRT 11 has no FP16 builder flag, so the precision lives in the ONNX graph:
weights and compute are FP16, with FP32 islands where FP16 is not safe:

* channel attention (``mcca.channel``): its energy ``X X^T`` sums over H*W positions and exceeds
  65504 on real inputs, then the softmax sees inf - inf = NaN;
* position attention (``mcca.inter/intra.attention``): scale-1 dot products over the reduced
  channels (no 1/sqrt(d)), the same risk on a trained model, and only (H/16*W/16)^2 elements, so
  FP32 costs little;
* the key-point soft-argmax: a softmax over every stride-4 cell, then sums of probability times
  pixel coordinates up to 512, where FP16's spacing (0.25-0.5 px) would move the key-points that
  feed the RALF weight map;
* the final softmax over the classes (FP16 logits, FP32 softmax, FP32 ``probs``).
The AT's modulated attention stays FP16: its scores are scaled by 1/sqrt(d) and its attention
matrix ((H/4*W/4) x (H/16*W/16) per head) is the largest tensor of the model.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from scar_runtime.core.errors import ModelError
from scar_runtime.pipeline.preprocess import PreprocessConfig
from scar_train.checkpoint import load_checkpoint
from scar_train.model import ScarNet, ScarNetConfig, build_model


class Fp32Island(nn.Module):
    """Run ``inner`` in FP32 inside an FP16 model: floating inputs are cast to float32, floating
    outputs back to the dtype of the first input (or kept float32 with ``keep_fp32``)."""

    def __init__(self, inner: nn.Module, keep_fp32: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.keep_fp32 = keep_fp32

    def forward(self, *args: Tensor) -> Tensor:
        dtype = next(a.dtype for a in args if torch.is_tensor(a))
        args = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a
                     for a in args)
        out = self.inner(*args)
        return out if self.keep_fp32 else out.to(dtype)


def add_fp32_islands(model: ScarNet) -> list[str]:
    """Wrap the FP16-unsafe parts of a ScarNet in :class:`Fp32Island` (in place)."""
    islands = []
    if model.mcca is not None:
        model.mcca.channel = Fp32Island(model.mcca.channel)
        model.mcca.inter.attention = Fp32Island(model.mcca.inter.attention)
        model.mcca.intra.attention = Fp32Island(model.mcca.intra.attention)
        islands += ["mcca.channel", "mcca.inter.attention", "mcca.intra.attention"]
    model.soft_argmax = Fp32Island(model.soft_argmax, keep_fp32=True)
    islands.append("soft_argmax")
    return islands


class ExportWrapper(nn.Module):
    """``image`` float32 -> (probs, heatmaps, keypoints) float32; casts at the boundary."""

    def __init__(self, net: ScarNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = net
        self.dtype = dtype

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.net(image.to(self.dtype))
        probs = torch.softmax(out.logits.float(), dim=1)
        return probs, out.heatmaps.float(), out.keypoints.float()


def _check_weights(path: Path, model: nn.Module, state: dict) -> None:
    """One-line error when the weights do not belong to the architecture in model_config."""
    expected = model.state_dict()
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"{path}: the checkpoint holds no weight tensors")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape)
             != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        first = (wrong or missing or unexpected)[0]
        detail = (f"{first}: {tuple(state[first].shape)} vs {tuple(expected[first].shape)}"
                  if wrong else first)
        raise ModelError(
            f"{path}: the weights do not match the architecture in its model_config (another "
            f"architecture or a damaged checkpoint): {len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong)} with another shape (first: {detail})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(f"{path}: {len(bad)} weight tensors hold NaN/inf (first: {bad[0]})")


def load_model(path: Path | str) -> tuple[ScarNet, dict]:
    """Checkpoint -> (ScarNet in eval mode with its weights, checkpoint dict). One-line errors."""
    path = Path(path)
    with warnings.catch_warnings():  # torch warns (multi-line) about some corrupt files
        warnings.simplefilter("ignore")
        ckpt = load_checkpoint(path)
    try:
        cfg = ScarNetConfig.from_dict(ckpt["model_config"])
    except (ValueError, TypeError) as e:
        raise ModelError(f"{path}: model_config is not a SCAR-Net configuration ({e})") from e
    try:
        PreprocessConfig.from_dict(ckpt["preprocess"])
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{path}: damaged preprocess settings ({e})") from e
    model = build_model(cfg)
    _check_weights(path, model, ckpt.get("model"))
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    return model, ckpt


def export_module(model: ScarNet, *, fp16: bool = False, custom_ops: bool = False) -> ExportWrapper:
    """A deep copy of ``model`` prepared for export (the original is left untouched)."""
    net = copy.deepcopy(model).eval()
    if fp16:
        add_fp32_islands(net)
    if custom_ops:
        from scar_export.custom_ops import swap_in_custom_ops

        swap_in_custom_ops(net)
    if fp16:
        net = net.half()
    wrapper = ExportWrapper(net, torch.float16 if fp16 else torch.float32).eval()
    for p in wrapper.parameters():
        p.requires_grad_(False)
    return wrapper


def reference_module(model: ScarNet) -> ExportWrapper:
    """The FP32 PyTorch model every export is compared with."""
    return export_module(model)
