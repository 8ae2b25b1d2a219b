"""Training slices from a data index, through the runtime's own reader and preprocessing.

Each case is loaded once (``scar_runtime.io`` -> ``preprocess.resample_image``: normalised and at
the network's in-plane spacing) and kept in memory. Batches are random 2D crops of sagittal
slices with a joint random rotation/scale (image, mask and key-points move together) and intensity
and contrast augmentation. Batches mix fully annotated cases (masks) and weakly annotated ones
(key-points only), and every sample says which classes and key-points its data set labels, for the
partial-label loss.

Every sample also carries ``distance``: per pixel, the distance (mm) to the nearest structure its
set labels. Far from every labelled structure nothing lumbar can be, whatever the set labels, so
the loss treats such pixels as known background for every class (see ``losses.py``): that is what
teaches "not a disc" on the many vertebra-only cases, and "not lumbar anything" on key-point cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.evaluation.dataset import Case
from scar_runtime.pipeline.preprocess import (
    PreprocessConfig,
    context_indices,
    resample_image,
    resample_labels,
)
from scar_train.augment_structures import (
    StructureAugmentConfig,
    augment_structures,
    maybe_motion_blur,
    sample_planes,
)
from scar_train.targets import (
    DISTANCE_CLIP_MM,
    HEATMAP_STRIDE,
    centroids_2d,
    distance_to_points,
    gap_weight_map,
    gaussian_heatmaps,
)


@dataclass
class PreparedCase:
    case: Case
    image: np.ndarray  # (rows, cols, slices) float16, normalised, at cfg.spacing_mm in-plane
    labels: np.ndarray | None  # same grid, model class ids (None for key-point-only cases)
    # key-point index -> (row, col, first slice, last slice) on the resampled grid
    keypoints: dict[int, tuple[float, float, int, int]] = field(default_factory=dict)
    labelled_classes: frozenset[int] = frozenset()
    labelled_keypoints: frozenset[int] = frozenset()
    fg_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    background: float = 0.0  # darkest normalised value: what padding and air look like
    # mask cases: mm to the nearest labelled structure, same grid as image (float16)
    distance: np.ndarray | None = None
    slice_mm: float = 1.0  # slice spacing (the oblique-plane augmentation's tilt needs it)

    @property
    def is_weak(self) -> bool:
        return self.labels is None


def _keypoints_on_grid(case: Case, vol, grid) -> dict[int, tuple[float, float, int, int]]:
    """Key-point files give world mm (and, when known, the slice range of the structure)."""
    import json

    if case.keypoints is None:
        return {}
    doc = json.loads(case.keypoints.read_text())["keypoints"]
    world_to_work = np.linalg.inv(vol.affine)
    file_to_work = world_to_work @ vol.source.affine
    out = {}
    for k, world in case.load_keypoints().items():
        ijk = world_to_work[:3, :3] @ world + world_to_work[:3, 3]
        rc = grid.to_resampled(ijk[:2])
        level = L.KEYPOINT_NAMES[k]
        rng = doc.get(level, {}).get("slices")
        if rng:  # slice range in the file's voxel axis 2 -> working slice axis
            ends = [file_to_work[:3, :3] @ np.array([0.0, 0.0, s]) + file_to_work[:3, 3]
                    for s in rng]
            lo, hi = sorted(int(round(e[2])) for e in ends)
        else:
            lo = hi = int(round(ijk[2]))
        out[k] = (float(rc[0]), float(rc[1]), lo, hi)
    return out


def distance_to_structures(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """float16 mm from every voxel to the nearest True voxel of ``mask`` (3D, anisotropic).

    Computed on a grid halved in-plane (8x less work on full-field volumes; the loss compares
    it with margins of 15 mm and more, so the <= 1.5 mm error does not matter), then repeated
    back. An empty mask gives DISTANCE_CLIP_MM everywhere.
    """
    if not mask.any():
        return np.full(mask.shape, DISTANCE_CLIP_MM, np.float16)
    coarse = mask[::2, ::2, :]
    d = ndimage.distance_transform_edt(~coarse, sampling=(2 * spacing[0], 2 * spacing[1],
                                                          spacing[2]))
    d = np.repeat(np.repeat(d, 2, axis=0), 2, axis=1)[: mask.shape[0], : mask.shape[1]]
    return np.minimum(d, DISTANCE_CLIP_MM).astype(np.float16)


def prepare_case(case: Case, cfg: PreprocessConfig) -> PreparedCase:
    vol = case.load_image()
    image, grid = resample_image(vol.data, vol.inplane_spacing, cfg)
    labels = None
    distance = None
    fg = np.zeros(0, dtype=int)
    kps: dict = {}
    if case.seg is not None:
        raw_seg = case.load_raw_seg(vol)  # read once: classes and "any labelled structure"
        labels = resample_labels(case.load_seg(raw=raw_seg).data, grid).astype(np.uint8)
        # every structure the mask labels counts, T11 and above included (raw ids, not classes)
        raw = resample_labels((raw_seg.data > 0).astype(np.uint8), grid) > 0
        distance = distance_to_structures(raw, (cfg.spacing_mm, cfg.spacing_mm,
                                                float(vol.spacing[2])))
        fg = np.nonzero(np.isin(labels, list(case.labelled_classes)).any(axis=(0, 1)))[0]
    else:
        kps = _keypoints_on_grid(case, vol, grid)
        if kps:
            lo = max(0, min(v[2] for v in kps.values()))
            hi = min(image.shape[2] - 1, max(v[3] for v in kps.values()))
            fg = np.arange(lo, hi + 1)
    return PreparedCase(case=case, image=image.astype(np.float16), labels=labels, keypoints=kps,
                        labelled_classes=case.labelled_classes,
                        labelled_keypoints=case.labelled_keypoints, fg_slices=fg,
                        background=float(image.min()), distance=distance,
                        slice_mm=float(vol.spacing[2]))


@dataclass(frozen=True)
class AugmentConfig:
    """Geometry, intensity and contrast augmentation.

    The contrast terms exist because the same public sources hold T1, TIRM and water-fat images
    beside T2 and the hidden hold-out has more scanners: gamma, a contrast inversion inside the
    body outline (T1-like: discs and CSF dark; the air stays dark), a smooth multiplicative bias
    field, blur and a lower in-plane resolution (thick-slice / low-field look), and noise.
    """

    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.85, 1.15)
    intensity_scale: tuple[float, float] = (0.85, 1.15)
    intensity_shift: float = 0.15
    gamma: tuple[float, float] = (0.6, 1.6)
    invert_p: float = 0.15
    bias_p: float = 0.3
    bias_strength: float = 0.35  # field spans exp(+-strength)
    blur_p: float = 0.2
    blur_sigma_px: tuple[float, float] = (0.5, 1.5)
    lowres_p: float = 0.2
    lowres_factor: tuple[float, float] = (1.5, 3.0)
    noise_std: float = 0.08
    enabled: bool = True
    # the hard-case augmentations of issue 26 (augment_structures.py); None = off (runs before)
    structures: StructureAugmentConfig | None = None


@dataclass
class Batch:
    image: np.ndarray  # (N, C, H, W) float32: C = 1 + 2 * context slices (2.5D input)
    labels: np.ndarray  # (N, H, W) int64 (0 where unknown/unlabelled: see class_mask)
    class_mask: np.ndarray  # (N, classes) bool: class labelled by this sample's set (0 always True)
    has_seg: np.ndarray  # (N,) bool: a mask supervises this sample
    heatmaps: np.ndarray  # (N, 10, H/4, W/4) float32 Gaussian targets
    kp_mask: np.ndarray  # (N, 10) bool: key-point supervised (present or known absent)
    distance: np.ndarray  # (N, H, W) float32 mm to the nearest labelled structure (see module doc)
    # (N, H, W) float32 cross-entropy weight per pixel: 1, more in the body-disc gaps of samples
    # whose set labels both kinds (see :func:`gap_weight_map`); None when the gap weight is off
    ce_weight: np.ndarray | None = None


class Sample(NamedTuple):
    """One training sample from :meth:`SliceSampler.sample` (one row of a :class:`Batch`)."""

    image: np.ndarray  # (C, H, W) float32, augmented
    labels: np.ndarray  # (H, W) model class ids (zeros for a key-point-only case)
    points: dict[int, tuple[float, float]]  # key-point index -> (row, col) in the crop
    case: PreparedCase
    distance: np.ndarray  # (H, W) mm to the nearest labelled structure
    ce_weight: np.ndarray | None  # (H, W) cross-entropy weight, None = 1 everywhere


class SliceSampler:
    """Draws mixed batches of augmented crops. Deterministic given its seed."""

    def __init__(self, cases: list[PreparedCase], *, crop: tuple[int, int] = (256, 256),
                 batch_size: int = 8, weak_per_batch: int = 2, disc_fraction: float = 0.25,
                 both_fraction: float = 0.35, fg_fraction: float = 0.85, sigma_px: float = 6.0,
                 augment: AugmentConfig | None = None, seed: int = 0,
                 spacing_mm: float = 1.0, gap_weight: float = 0.0, gap_sigma_mm: float = 3.0,
                 context_slices: int = 0):
        self.full = [c for c in cases if not c.is_weak and len(c.fg_slices)]
        self.weak = [c for c in cases if c.is_weak and len(c.fg_slices)]
        if not self.full and not self.weak:
            raise ValueError("no training case has labelled slices")
        self.crop = crop
        self.batch_size = batch_size
        self.weak_per_batch = min(weak_per_batch, batch_size) if self.weak else 0
        if not self.full:
            self.weak_per_batch = batch_size
        self.disc_fraction = disc_fraction
        self.fg_fraction = fg_fraction
        self.sigma_px = sigma_px
        self.spacing_mm = spacing_mm  # the prepared grid's in-plane spacing
        self.gap_weight = gap_weight
        self.gap_sigma_mm = gap_sigma_mm
        # 2.5D: the neighbours of the drawn slice come along as channels, clamped at the
        # volume's ends by the runtime's own rule (preprocess.context_indices)
        self.context_slices = context_slices
        self.augment = augment or AugmentConfig()
        self.rng = np.random.default_rng(seed)
        by_kind = {k: [c for c in self.full if c.case.supervision == k]
                   for k in ("vertebrae", "discs", "both")}
        # Few disc-only and both-kind cases exist, against many vertebra-only ones: draw each
        # group with a fixed share instead of by its count (the shares of absent groups go to
        # the others).
        shares = {"vertebrae": max(0.0, 1 - disc_fraction - both_fraction),
                  "discs": disc_fraction, "both": both_fraction}
        self._groups = [(g, shares[k]) for k, g in by_kind.items() if g and shares[k] > 0]
        if not self._groups and self.full:
            self._groups = [(self.full, 1.0)]

    def _pick_full(self) -> PreparedCase:
        groups, weights = zip(*self._groups, strict=True)
        p = np.array(weights) / sum(weights)
        g = groups[self.rng.choice(len(groups), p=p)]
        return g[self.rng.integers(len(g))]

    def _affine(self) -> tuple[np.ndarray, float]:
        a = self.augment
        if not a.enabled:
            return np.eye(2), 1.0
        theta = math.radians(self.rng.uniform(-a.rotation_deg, a.rotation_deg))
        s = self.rng.uniform(*a.scale)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        return rot / s, s  # output offset -> source offset

    def sample(self, pc: PreparedCase) -> Sample:
        h, w = self.crop
        rng = self.rng
        s = int(rng.choice(pc.fg_slices)) if (rng.random() < self.fg_fraction
                                               or pc.is_weak) else int(
            rng.integers(pc.image.shape[2]))
        k = self.context_slices
        channels = context_indices(np.array([s]), k, pc.image.shape[2])[0]
        st = self.augment.structures if self.augment.enabled else None
        # (C, rows, cols) image, the label and distance slices: the slice's own, or a thick or
        # oblique one (augment_structures.sample_planes)
        img, lab, dist_src = sample_planes(pc, s, channels, st, rng, self.spacing_mm)
        # crop centre: near a labelled structure of this slice, else anywhere
        centre = np.array([rng.uniform(0, img.shape[1]), rng.uniform(0, img.shape[2])])
        if lab is not None:
            fg = np.argwhere(np.isin(lab, list(pc.labelled_classes)))
            if len(fg):
                centre = fg[rng.integers(len(fg))] + rng.normal(0, 24, 2)
        elif pc.keypoints:
            r, c, _, _ = list(pc.keypoints.values())[rng.integers(len(pc.keypoints))]
            centre = np.array([r, c]) + rng.normal(0, 24, 2)
        A, _ = self._affine()
        out_c = np.array([(h - 1) / 2, (w - 1) / 2])
        offset = centre - A @ out_c
        bg = pc.background
        x = np.stack([ndimage.affine_transform(c, A, offset=offset, output_shape=(h, w), order=1,
                                               mode="constant", cval=bg, prefilter=False)
                      for c in img])
        Ainv = np.linalg.inv(A)
        if lab is not None:
            y = ndimage.affine_transform(lab, A, offset=offset, output_shape=(h, w), order=0,
                                         mode="constant", cval=0, prefilter=False)
            dist = ndimage.affine_transform(dist_src.astype(np.float32), A,
                                            offset=offset, output_shape=(h, w), order=1,
                                            mode="constant", cval=DISTANCE_CLIP_MM,
                                            prefilter=False)
            if st is not None:  # before the scanner-level terms: a property of the anatomy
                x, y, dist = augment_structures(x, y, dist, pc.labelled_classes, st, rng)
            points = centroids_2d(y, sorted(pc.labelled_classes))
        else:
            y = np.zeros((h, w), np.uint8)
            points = {}
            anchors = []
            for k, (r, c, lo, hi) in pc.keypoints.items():
                q = Ainv @ (np.array([r, c]) - offset)
                anchors.append(q)  # every annotated centre bounds where structures can be
                if lo <= s <= hi and 0 <= q[0] < h and 0 <= q[1] < w:
                    points[k] = (float(q[0]), float(q[1]))
            dist = distance_to_points(anchors, (h, w), self._mm_per_px(A))
        if st is not None:
            x = maybe_motion_blur(x, st, rng)
        x = self._intensity(x)
        cew = None  # weight 1 everywhere
        if self.gap_weight > 0 and lab is not None and pc.case.supervision == "both":
            cew = gap_weight_map(y, self._mm_per_px(A), self.gap_weight, self.gap_sigma_mm)
        return Sample(image=x, labels=y, points=points, case=pc, distance=dist, ce_weight=cew)

    def _mm_per_px(self, A: np.ndarray) -> float:
        # the grid is at the preprocessing spacing; A scales output pixels to source pixels
        return float(np.sqrt(abs(np.linalg.det(A)))) * self.spacing_mm

    def _intensity(self, x: np.ndarray) -> np.ndarray:
        """(C, H, W) -> augmented (C, H, W). Every channel (the slice and its neighbours) gets
        the same draw: one scanner and one contrast per sample, as in a real volume."""
        a, rng = self.augment, self.rng
        if not a.enabled:
            return x
        lo, hi = float(x.min()), float(x.max())
        if hi > lo:
            u = (x - lo) / (hi - lo)
            if rng.random() < a.invert_p:
                # invert inside the body only: air stays dark, as on real T1/TIRM images
                body = ndimage.uniform_filter(u, (1, 9, 9)) > 0.08
                u = np.where(body, np.clip(1.05 - u, 0, 1), u)
            if rng.random() < a.bias_p:
                u = u * _bias_field(u.shape[1:], a.bias_strength, rng)
            u = np.clip(u, 0, None) ** rng.uniform(*a.gamma)
            if rng.random() < a.lowres_p:
                f = rng.uniform(*a.lowres_factor)
                u = np.stack([_fit(_lowres(c, f), c.shape) for c in u])
            if rng.random() < a.blur_p:
                sigma = rng.uniform(*a.blur_sigma_px)
                u = ndimage.gaussian_filter(u, (0, sigma, sigma))
            x = u * (hi - lo) + lo
        x = x * rng.uniform(*a.intensity_scale) + rng.uniform(-a.intensity_shift,
                                                               a.intensity_shift)
        if a.noise_std:
            x = x + rng.normal(0, rng.uniform(0, a.noise_std), x.shape)
        return x.astype(np.float32)

    def next_batch(self) -> Batch:
        n_weak = self.weak_per_batch
        picks = [self._pick_full() for _ in range(self.batch_size - n_weak)]
        picks += [self.weak[self.rng.integers(len(self.weak))] for _ in range(n_weak)]
        samples = [self.sample(pc) for pc in picks]
        n = len(samples)
        h, w = self.crop
        batch = Batch(image=np.zeros((n, 1 + 2 * self.context_slices, h, w), np.float32),
                      labels=np.zeros((n, h, w), np.int64),
                      class_mask=np.zeros((n, L.NUM_CLASSES), bool),
                      has_seg=np.zeros(n, bool),
                      heatmaps=np.zeros((n, L.NUM_KEYPOINTS, h // HEATMAP_STRIDE,
                                         w // HEATMAP_STRIDE), np.float32),
                      kp_mask=np.zeros((n, L.NUM_KEYPOINTS), bool),
                      distance=np.zeros((n, h, w), np.float32),
                      ce_weight=np.ones((n, h, w), np.float32) if self.gap_weight > 0 else None)
        for i, smp in enumerate(samples):
            pc = smp.case
            batch.image[i] = smp.image
            batch.labels[i] = smp.labels
            batch.class_mask[i, 0] = True
            batch.class_mask[i, list(pc.labelled_classes)] = True
            batch.has_seg[i] = not pc.is_weak
            batch.heatmaps[i] = gaussian_heatmaps(smp.points, (h, w), self.sigma_px)
            batch.kp_mask[i, list(pc.labelled_keypoints)] = True
            batch.distance[i] = smp.distance
            if smp.ce_weight is not None:
                batch.ce_weight[i] = smp.ce_weight
        return batch


def _lowres(u: np.ndarray, factor: float) -> np.ndarray:
    """A 2D image at 1/factor resolution, zoomed back up (within a pixel of its shape)."""
    small = ndimage.zoom(u, 1 / factor, order=1)
    return ndimage.zoom(small, np.array(u.shape) / np.array(small.shape), order=1)


def _bias_field(shape: tuple[int, int], strength: float, rng) -> np.ndarray:
    """A smooth multiplicative field exp(p(y, x)), p a random quadratic in [-strength, strength]."""
    y = np.linspace(-1, 1, shape[0])[:, None]
    x = np.linspace(-1, 1, shape[1])[None, :]
    c = rng.uniform(-1, 1, 6)
    p = c[0] * y + c[1] * x + c[2] * y * x + c[3] * y**2 + c[4] * x**2 + c[5]
    p = p / max(1e-6, float(np.abs(p).max()))
    return np.exp(strength * p)


def _fit(u: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop or edge-pad ``u`` to ``shape`` (zoom can be one pixel off)."""
    u = u[: shape[0], : shape[1]]
    pad = [(0, shape[0] - u.shape[0]), (0, shape[1] - u.shape[1])]
    return np.pad(u, pad, mode="edge") if any(p[1] for p in pad) else u
