"""The preview PNG: the mid-sagittal slice with a coloured overlay and level names."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from scar_runtime import labels as L


def pick_slice(labels: np.ndarray) -> int:
    """The mid-sagittal slice of the spine: the centre of the labelled voxels along the slice
    axis (the middle slice when nothing is labelled)."""
    area = (labels > 0).sum(axis=(0, 1)).astype(np.float64)
    if not area.any():
        return labels.shape[2] // 2
    return int(round(float((area * np.arange(len(area))).sum() / area.sum())))


def render_preview(result, *, alpha: float = 0.45, max_px: int = 768) -> Image.Image:
    vol, labels = result.volume, result.labels
    k = pick_slice(labels)
    img = vol.data[:, :, k].astype(np.float32)
    lo, hi = np.percentile(img, (1, 99))
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2) * 255
    lab = labels[:, :, k]
    for s in L.ALL_STRUCTURES:
        m = lab == s.model_id
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array(s.color)
    im = Image.fromarray(rgb.astype(np.uint8))
    # square pixels on screen: scale each axis by its spacing
    sy, sx = vol.spacing[0], vol.spacing[1]
    h, w = lab.shape
    scale = max_px / max(h * sy, w * sx)
    size = (max(1, round(w * sx * scale)), max(1, round(h * sy * scale)))
    im = im.resize(size, Image.NEAREST)
    draw = ImageDraw.Draw(im)
    for s in L.ALL_STRUCTURES:
        rc = np.argwhere(lab == s.model_id)
        if len(rc) == 0:
            continue
        r, c = rc.mean(0)
        x, y = c * sx * scale, r * sy * scale
        draw.text((x + 12, y - 6), s.name, fill=(255, 255, 255), stroke_width=2,
                  stroke_fill=(0, 0, 0))
    draw.text((6, 6), f"sagittal slice {k}", fill=(255, 255, 0))
    return im
