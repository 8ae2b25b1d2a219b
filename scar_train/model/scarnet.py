"""SCAR-Net: wires the encoders, MCCA, RALF/AT and the decoder (no layers are defined here)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import NamedTuple

import torch
from torch import nn

from .at import (
    AdaptiveTransformer,
    DynamicDepthwiseConv,
    KeypointWeightMap,
    ParameterAdapter,
)
from .decoder import SegmentationDecoder
from .encoder import RecognitionEncoder, SegmentationEncoder, SeparableEncoder
from .heads import HeatmapHead, SoftArgmax
from .mcca import MCCA
from .sizes import LOW_LEVEL_STRIDE, OUTPUT_STRIDE, ScarNetConfig


class ScarNetOutput(NamedTuple):
    logits: torch.Tensor  # (N, num_classes, H, W) raw logits
    heatmaps: torch.Tensor  # (N, num_keypoints, H/4, W/4)
    keypoints: torch.Tensor  # (N, num_keypoints, 2) (row, col) in input pixels


# The config fields that are encoder arguments (both encoders take the same ones), by name.
_ENCODER_ARGS = frozenset(inspect.signature(SeparableEncoder).parameters)


def _encoder_kwargs(cfg: ScarNetConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.name in _ENCODER_ARGS}


class ScarNet(nn.Module):
    """Segmentation path S + recognition path R (../shared/docs/MODEL.md, docs/model.md).

    ``forward(x)`` takes one tensor (N, in_channels, H, W), H and W divisible by 16, and returns
    :class:`ScarNetOutput`. With ``use_mcca=False`` MF = F_S^H and with ``use_at=False``
    FE = F_S^L; the switched-off modules are not constructed (``None``). The recognition
    encoder and the heatmap head always exist: key-points are an output of every variant.
    """

    def __init__(self, config: ScarNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        low_ch = config.low_channels[-1]
        high_ch = config.aspp_channels
        self.seg_encoder = SegmentationEncoder(**_encoder_kwargs(config))
        self.rec_encoder = RecognitionEncoder(**_encoder_kwargs(config))
        self.heatmap_head = HeatmapHead(
            high_ch,
            low_ch,
            config.num_keypoints,
            channels=config.head_channels,
            low_projection=config.decoder_low_channels,
        )
        self.soft_argmax = SoftArgmax(config.softargmax_beta, LOW_LEVEL_STRIDE)
        self.mcca = MCCA(high_ch, config.mcca_reduction) if config.use_mcca else None
        if config.use_at:
            self.weight_map = KeypointWeightMap(config.ralf_sigma, LOW_LEVEL_STRIDE)
            self.at = AdaptiveTransformer(
                low_ch,
                heads=config.at_heads,
                qk_channels=config.at_qk_channels,
                v_channels=config.at_v_channels,
                kv_pool=config.at_kv_pool,
                eps=config.ralf_eps,
            )
            self.adapter = ParameterAdapter(low_ch, low_ch, config.at_kernel_size)
            self.dynamic_conv = DynamicDepthwiseConv()
        else:
            self.weight_map = None
            self.at = None
            self.adapter = None
            self.dynamic_conv = None
        self.decoder = SegmentationDecoder(
            high_ch,
            low_ch,
            config.num_classes,
            channels=config.decoder_channels,
            low_projection=config.decoder_low_channels,
            fine_channels=config.stem_channels[-1] if config.fine_refinement else 0,
            refine_channels=config.refine_channels,
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"ScarNet expects (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-2] % OUTPUT_STRIDE != 0 or x.shape[-1] % OUTPUT_STRIDE != 0:
            raise ValueError(
                f"ScarNet needs H and W divisible by {OUTPUT_STRIDE}, got "
                f"{tuple(x.shape[-2:])}; pad the slice first"
            )

    def forward(self, x: torch.Tensor) -> ScarNetOutput:
        self._check_input(x)
        seg = self.seg_encoder(x)
        rec = self.rec_encoder(x)
        heatmaps = self.heatmap_head(rec.high, rec.low)
        keypoints = self.soft_argmax(heatmaps)
        mf = seg.high if self.mcca is None else self.mcca(seg.high, rec.high)
        fe = seg.low
        if self.at is not None:
            weights = self.weight_map(keypoints, seg.low)
            alpha = self.adapter(rec.low)
            fe = seg.low + self.dynamic_conv(self.at(seg.low, weights), alpha)
        logits = self.decoder(mf, fe, x, seg.fine)
        return ScarNetOutput(logits, heatmaps, keypoints)


def build_model(config: ScarNetConfig) -> ScarNet:
    """Build SCAR-Net from its config (same as ``ScarNet(config)``)."""
    return ScarNet(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
