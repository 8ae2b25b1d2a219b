"""Augmentations for the hard cases of issue 26: what the v2.3 failures on the hold-out show.

- :func:`scale_structure`: one labelled body or disc darkened (a degenerated, desiccated disc; a
  Modic-type or sclerotic body that is dark on T2) or brightened (Modic type 1/2, oedema), with a
  soft edge, its texture kept. v2.3 left a dark body unsegmented, so the count had a hole.
- :func:`squeeze_structure`: a disc's height squeezed (a collapsed disc): image, label map and
  distance map warped together, the neighbouring bodies brought closer.
- :func:`thick_slices`: through-plane blur, each input channel the weighted mean of the slices
  around it (a thick-slice acquisition's partial volume), from the real neighbouring slices.
- :func:`motion_blur`: in-plane motion blur, a line kernel at a random angle.
- :func:`oblique_slice`: a plane tilted through the volume (an oblique acquisition, a patient
  lying tilted, scoliosis): going up or down the image it drifts across the sagittal slices, so
  the top and bottom cut lateral anatomy; labels and distances taken on the same plane.

Every function takes the sample's arrays and returns new ones; the label map changes only where
the geometry does (the squeeze), so labels always describe the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from scar_runtime import labels as L

BODY_IDS = tuple(s.model_id for s in L.ALL_STRUCTURES if s.kind in ("vertebra", "sacrum"))
DISC_IDS = tuple(s.model_id for s in L.ALL_STRUCTURES if s.kind == "disc")


@dataclass(frozen=True)
class StructureAugmentConfig:
    """Probabilities (per sample) and ranges. A probability of 0 draws nothing from the rng."""

    signal_p: float = 0.3  # one body or disc darkened or brightened
    bright_share: float = 0.3  # of those, brightened instead of darkened
    dark_factor: tuple[float, float] = (0.1, 0.5)  # contrast above the dark reference kept
    bright_factor: tuple[float, float] = (1.3, 1.8)
    edge_sigma_px: float = 1.5
    collapse_p: float = 0.15  # one disc squeezed
    collapse_factor: tuple[float, float] = (0.3, 0.7)  # its height x this
    collapse_reach_px: float = 30.0  # the warp fades out this far beyond the disc
    thick_p: float = 0.2
    thick_sigma_slices: tuple[float, float] = (0.6, 1.5)
    motion_p: float = 0.15
    motion_length_px: tuple[int, int] = (3, 9)
    oblique_p: float = 0.0  # see TrainConfig.oblique_slice_p for the training default
    oblique_deg: float = 10.0  # the plane's tilt through the slices, drawn in +-this

    @property
    def active(self) -> bool:
        return any(p > 0 for p in (self.signal_p, self.collapse_p, self.thick_p, self.motion_p,
                                   self.oblique_p))


def dark_reference(x: np.ndarray) -> float:
    """The dark level a structure is pulled towards: the crop's 2nd percentile (air, cortex)."""
    return float(np.percentile(x[x.shape[0] // 2], 2))


def scale_structure(x: np.ndarray, lab: np.ndarray, cls: int, factor: float, ref: float,
                    edge_sigma_px: float = 1.5) -> np.ndarray:
    """(C, H, W) image with the pixels of class ``cls`` mapped ``ref + (v - ref) * factor``
    (factor < 1 darker, > 1 brighter), blended in over a Gaussian edge of ``edge_sigma_px``.
    Every channel gets the same map: a body or disc spans the neighbouring slices too."""
    m = (lab == cls).astype(np.float32)
    w = ndimage.gaussian_filter(m, edge_sigma_px) if edge_sigma_px > 0 else m
    scaled = ref + (x - ref) * factor
    if factor > 1:  # brighter, but not beyond what the image already holds
        scaled = np.minimum(scaled, float(x.max()))
    return (x + w[None] * (scaled - x)).astype(np.float32)


def squeeze_coords(lab: np.ndarray, cls: int, factor: float, reach_px: float) -> np.ndarray:
    """(2, H, W) source coordinates of each output pixel for a warp that squeezes structure
    ``cls`` to ``factor`` of its height along its shortest axis (a disc's height), about its
    centre. Along that axis the map is monotonic: the structure's half height h becomes
    h * factor, and between it and h + reach the rest is stretched back to the identity (the
    neighbouring bodies move closer); across the structure's length it fades out over 30 px."""
    rows, cols = np.indices(lab.shape, dtype=np.float64)
    pts = np.argwhere(lab == cls).astype(np.float64)
    if len(pts) < 3 or not 0 < factor < 1:
        return np.stack([rows, cols])
    centre = pts.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(pts.T))
    normal, along = evecs[:, 0], evecs[:, 1]
    half = max(1.0, math.sqrt(12 * max(evals[0], 0.0)) / 2)  # a uniform band's half height
    half_len = math.sqrt(12 * max(evals[1], 0.0)) / 2
    dr, dc = rows - centre[0], cols - centre[1]
    t = dr * normal[0] + dc * normal[1]
    u = dr * along[0] + dc * along[1]
    a, far = half * factor, half + reach_px
    at = np.abs(t)
    src = np.where(at <= a, at / factor,
                   np.where(at <= far, half + (at - a) * (far - half) / (far - a), at))
    fade = np.clip(1 - (np.abs(u) - half_len - 10) / 30, 0, 1)
    shift = (np.sign(t) * src - t) * fade
    return np.stack([rows + shift * normal[0], cols + shift * normal[1]])


def squeeze_structure(x: np.ndarray, lab: np.ndarray, dist: np.ndarray, cls: int,
                      factor: float, reach_px: float = 30.0):
    """(image (C, H, W), labels (H, W), distance (H, W)) warped by :func:`squeeze_coords`."""
    coords = squeeze_coords(lab, cls, factor, reach_px)
    x2 = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in x])
    y2 = ndimage.map_coordinates(lab, coords, order=0, mode="nearest").astype(lab.dtype)
    d2 = ndimage.map_coordinates(dist, coords, order=1, mode="nearest").astype(dist.dtype)
    return x2.astype(np.float32), y2, d2


def thick_slices(volume: np.ndarray, channels: np.ndarray, sigma_slices: float) -> np.ndarray:
    """(C, rows, cols) float32: channel j the Gaussian-weighted mean (sigma in slices, +-2 sigma)
    of ``volume``'s slices around ``channels[j]``, clamped at the volume's ends."""
    m = max(1, int(math.ceil(2 * sigma_slices)))
    offs = np.arange(-m, m + 1)
    wts = np.exp(-(offs**2) / (2 * sigma_slices**2))
    wts = wts / wts.sum()
    last = volume.shape[2] - 1
    out = []
    for j in channels:
        idx = np.clip(j + offs, 0, last)
        out.append(np.tensordot(volume[:, :, idx].astype(np.float32), wts, axes=([2], [0])))
    return np.stack(out).astype(np.float32)


def oblique_slice(volumes: list[tuple[np.ndarray, int]], slice_index: float, tilt_deg: float,
                  mm_per_px: float, slice_mm: float) -> list[np.ndarray]:
    """Each ``(volume (rows, cols, slices), order)`` sampled on one plane: at row r it lies at
    fractional slice ``slice_index + tan(tilt) (r - rows/2) mm_per_px / slice_mm``, clamped to
    the volume; order 1 interpolates between the two nearest slices, order 0 takes the nearest
    (label maps). A plane that leaves the volume repeats its edge slice, as a real field of view
    ends. Tilt 0 is the slice itself."""
    rows, _, n = volumes[0][0].shape
    r = np.arange(rows)
    z = slice_index + math.tan(math.radians(tilt_deg)) * (r - rows / 2) * mm_per_px / slice_mm
    z = np.clip(z, 0, n - 1)
    lo = np.floor(z).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    t = (z - lo)[:, None]
    out = []
    for vol, order in volumes:
        if order == 0:
            out.append(vol[r, :, np.rint(z).astype(int)])
        else:
            v = vol.astype(np.float32, copy=False)
            out.append((v[r, :, lo] * (1 - t) + v[r, :, hi] * t).astype(np.float32))
    return out


def sample_planes(pc, s: int, channels: np.ndarray, cfg: StructureAugmentConfig | None, rng,
                  mm_per_px: float) -> tuple:
    """(image (C, rows, cols) float32, labels or None, distance or None) of a PreparedCase at
    slice ``s`` (channels: its 2.5D slice indices): on an oblique plane (mask cases with more
    than one slice, probability ``oblique_p``), else thick slices (``thick_p``), else the
    slices themselves. With ``cfg`` None nothing is drawn from ``rng``."""
    mask = pc.labels is not None
    if (cfg is not None and cfg.oblique_p > 0 and mask and pc.image.shape[2] > 1
            and rng.random() < cfg.oblique_p):
        plane = dict(tilt_deg=rng.uniform(-cfg.oblique_deg, cfg.oblique_deg),
                     mm_per_px=mm_per_px, slice_mm=pc.slice_mm)
        img = np.stack([oblique_slice([(pc.image, 1)], j, **plane)[0] for j in channels])
        lab, dist = oblique_slice([(pc.labels, 0), (pc.distance, 1)], s, **plane)
        return img, lab, dist
    if cfg is not None and cfg.thick_p > 0 and rng.random() < cfg.thick_p:
        img = thick_slices(pc.image, channels, rng.uniform(*cfg.thick_sigma_slices))
    else:
        img = np.moveaxis(pc.image[:, :, channels], 2, 0).astype(np.float32)
    return img, (pc.labels[:, :, s] if mask else None), (pc.distance[:, :, s] if mask else None)


def line_kernel(length_px: int, angle_deg: float) -> np.ndarray:
    """A normalised (n, n) kernel along a line of ``length_px`` pixels at ``angle_deg``."""
    n = length_px if length_px % 2 else length_px + 1
    k = np.zeros((n, n), np.float64)
    c = (n - 1) / 2
    th = math.radians(angle_deg)
    for s in np.linspace(-(length_px - 1) / 2, (length_px - 1) / 2, 4 * n):
        k[int(round(c + s * math.sin(th))), int(round(c + s * math.cos(th)))] += 1
    return k / k.sum()


def motion_blur(x: np.ndarray, length_px: int, angle_deg: float) -> np.ndarray:
    """(C, H, W) image convolved, channel by channel, with :func:`line_kernel`."""
    k = line_kernel(length_px, angle_deg)
    return np.stack([ndimage.convolve(c, k, mode="nearest") for c in x]).astype(np.float32)


def augment_structures(x: np.ndarray, lab: np.ndarray, dist: np.ndarray, classes,
                       cfg: StructureAugmentConfig, rng) -> tuple:
    """The per-sample draw for a mask sample: (x, lab, dist) after the signal change and the
    squeeze, each with its probability, on one structure of ``classes`` present in ``lab``."""
    present = set(np.unique(lab).tolist()) & set(classes)
    if cfg.signal_p > 0 and rng.random() < cfg.signal_p:
        cands = sorted(present & set(BODY_IDS + DISC_IDS))
        if cands:
            cls = cands[rng.integers(len(cands))]
            bright = rng.random() < cfg.bright_share
            f = rng.uniform(*(cfg.bright_factor if bright else cfg.dark_factor))
            x = scale_structure(x, lab, cls, f, dark_reference(x), cfg.edge_sigma_px)
    if cfg.collapse_p > 0 and rng.random() < cfg.collapse_p:
        cands = sorted(present & set(DISC_IDS))
        if cands:
            cls = cands[rng.integers(len(cands))]
            x, lab, dist = squeeze_structure(x, lab, dist, cls, rng.uniform(*cfg.collapse_factor),
                                             cfg.collapse_reach_px)
    return x, lab, dist


def maybe_motion_blur(x: np.ndarray, cfg: StructureAugmentConfig, rng) -> np.ndarray:
    if cfg.motion_p > 0 and rng.random() < cfg.motion_p:
        lo, hi = cfg.motion_length_px
        return motion_blur(x, int(rng.integers(lo, hi + 1)), rng.uniform(0, 180))
    return x
