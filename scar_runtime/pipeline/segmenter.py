"""The segmentation pipeline, as a Python API (the CLI is a thin shell over it).

    from scar_runtime import Segmenter
    result = Segmenter("scarnet_small.onnx").segment(nibabel_image)
    result.to_nifti()          # uint8 labels in the input's exact geometry

load + reorient -> per-batch preprocessing -> backend -> argmax on the network grid (of the
softmax averaged with the neighbouring slices: postprocess/slice_smoothing.py) -> exact inverse to
the input grid -> 3D post-processing with the network's key-points -> results. Peak memory is
bounded by ``batch``: only one batch of network inputs/outputs (plus two slices of
probabilities) exists at a time, plus one uint8 label slice stack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage

from scar_runtime import labels as L
from scar_runtime.backends import Runner, create_runner
from scar_runtime.core.errors import ConfigError, InvalidImageError
from scar_runtime.io import Volume, labels_to_image, load_volume, volume_from_image
from scar_runtime.pipeline.keypoint_slice import keypoint_slice
from scar_runtime.pipeline.preprocess import intensity_stats, iter_slice_batches, slices_to_labels
from scar_runtime.pipeline.roi import (
    RoiBox,
    RoiConfig,
    RoiDecision,
    coarse_pass,
    grow_box,
    probe_slices,
    probe_step,
    touches_inner_edge,
    window_share,
)
from scar_runtime.pipeline.straighten import InplaneRotation, column_axis_deg
from scar_runtime.postprocess import PostprocessConfig, PostprocessReport, postprocess
from scar_runtime.postprocess.naming import keypoints_inside
from scar_runtime.postprocess.slice_smoothing import SliceSmoother

DEFAULT_MODEL_NAME = "scarnet_small.onnx"
# Slices per backend call. Batch 1 keeps the peak RSS lowest (the AT attention matrix grows with
# the batch) and was not slower per slice on the 2-core CPU (docs/performance.md).
DEFAULT_BATCH = 1


def default_model_path() -> Path | None:
    """The model shipped inside the package, if this version ships one."""
    p = Path(str(resources.files("scar_runtime") / "models" / DEFAULT_MODEL_NAME))
    return p if p.is_file() else None


@dataclass
class Keypoint:
    name: str
    voxel: list[float]  # in the INPUT file's voxel grid
    world_mm: list[float]
    confidence: float
    slice_index: int  # working-layout sagittal slice it was read on


@dataclass
class SegmentationResult:
    volume: Volume
    labels: np.ndarray  # working layout, uint8 model classes
    keypoints: list[Keypoint]
    report: PostprocessReport = field(default_factory=PostprocessReport)
    backend: str = ""
    # seconds per stage: preprocess (normalise, resample, pad), inference (backend calls),
    # postprocess (argmax, inverse mapping, key-points, 3D post-processing)
    timings: dict[str, float] = field(default_factory=dict)
    # which path ran (spine-first or full-field), why, and the box (pipeline/roi.py)
    roi: dict = field(default_factory=dict)

    def to_nifti(self) -> nib.Nifti1Image:
        return labels_to_image(self.labels, self.volume.source)

    def stats(self) -> dict:
        """Volume (mm^3), sagittal slices present and mean input intensity per structure."""
        voxel_mm3 = float(np.prod(self.volume.spacing))
        # one pass over the volume for every structure's box, then each structure in its box
        boxes = ndimage.find_objects(self.labels, max_label=max(L.BY_ID))
        out = {}
        for s in L.ALL_STRUCTURES:
            box = boxes[s.model_id - 1]
            if box is None:
                out[s.name] = {"present": False}
                continue
            m = self.labels[box] == s.model_id
            n = int(m.sum())
            slices = np.nonzero(m.any(axis=(0, 1)))[0] + box[2].start
            out[s.name] = {"present": True, "voxels": n, "volume_mm3": round(n * voxel_mm3, 1),
                           "sagittal_slices": [int(slices.min()), int(slices.max())],
                           "n_slices": int(len(slices)),
                           # float64: a float32 sum of huge (finite) intensities overflows
                           "mean_intensity": float(
                               self.volume.data[box][m].mean(dtype=np.float64))}
        return out


class Segmenter:
    def __init__(self, model: Path | str | None = None, *, backend: str = "auto",
                 device: str = "auto", batch: int = DEFAULT_BATCH, threads: int | None = None,
                 precision: str = "auto",
                 postprocess_config: PostprocessConfig | None = None,
                 use_postprocess: bool = True, runner: Runner | None = None,
                 roi: RoiConfig | bool = True):
        """``runner``: an existing backend runner (any object with the Runner interface, e.g. a
        PyTorch one in benchmarks) instead of a model path. ``roi``: find the spine on a coarse
        pass first and run the network only in its box (pipeline/roi.py); False: every pixel
        of every slice, the full-field path of earlier versions."""
        if batch < 1:
            raise ConfigError("--batch must be >= 1")
        if runner is None:
            if model is None:
                model = default_model_path()
                if model is None:
                    raise ConfigError("no model ships with this version of scar-net: pass "
                                      "--model MODEL.onnx (made with `scar export`)")
            runner = create_runner(Path(model), backend=backend, device=device, threads=threads,
                                   precision=precision)
        self.model = Path(model) if model is not None else Path(runner.name)
        self.batch = batch
        self.runner: Runner = runner
        if not self.runner.is_active:
            self.runner.activate()  # fail now (bad model file) rather than on the first case
        self.metadata = self.runner.metadata
        self.post_cfg = postprocess_config or PostprocessConfig()
        self.use_postprocess = use_postprocess
        self.roi = roi if isinstance(roi, RoiConfig) else RoiConfig(enabled=bool(roi))

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def segment(self, image: nib.Nifti1Image | Volume | Path | str) -> SegmentationResult:
        vol = self._as_volume(image)
        cfg = self.metadata.preprocess
        rows, cols = vol.shape[:2]
        if min(rows * vol.spacing[0], cols * vol.spacing[1]) < 32:
            raise InvalidImageError(f"{vol.name}: a sagittal slice of "
                                    f"{rows * vol.spacing[0]:.0f} x {cols * vol.spacing[1]:.0f}"
                                    " mm is too small to hold a lumbar spine")
        t = {"preprocess_s": 0.0, "inference_s": 0.0, "postprocess_s": 0.0}
        clock = time.perf_counter()
        # one normalisation for every pass: a rotated copy's filled corners must not shift it
        intensity = intensity_stats(vol.data, cfg)
        t["preprocess_s"] += time.perf_counter() - clock
        decision = self._find_box(vol, intensity, t)
        labels, keypoints, report, bare = self._pass(vol, intensity, t, box=decision.box)
        if decision.box is not None:
            edge = (touches_inner_edge(labels, decision.box, vol.shape, vol.spacing,
                                       self.roi.edge_mm) if report.lumbar_spine_found else "")
            if not report.lumbar_spine_found or edge:
                decision.reason = ("in the box: " + (f"a structure at its {edge} edge" if edge
                                   else report.reason or "no lumbar spine")
                                   + "; the full field segmented instead")
                decision.path, decision.box = "full-field", None
                labels, keypoints, report, bare = self._pass(vol, intensity, t)
        if self.use_postprocess and self.post_cfg.straighten_passes > 0:
            labels, keypoints, report = self._straightened(vol, intensity, t, bare,
                                                           (labels, keypoints, report))
        return SegmentationResult(volume=vol, labels=labels, keypoints=keypoints, report=report,
                                  backend=self.runner.description, timings=t,
                                  roi=decision.to_dict(vol.shape))

    def _find_box(self, vol: Volume, intensity, t: dict[str, float]) -> RoiDecision:
        """The coarse first pass (pipeline/roi.py): the box the full-resolution pass is to see,
        or None (the full field) with the reason."""
        if not self.roi.enabled:
            return RoiDecision(reason="--roi off")
        if not self.use_postprocess:
            return RoiDecision(reason="bare network (no post-processing): full field")
        best = window_share(vol.shape, vol.spacing, self.roi)
        probes = len(probe_slices(vol.shape[2], probe_step(vol.shape[2], vol.spacing[2],
                                                           self.roi))) / vol.shape[2]
        if probes + best > self.roi.max_share:  # no box could save enough: no probes either
            return RoiDecision(reason=f"probes ({probes:.0%} of the slices) and the smallest "
                               f"window ({best:.0%} of the field) would cost more than "
                               f"{self.roi.max_share:.0%} of the full field")
        clock = time.perf_counter()
        found, why, step = coarse_pass(self.runner, vol.data, vol.spacing, intensity,
                                       self.metadata.preprocess, self.roi, self.post_cfg)
        decision = RoiDecision(reason=why, coarse_box=found)
        if found is not None:
            box = grow_box(found, vol.shape, vol.spacing, self.roi, self.metadata.preprocess,
                           step)
            if box.share(vol.shape) > self.roi.max_share:
                decision.reason = (f"the box holds {box.share(vol.shape):.0%} of the field: "
                                   "full field")
            else:
                decision.path, decision.box = "spine-first", box
        decision.coarse_s = time.perf_counter() - clock
        t["roi_s"] = t.get("roi_s", 0.0) + decision.coarse_s
        return decision

    def _pass(self, vol: Volume, intensity, t: dict[str, float], in_view=None,
              box: RoiBox | None = None):
        """The network over every slice (``box``: over that part of the volume only), then
        post-processing on the whole grid: ``(labels, key-points, report, the network's own
        labels)``; stage times are added to ``t``."""
        cfg = self.metadata.preprocess
        clock = time.perf_counter()
        data = vol.data if box is None else vol.data[box.slices]
        origin = (0, 0, 0) if box is None else box.start
        grid, batches = iter_slice_batches(data, vol.inplane_spacing, cfg, self.batch,
                                           intensity=intensity)
        n = data.shape[2]
        pred = np.zeros((n,) + tuple(grid.out_shape), np.uint8)
        kp_net = np.zeros((n, L.NUM_KEYPOINTS, 2), np.float32)
        kp_conf = np.zeros((n, L.NUM_KEYPOINTS), np.float32)
        smoother = SliceSmoother(n, self.post_cfg.slice_smoothing if self.use_postprocess
                                 else 0.0)  # the bare network: each slice's own argmax
        for start, x in batches:
            t["preprocess_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            out = self.runner.infer(x)
            t["inference_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            stop = start + x.shape[0]
            for first, labels in smoother.push(start, out["probs"]):
                pred[first:first + len(labels)] = labels
            kp_net[start:stop] = out["keypoints"]
            kp_conf[start:stop] = out["heatmaps"].reshape(x.shape[0], L.NUM_KEYPOINTS, -1).max(-1)
            t["postprocess_s"] += time.perf_counter() - clock  # argmax belongs to post-processing
            clock = time.perf_counter()
        t["preprocess_s"] += time.perf_counter() - clock  # the generator's final step
        clock = time.perf_counter()
        bare = slices_to_labels(pred, grid)
        if box is not None:
            inside, bare = bare, np.zeros(vol.shape, np.uint8)
            bare[box.slices] = inside
        keypoints, kp_mm, conf = self._keypoints(vol, grid, kp_net, kp_conf, origin)
        labels, report = bare, PostprocessReport()
        if self.use_postprocess:
            labels, report = postprocess(bare, vol.spacing, kp_mm, conf, self.post_cfg,
                                         in_view=in_view)
            # key-point k now lies inside structure k wherever that structure exists
            keypoints = self._moved_keypoints(vol, keypoints, report.keypoints_mm or {})
        t["postprocess_s"] += time.perf_counter() - clock
        return labels, keypoints, report, bare

    def _straightened(self, vol: Volume, intensity, t: dict[str, float], bare: np.ndarray,
                      first: tuple):
        """Segment again with the column rotated upright when it leans more than
        ``straighten_above_deg`` from upright, and again while the rotated one is still more
        than ``straighten_again_deg`` off (straighten.py); the labels come back on the input
        grid, the key-points inside their structures there."""
        cfg = self.post_cfg
        labels, keypoints, report = first
        axis = column_axis_deg(bare, vol.spacing)
        turned, passes, current = 0.0, 0, axis
        net_mm = self.metadata.preprocess.spacing_mm
        rot, turned_vol = None, vol
        while (passes < cfg.straighten_passes and current is not None
               and abs(current - cfg.upright_axis_deg) > (cfg.straighten_again_deg if passes
                                                          else cfg.straighten_above_deg)):
            turned += current - cfg.upright_axis_deg
            rot = InplaneRotation.plan(vol.shape, vol.spacing, turned, (net_mm, net_mm),
                                       max_pixels=self.metadata.preprocess.max_size)
            clock = time.perf_counter()
            turned_vol = rot.volume(vol)
            t["preprocess_s"] += time.perf_counter() - clock
            labels, keypoints, report, bare = self._pass(turned_vol, intensity, t,
                                                         in_view=rot.in_view())
            current = column_axis_deg(bare, turned_vol.spacing)  # its pixels: the network's
            passes += 1
        if rot is not None and not report.lumbar_spine_found:
            # no spine upright either (a cervical scan, a knee): the first answer, without
            # a word about a lean that was never a lumbar column's
            rot = None
            labels, keypoints, report = first
        report.column_axis_deg = None if axis is None else round(axis, 1)
        if rot is None:
            return labels, keypoints, report
        clock = time.perf_counter()
        labels = rot.labels_back(labels)
        spacing, turned_spacing = np.asarray(vol.spacing), np.asarray(turned_vol.spacing)
        kvox = {k: rot.to_input_voxel(np.asarray(p) / turned_spacing)
                for k, p in (report.keypoints_mm or {}).items()}
        # nearest-neighbour resampling can leave a point just outside its structure's edge
        moved, moves = keypoints_inside(labels, kvox, spacing)
        report.keypoint_moves += [f"{m} (after rotating back)" for m in moves]
        report.keypoints_mm = {k: v * spacing for k, v in moved.items()}
        keypoints = self._moved_keypoints(vol, keypoints, report.keypoints_mm)
        report.straightened_deg, report.straighten_passes = round(turned, 1), passes
        report.warnings.append(
            f"the spine leans {axis:.0f} degrees in the image (upright: "
            f"{cfg.upright_axis_deg:.0f}): it was rotated {abs(turned):.0f} degrees upright "
            "to be segmented and the labels rotated back; check the preview")
        t["postprocess_s"] += time.perf_counter() - clock
        return labels, keypoints, report

    @staticmethod
    def _as_volume(image) -> Volume:
        if isinstance(image, Volume):
            return image
        if isinstance(image, str | Path):
            return load_volume(image)
        return volume_from_image(image)

    @staticmethod
    def _moved_keypoints(vol: Volume, keypoints: list[Keypoint],
                         moved_mm: dict[int, np.ndarray]) -> list[Keypoint]:
        to_src = np.linalg.inv(vol.source.affine)
        out = []
        for k, kp in enumerate(keypoints):
            if k not in moved_mm:
                out.append(kp)
                continue
            work = np.asarray(moved_mm[k], float) / np.array(vol.spacing)
            world = apply_affine(vol.affine, work)
            if np.allclose(world, kp.world_mm, atol=0.01):
                out.append(kp)
                continue
            src = apply_affine(to_src, world)
            out.append(Keypoint(name=kp.name, voxel=[round(float(v), 2) for v in src],
                                world_mm=[round(float(v), 2) for v in world],
                                confidence=kp.confidence, slice_index=int(round(work[2]))))
        return out

    @staticmethod
    def _keypoints(vol: Volume, grid, kp_net, kp_conf, origin=(0, 0, 0)):
        """Each key-point lies at the centre of the slices where its heatmap reaches half its
        highest peak (keypoint_slice.py), its in-plane position read on the slice of that peak.
        ``origin``: the working-layout voxel of the network's first row, column and slice."""
        out, mm, conf = [], {}, {}
        to_src = np.linalg.inv(vol.source.affine)
        for k, name in enumerate(L.KEYPOINT_NAMES):
            centre, s = keypoint_slice(kp_conf[:, k])
            r, c = grid.to_input(kp_net[s, k])
            work = np.array([r, c, centre], dtype=np.float64) + origin
            world = apply_affine(vol.affine, work)
            src = apply_affine(to_src, world)
            confidence = float(np.clip(kp_conf[s, k], 0.0, 1.0))
            out.append(Keypoint(name=name, voxel=[round(float(v), 2) for v in src],
                                world_mm=[round(float(v), 2) for v in world],
                                confidence=round(confidence, 3),
                                slice_index=int(round(work[2]))))
            mm[k] = work * np.array(vol.spacing)  # the frame postprocess() works in
            conf[k] = confidence
        return out, mm, conf
