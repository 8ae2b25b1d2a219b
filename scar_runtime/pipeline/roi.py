"""Spine first, then pixels: find the lumbar column's box cheaply, run the network only there.

The network costs the same for every pixel it sees, and a lumbar sagittal slice is mostly not
spine (the reference mask of the bench volume, vb_chu2015/16, fills 247 x 69 x 58 of its
381 x 381 x 77 voxels). So ``Segmenter`` first runs the same network on sparse probe slices (one
sagittal slice every ``probe_mm``, at least ``min_probes``: 1/11 of the slices of a 1 mm
volume), post-processes that sparse stack (the same column check as a real answer: a cervical
scan or a knee is "no lumbar spine" here too), and takes the box of what is left, plus a
margin, as the region the full pass sees.

The probes keep the network's own 1 mm pixels: on a coarser grid (2 mm, or 1.5 mm, every second
slice; measured on the 13 val volumes) the network, trained at 1 mm, saw vertebrae too small to
be lumbar ones and found the column in 3 (2 mm) of 13 volumes, and at 1.5 mm missed up to half
of the column's height (vb_myosegmentum/01: rows 107-206 of the reference's 34-205).

The box is grown to whole network tiles (multiples of ``size_multiple`` network pixels) inside
the image, so the network's padding is image, not a made-up border, wherever the image has it.
The full field is used instead (and the reason recorded) when the probes find no column,
fewer than ``min_structures`` structures, or when the box would cover most of the field anyway;
``Segmenter`` also goes back to the full field when the pass inside the box finds no lumbar spine
or a structure touching a side of the box that is not the image's edge. What the crop changes
(the network's attention is global) is measured per val set in docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from scar_runtime.pipeline.preprocess import PreprocessConfig, iter_slice_batches, plan_grid
from scar_runtime.postprocess import PostprocessConfig, postprocess


@dataclass(frozen=True)
class RoiConfig:
    """``enabled``: False keeps the full-field path exactly as it was (``scar infer --roi off``).
    ``margin_mm``: added to the coarse box along (head-feet, front-back, left-right)."""

    enabled: bool = True
    # between probe slices (a lumbar body is ~45 mm wide): 12 mm, 7 probes of vb_chu2015/16's
    # 77 slices, found the same in-plane box as 8 mm (10 probes) on the 13 val volumes,
    # within 2 pixels, for 30% less probe time (20 mm measured well only with the window on
    # the full grid, which is not shipped: docs/performance.md)
    probe_mm: float = 12.0
    min_probes: int = 3
    margin_mm: tuple[float, float, float] = (24.0, 24.0, 4.0)
    # the in-plane window is at least this many mm each way (where the image has them),
    # centred on the box: the network's pooling and attention see the whole window, and it
    # learned on 256 x 256 mm crops around the spine. Val VB Dice, spine-first - full field,
    # points (docs/performance.md): no minimum (windows ~130 mm wide) vb_myosegmentum -1.75,
    # vb_chu2015 +0.7; 256 mm: vb_chu2015 +0.3, the smaller fields all full field; 192 mm:
    # vb_chu2015 -0.2, seg_spider2024 -0.15, at a third of the chu2015 fields' pixels
    min_window_mm: float = 192.0
    min_structures: int = 4
    # a box this large a share of the field's pixels (rows x cols x slices) saves too little;
    # nor are the probes run when their share of the slices plus the smallest window's share
    # of the field exceeds it (a 224 x 224 mm field, a single slice, a 20-slice stack)
    max_share: float = 0.7
    # a structure of the pass inside the box this close (mm) to a side of the box that is not
    # the image's edge may have been cut by it: the full field is segmented instead
    edge_mm: float = 2.0

    def __post_init__(self):
        if self.probe_mm <= 0 or self.min_probes < 1:
            raise ValueError("probe_mm must be > 0 and min_probes >= 1")


@dataclass
class RoiBox:
    """A box of the working-layout volume: half-open (start, stop) per axis."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    def share(self, shape) -> float:
        return float(np.prod(self.shape) / np.prod(shape))

    def to_list(self) -> list[list[int]]:
        return [[int(a), int(b)] for a, b in zip(self.start, self.stop, strict=True)]


@dataclass
class RoiDecision:
    """What the first pass found and which path ran (stats.json's ``inference_path``)."""

    path: str = "full-field"  # "spine-first" or "full-field"
    reason: str = ""
    box: RoiBox | None = None
    coarse_box: RoiBox | None = None
    coarse_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self, shape) -> dict:
        d = {"path": self.path, "reason": self.reason,
             "coarse_pass_s": round(self.coarse_s, 3)}
        if self.box is not None:
            d["box_voxels"] = self.box.to_list()  # working layout: (start, stop) per axis
            d["box_share"] = round(self.box.share(shape), 3)
        if self.coarse_box is not None:
            d["coarse_box_voxels"] = self.coarse_box.to_list()
        return d


def probe_step(n: int, slice_mm: float, cfg: RoiConfig) -> int:
    """Slices between probes: ``probe_mm`` apart, but at least ``min_probes`` of them."""
    step = max(1, int(round(cfg.probe_mm / slice_mm)))
    return max(1, min(step, n // cfg.min_probes)) if n >= cfg.min_probes else 1


def probe_slices(n: int, step: int) -> np.ndarray:
    """Every ``step``-th slice, placed so the middle slice is one of them."""
    return np.arange((n // 2) % step, n, step)


def coarse_pass(runner, data: np.ndarray, spacing, intensity, pre: PreprocessConfig,
                cfg: RoiConfig, post_cfg: PostprocessConfig, batch: int = 1):
    """The network on the probe slices, post-processed as one sparse stack. Returns ``(box on
    the input grid or None, reason, step)``; the box is the cleaned structures' extent before
    any margin, its slices those of the first and last probe that holds one."""
    step = probe_step(data.shape[2], float(spacing[2]), cfg)
    picked = probe_slices(data.shape[2], step)
    grid, batches = iter_slice_batches(data, tuple(spacing[:2]), pre, batch,
                                       intensity=intensity, only=picked)
    pred = np.zeros(tuple(grid.out_shape) + (len(picked),), np.uint8)
    for first, x in batches:
        probs = runner.infer(x)["probs"]
        pred[:, :, first:first + len(x)] = np.moveaxis(probs.argmax(axis=1), 0, 2)
    sp = (pre.spacing_mm, pre.spacing_mm, float(spacing[2]) * step)
    clean, report = postprocess(pred, sp, None, None, replace(post_cfg, fill_holes=False))
    if not report.lumbar_spine_found:
        return None, f"probe slices: {report.reason or 'no lumbar spine'}", step
    found = [k for k in np.unique(clean) if k]
    if len(found) < cfg.min_structures:
        return (None, f"probe slices: {len(found)} structure(s) (unsure below "
                f"{cfg.min_structures})", step)
    nz = [np.nonzero(clean.any(axis=tuple(a for a in range(3) if a != ax)))[0]
          for ax in range(3)]
    # network pixels -> input pixels (the edges of the first and last pixel)
    lo = grid.to_input(np.array([nz[0][0] - 0.5, nz[1][0] - 0.5]))
    hi = grid.to_input(np.array([nz[0][-1] + 0.5, nz[1][-1] + 0.5]))
    start = (int(np.floor(lo[0])), int(np.floor(lo[1])), int(picked[nz[2][0]]))
    stop = (int(np.ceil(hi[0])) + 1, int(np.ceil(hi[1])) + 1, int(picked[nz[2][-1]]) + 1)
    return RoiBox(start, stop), "", step


def grow_box(box: RoiBox, shape, spacing, cfg: RoiConfig, pre: PreprocessConfig,
             step: int) -> RoiBox:
    """The probes' box plus the margin (and the slices up to the next probe that held
    nothing), clipped to the image, its in-plane size grown to whole network tiles where the
    image has room."""
    sp = np.asarray(spacing, dtype=np.float64)
    extra = np.array(cfg.margin_mm) / sp
    extra[2] += step - 1  # the slices between the last probe that holds one and the next
    start = np.floor(np.array(box.start) - extra).astype(int)
    stop = np.ceil(np.array(box.stop) + extra).astype(int)
    for ax in range(2):  # the smallest window, about the box's centre
        short = int(np.ceil(cfg.min_window_mm / sp[ax])) - (stop[ax] - start[ax])
        if short > 0:
            start[ax] -= short // 2
            stop[ax] += short - short // 2
            if start[ax] < 0:
                stop[ax] -= start[ax]
            if stop[ax] > shape[ax]:
                start[ax] -= stop[ax] - shape[ax]
    start, stop = np.maximum(start, 0), np.minimum(stop, shape)
    for ax in range(2):  # whole tiles: as many input pixels as the network's padded size needs
        n = stop[ax] - start[ax]
        want = plan_grid((n, n), (sp[ax], sp[ax]), pre).out_shape[0]
        need = min(shape[ax], int(np.ceil(want * pre.spacing_mm / sp[ax] - 1e-6)))
        while stop[ax] - start[ax] < need:
            if start[ax] > 0 and (stop[ax] >= shape[ax] or (stop[ax] - start[ax]) % 2):
                start[ax] -= 1
            else:
                stop[ax] += 1
    return RoiBox(tuple(int(v) for v in start), tuple(int(v) for v in stop))


def window_share(shape, spacing, cfg: RoiConfig) -> float:
    """The smallest share of the in-plane field a box can have: that of the minimum window
    (1.0 when the image is no larger than it, as a 224 x 224 mm field is)."""
    return float(np.prod([min(1.0, cfg.min_window_mm / (n * s))
                          for n, s in zip(shape[:2], spacing[:2], strict=True)]))


def touches_inner_edge(labels: np.ndarray, box: RoiBox, shape, spacing, edge_mm: float) -> str:
    """The sides of ``box`` (not the image's edge) that a structure of ``labels`` (the full
    grid) comes within ``edge_mm`` of; empty when none."""
    sides = []
    names = (("top", "bottom"), ("front", "back"), ("one side", "the other side"))
    for ax in range(3):
        d = max(1, int(np.ceil(edge_mm / spacing[ax])))
        other = tuple(a for a in range(3) if a != ax)
        if box.start[ax] > 0:
            band = [slice(None)] * 3
            band[ax] = slice(box.start[ax], box.start[ax] + d)
            if labels[tuple(band)].any(axis=other).any():
                sides.append(names[ax][0])
        if box.stop[ax] < shape[ax]:
            band = [slice(None)] * 3
            band[ax] = slice(box.stop[ax] - d, box.stop[ax])
            if labels[tuple(band)].any(axis=other).any():
                sides.append(names[ax][1])
    return ", ".join(sides)
