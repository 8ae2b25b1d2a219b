"""Model configuration and the table of named sizes (``small``, ``paper``).

``ScarNetConfig`` is a flat, JSON-able dataclass: it is saved next to every checkpoint and into
the ONNX metadata, and ``ScarNetConfig.from_dict(cfg.to_dict())`` rebuilds the same network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The label map has one home, scar_runtime.labels: 11 classes (0 background, 1..5 vertebral
# bodies L1..L5, 6..10 discs L1/L2..L5/S1) and 10 key-points (key-point k = centre of class k+1).
from scar_runtime.labels import NUM_CLASSES, NUM_KEYPOINTS

# AT keeps 128 channels at every size (../shared/docs/MODEL.md), so the low-level feature has
# 128 channels.
LOW_LEVEL_CHANNELS = 128
OUTPUT_STRIDE = 16
LOW_LEVEL_STRIDE = 4


@dataclass
class ScarNetConfig:
    """Every constructor argument of :class:`~scar_train.model.ScarNet`, named for its meaning."""

    size: str = "small"
    in_channels: int = 1
    num_classes: int = NUM_CLASSES
    num_keypoints: int = NUM_KEYPOINTS
    # Encoders (both have this structure).
    stem_channels: tuple[int, ...] = (16, 24)
    low_channels: tuple[int, ...] = (48, 64, LOW_LEVEL_CHANNELS)
    block_channels: tuple[int, ...] = (160, 256)
    downsample_at: int = 0  # which separable conv of a downsampling block has stride 2
    middle_blocks: int = 3
    exit_block_channels: tuple[int, ...] = ()
    exit_conv_channels: tuple[int, ...] = ()
    exit_dilation: int = 1
    aspp_channels: int = 128
    aspp_rates: tuple[int, ...] = (2, 4, 6)
    aspp_dropout: float = 0.1
    # Decoder and key-point head.
    decoder_low_channels: int = 48
    decoder_channels: int = 96
    head_channels: int = 64
    # Stride-2 boundary refinement of the logits (decoder.BoundaryRefinement; not in the paper).
    # Off by default: v0.1 and the first v2 model were trained without it.
    fine_refinement: bool = False
    refine_channels: int = 32
    softargmax_beta: float = 20.0
    # MCCA.
    mcca_reduction: int = 8
    # RALF weight map, adaptive transformer, parameter adapter.
    ralf_sigma: float = 16.0  # input pixels
    ralf_eps: float = 1e-3
    at_heads: int = 2
    at_qk_channels: int = 32
    at_v_channels: int = 64
    at_kv_pool: int = 4  # stride 4 -> stride 16 keys/values
    at_kernel_size: int = 7  # dynamic kernel and adapter pool size
    # Ablation switches (Table 1).
    use_mcca: bool = True
    use_at: bool = True

    def __post_init__(self) -> None:
        # Lists (from JSON or a caller) become tuples so that equal configs compare equal.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for an inconsistent configuration."""
        if len(self.stem_channels) != 2:
            raise ValueError(f"stem_channels needs 2 values, got {self.stem_channels}")
        if len(self.low_channels) != 3 or self.low_channels[-1] != LOW_LEVEL_CHANNELS:
            raise ValueError(
                f"low_channels needs 3 values ending in {LOW_LEVEL_CHANNELS} (AT keeps "
                f"{LOW_LEVEL_CHANNELS} channels), got {self.low_channels}"
            )
        if len(self.block_channels) != 2:
            raise ValueError(f"block_channels needs 2 values, got {self.block_channels}")
        if self.exit_block_channels and len(self.exit_block_channels) != 3:
            raise ValueError(
                f"exit_block_channels needs 0 or 3 values, got {self.exit_block_channels}"
            )
        if self.downsample_at not in (0, 1, 2):
            raise ValueError(f"downsample_at must be 0, 1 or 2, got {self.downsample_at}")
        if not self.aspp_rates or min(self.aspp_rates) < 1:
            raise ValueError(f"aspp_rates must be >= 1, got {self.aspp_rates}")
        if self.at_kernel_size % 2 == 0:
            raise ValueError(f"at_kernel_size must be odd, got {self.at_kernel_size}")
        if self.at_qk_channels % self.at_heads or self.at_v_channels % self.at_heads:
            raise ValueError("at_qk_channels and at_v_channels must be divisible by at_heads")
        if LOW_LEVEL_STRIDE * self.at_kv_pool > OUTPUT_STRIDE or (
            OUTPUT_STRIDE % (LOW_LEVEL_STRIDE * self.at_kv_pool)
        ):
            raise ValueError(f"at_kv_pool must divide {OUTPUT_STRIDE // LOW_LEVEL_STRIDE}")
        if self.ralf_sigma <= 0 or self.ralf_eps <= 0 or self.softargmax_beta <= 0:
            raise ValueError("ralf_sigma, ralf_eps and softargmax_beta must be positive")

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> ScarNetConfig:
        """The named size with optional field overrides, e.g. ``use_mcca=False``."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
        values = {**SIZES[size], "size": size, **overrides}
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScarNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from another model)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ScarNetConfig fields: {unknown}")
        return cls(**data)


# Named sizes: only the fields that differ from the dataclass defaults (which are ``small``).
SIZES: dict[str, dict[str, Any]] = {
    # 2.61 M parameters, 2.84 GFLOP per 256x256 slice (FlopCounterMode, 2 FLOPs per MAC; the
    # plain U-Net baseline is 4.06); step times: MODEL_CARD.md.
    # Downsampling happens in the first conv of a block so the other two run at the lower
    # resolution; channels stay small at stride 2 and 4.
    "small": {},
    # Xception-65-like encoders of DeepLabv3+ (entry/middle/exit flow, output stride 16),
    # ASPP 6/12/18, as in the paper: 82.4 M parameters, 51.3 GFLOP per 256x256 slice.
    "paper": {
        "stem_channels": (32, 64),
        "low_channels": (128, 128, LOW_LEVEL_CHANNELS),
        "block_channels": (256, 728),
        "downsample_at": 2,
        "middle_blocks": 16,
        "exit_block_channels": (728, 1024, 1024),
        "exit_conv_channels": (1536, 1536, 2048),
        "exit_dilation": 2,
        "aspp_channels": 256,
        "aspp_rates": (6, 12, 18),
        "decoder_channels": 256,
        "head_channels": 128,
        "at_heads": 4,
        "at_qk_channels": 128,
        "at_v_channels": 128,
    },
}
