"""SCAR-Net (segmentation + key-point recognition) for lumbar spine MRI slices.

Public API::

    cfg = ScarNetConfig.from_size("small", use_mcca=True, use_at=True)
    model = build_model(cfg)
    out = model(x)  # ScarNetOutput(logits, heatmaps, keypoints)
"""

from .scarnet import ScarNet, ScarNetOutput, build_model, count_parameters
from .sizes import NUM_CLASSES, NUM_KEYPOINTS, SIZES, ScarNetConfig

__all__ = [
    "NUM_CLASSES",
    "NUM_KEYPOINTS",
    "SIZES",
    "ScarNet",
    "ScarNetConfig",
    "ScarNetOutput",
    "build_model",
    "count_parameters",
]
