"""Parity of an exported model with the PyTorch model, on REAL slices (``MODEL.parity.json``).

What is tested: up to :data:`N_SLICES` preprocessed sagittal slices of the validation cases
recorded in the checkpoint (``extra.data_index`` + ``extra.val_cases``; the slices with the most
labelled structure, at most one neighbour apart), each centre-cropped/padded to every size of
:data:`SIZES` (all multiples of 16, so three different H/W) and run at batch sizes 1 and 4, in
ONNX Runtime (CPU) and in PyTorch (FP32, eval mode, the same batch). When the index or its val
cases cannot be read, the slices come from the sample volume shipped with scar-net (a val case
of the shipped model's training data) and the JSON says so and why.

Reported: ``max_abs_diff`` (largest |ONNX - PyTorch| of ``probs``), ``label_agreement``
(fraction of pixels with the same argmax, pooled), the same for ``heatmaps``/``keypoints``,
``finite``, per-run values, and for FP16 the ``dice_difference``: mean over structures of
|Dice(FP16 labels, reference mask) - Dice(FP32 labels, reference mask)| in points (Dice pooled
over the tested slices, only structures the case's data set labels). Without any reference mask
it is ``100 * (1 - Dice(FP16 labels, FP32 labels))`` averaged over the predicted structures
(``dice_reference`` says which).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scar_runtime import labels as L
from scar_runtime.backends.precision import GATE_LIMITS
from scar_runtime.backends.threads import default_threads
from scar_runtime.core.errors import ScarError
from scar_runtime.evaluation.metrics import dice
from scar_runtime.pipeline.preprocess import PreprocessConfig, image_to_slices, labels_to_slices

SIZES = ((256, 256), (320, 192), (384, 384))
BATCHES = (1, 4)
N_SLICES = 4

FP32_LIMITS = {"max_abs_diff": 1e-3, "label_agreement": 0.999}
# FP16 exports and the CPU's reduced precisions (BF16) are held to the runtime's own gate limits
# (scar_runtime.backends.precision.GATE_LIMITS), which re-checks the recorded BF16 entry.

SAMPLE_IMAGE = "chu2015_14_crop_img.nii.gz"
SAMPLE_MASK = "chu2015_14_crop_seg.nii.gz"


@dataclass
class ParitySlice:
    case: str
    index: int
    image: np.ndarray  # (C, H, W) float32, preprocessed, network grid (C: 2.5D channels)
    labels: np.ndarray | None  # (H, W) model ids, or None without a mask
    labelled: frozenset[int]  # classes the case's data set labels


def _sample_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("scar_runtime") / "sample"))


def _pick(counts: np.ndarray, n: int) -> list[int]:
    """Slices with the most labelled voxels, no two adjacent; central slices without a mask."""
    order = np.argsort(-counts, kind="stable") if counts.any() else \
        np.argsort(np.abs(np.arange(len(counts)) - (len(counts) - 1) / 2), kind="stable")
    chosen: list[int] = []
    for i in order:
        if all(abs(int(i) - j) >= 2 for j in chosen):
            chosen.append(int(i))
        if len(chosen) == n:
            break
    return chosen


def _volume_slices(case_id: str, vol, seg, labelled: frozenset[int], cfg: PreprocessConfig,
                   n: int) -> list[ParitySlice]:
    x, grid = image_to_slices(vol.data, vol.inplane_spacing, cfg)
    y = labels_to_slices(seg, grid) if seg is not None else None
    counts = (np.isin(y, list(labelled)).sum(axis=(1, 2)) if y is not None
              else np.zeros(x.shape[0]))
    return [ParitySlice(case_id, i, x[i], None if y is None else y[i], labelled)
            for i in _pick(counts, n)]


def _val_slices(ckpt: dict, cfg: PreprocessConfig, n: int) -> tuple[list[ParitySlice], dict]:
    """Slices of the checkpoint's val cases; raises ScarError/OSError when they are unreachable."""
    from scar_runtime.evaluation.dataset import index_hash, read_index

    extra = ckpt.get("extra") or {}
    index = extra.get("data_index") or (ckpt.get("train_config") or {}).get("data")
    val_ids = list(extra.get("val_cases") or [])
    if not index:
        raise ScarError("the checkpoint records no data index")
    if not val_ids:
        raise ScarError("the checkpoint records no validation cases")
    cases = {c.id: c for c in read_index(index)}
    missing = [v for v in val_ids if v not in cases]
    if len(missing) == len(val_ids):
        raise ScarError(f"none of the checkpoint's val cases is in {index}")
    val = [cases[v] for v in val_ids if v in cases]
    val.sort(key=lambda c: c.seg is None)  # cases with a mask first (Dice needs one)
    per_case = [n // len(val) + (i < n % len(val)) for i in range(len(val))][: n]
    out: list[ParitySlice] = []
    for case, k in zip(val, per_case, strict=False):
        if k == 0:
            continue
        vol = case.load_image()
        seg = case.load_seg(vol).data if case.seg is not None else None
        out += _volume_slices(case.id, vol, seg, case.labelled_classes, cfg, k)
    info = {"source": "val", "data_index": str(index),
            "data_index_sha256_matches": index_hash(index) == ckpt.get("data_index_sha256"),
            "val_cases": val_ids, "val_cases_missing": missing}
    return out, info


def _sample_slices(cfg: PreprocessConfig, n: int) -> list[ParitySlice]:
    from scar_runtime.io import load_volume

    d = _sample_dir()
    vol = load_volume(d / SAMPLE_IMAGE)
    seg = L.verse_to_model(load_volume(d / SAMPLE_MASK, as_labels=True).data)
    return _volume_slices("sample/chu2015_14", vol, seg, frozenset(L.VERTEBRA_IDS), cfg, n)


def parity_slices(ckpt: dict, n: int = N_SLICES) -> tuple[list[ParitySlice], dict]:
    """Real val slices of the checkpoint, or the shipped sample's (with the reason)."""
    cfg = PreprocessConfig.from_dict(ckpt["preprocess"])
    try:
        slices, info = _val_slices(ckpt, cfg, n)
        if not slices:
            raise ScarError("the val cases gave no slices")
        return slices, info
    except (ScarError, OSError) as e:
        reason = " ".join(str(e).split())
    slices = _sample_slices(cfg, n)
    return slices, {"source": "sample", "volume": f"scar_runtime/sample/{SAMPLE_IMAGE}",
                    "fallback_reason": f"val slices not available: {reason}"}


def fit(a: np.ndarray, shape: tuple[int, int], fill: float) -> np.ndarray:
    """Centre crop and/or pad the last two axes of ``a`` to ``shape``."""
    out = np.full(a.shape[:-2] + tuple(shape), fill, dtype=a.dtype)
    src, dst = [slice(None)] * (a.ndim - 2), [slice(None)] * (a.ndim - 2)
    for n, m in zip(a.shape[-2:], shape, strict=True):
        if n >= m:
            s = (n - m) // 2
            src.append(slice(s, s + m))
            dst.append(slice(0, m))
        else:
            d = (m - n) // 2
            src.append(slice(0, n))
            dst.append(slice(d, d + n))
    out[tuple(dst)] = a[tuple(src)]
    return out


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = default_threads()  # the runtime's count (OMP_NUM_THREADS or cores)
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class PooledDice:
    """Dice per class pooled over label maps of any sizes (the pixels of every map added for a
    class count as one image): scar_runtime's Dice on the concatenated pixels. A class that is
    in neither prediction nor reference anywhere has no Dice (left out)."""

    def __init__(self) -> None:
        self._pairs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, pred: np.ndarray, ref: np.ndarray, classes) -> None:
        for c in classes:
            self._pairs.setdefault(c, []).append((pred.ravel() == c, ref.ravel() == c))

    def scores(self) -> dict[int, float]:
        out = {}
        for c, pairs in self._pairs.items():
            p, g = (np.concatenate(masks) for masks in zip(*pairs, strict=True))
            if p.any() or g.any():
                out[c] = dice(p, g)
        return out


def run_parity(onnx_path: Path, reference, ckpt: dict, *, precision: str,
               slices: list[ParitySlice] | None = None, data_info: dict | None = None) -> dict:
    """Compare the ONNX model at ``onnx_path`` with ``reference`` (FP32 PyTorch module)."""
    import torch

    t0 = time.time()
    if slices is None:
        slices, data_info = parity_slices(ckpt)
    sess = _ort_session(onnx_path)
    runs = []
    agree = total = 0
    finite = True
    mask_dice = {"fp32": PooledDice(), "onnx": PooledDice()}
    pair_dice = PooledDice()
    ref_labels: dict[tuple[int, int], np.ndarray] = {}  # PyTorch labels, largest-batch runs
    worst = {"max_abs_diff": 0.0, "heatmaps_max_abs_diff": 0.0, "keypoints_max_abs_diff": 0.0}
    for h, w in SIZES:
        images = np.stack([fit(s.image, (h, w), float(s.image.min())) for s in slices])
        labels = [None if s.labels is None else fit(s.labels, (h, w), 0) for s in slices]
        for batch in BATCHES:
            for start in range(0, len(slices), batch):
                x = np.ascontiguousarray(images[start:start + batch])
                with torch.no_grad():
                    ref = [t.numpy() for t in reference(torch.from_numpy(x))]
                got = sess.run(None, {"image": x})
                ok = all(bool(np.isfinite(g).all()) for g in got)
                finite &= ok
                diffs = [float(np.abs(g.astype(np.float64) - r).max()) if ok else float("inf")
                         for g, r in zip(got, ref, strict=True)]
                lab_ref, lab_got = ref[0].argmax(1), got[0].argmax(1)
                same = int((lab_ref == lab_got).sum())
                agree += same
                total += lab_ref.size
                runs.append({"batch": batch, "height": h, "width": w,
                             "slices": list(range(start, start + len(x))),
                             "max_abs_diff": diffs[0], "heatmaps_max_abs_diff": diffs[1],
                             "keypoints_max_abs_diff": diffs[2],
                             "label_agreement": same / lab_ref.size, "finite": ok})
                for k, d in zip(("max_abs_diff", "heatmaps_max_abs_diff",
                                 "keypoints_max_abs_diff"), diffs, strict=True):
                    worst[k] = max(worst[k], d)
                if batch != max(BATCHES):
                    continue  # Dice once per slice and size (the largest batch's run)
                ref_labels[(h, w)] = (lab_ref if start == 0 else
                                      np.concatenate([ref_labels[(h, w)], lab_ref]))
                for j in range(len(x)):
                    s, y = slices[start + j], labels[start + j]
                    pair_dice.add(lab_got[j], lab_ref[j], range(1, L.NUM_CLASSES))
                    if y is None:
                        continue
                    for name, lab in (("fp32", lab_ref[j]), ("onnx", lab_got[j])):
                        mask_dice[name].add(lab, y, sorted(s.labelled))
    result = {
        "model": Path(onnx_path).name,
        "precision": precision,
        "reference": "PyTorch FP32, eval mode, same batch",
        "runtime": _ort_version(),
        "data": data_info,
        "slices": [{"case": s.case, "slice": s.index, "network_shape": list(s.image.shape[-2:]),
                    "has_mask": s.labels is not None} for s in slices],
        "sizes": [list(s) for s in SIZES],
        "batches": list(BATCHES),
        **worst,
        "label_agreement": agree / max(total, 1),
        "min_run_label_agreement": min(r["label_agreement"] for r in runs),
        "finite": finite,
        "runs": runs,
    }
    if precision == "fp16":
        result.update(_dice_summary(mask_dice, pair_dice))
    if precision == "fp32":
        result["reduced_precision"] = reduced_precision_gates(onnx_path, slices, ref_labels)
    result["limits"] = GATE_LIMITS if precision == "fp16" else FP32_LIMITS
    result["failures"] = failures(result)
    result["passed"] = not result["failures"]
    result["seconds"] = round(time.time() - t0, 1)
    return result


def _dice_summary(mask_dice: dict[str, PooledDice], pair_dice: PooledDice,
                  name: str = "fp16") -> dict:
    d32, d16 = mask_dice["fp32"].scores(), mask_dice["onnx"].scores()
    common = sorted(set(d32) & set(d16))
    names = L.CLASS_NAMES
    if common:
        diff = float(np.mean([abs(d16[c] - d32[c]) for c in common]) * 100)
        return {"dice_reference": "reference masks", "dice_difference": diff,
                "dice": {names[c]: {"fp32": d32[c], name: d16[c]} for c in common}}
    pair = pair_dice.scores()
    diff = float(np.mean([1 - v for v in pair.values()]) * 100) if pair else 0.0
    return {"dice_reference": "FP32 labels (no reference mask on the tested slices)",
            "dice_difference": diff, "dice": {names[c]: {f"{name}_vs_fp32": v}
                                              for c, v in pair.items()}}


def reduced_precision_gates(onnx_path: Path, slices: list[ParitySlice],
                            ref_labels: dict[tuple[int, int], np.ndarray]) -> dict:
    """The gates of the CPU reduced precisions the runtime may use, on the same real slices:
    ``openvino-bf16`` (OpenVINO's BF16 inference precision) against the FP32 PyTorch labels,
    label agreement >= 0.995 and Dice within 0.5 point (``GATE_LIMITS``). An entry is
    ``{"skipped": why}`` where it cannot be measured here (no openvino, no native BF16); the
    runtime refuses BF16 unless the entry passed (scar_runtime.backends.precision)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return {"openvino-bf16": {"skipped": "openvino is not installed"}}
    from scar_runtime.backends.openvino import OpenVinoRunner, cpu_capabilities

    caps = cpu_capabilities()
    if "BF16" not in caps:
        return {"openvino-bf16": {"skipped": f"this CPU has no native BF16 (OpenVINO reports "
                                             f"{', '.join(caps)})"}}
    t0 = time.time()
    # threads: the runner's default (scar_runtime.backends.threads.default_threads)
    runner = OpenVinoRunner(onnx_path, precision="bf16", require_gate_record=False,
                            use_cache=False)
    try:
        runner.activate()
    except ScarError as e:
        return {"openvino-bf16": {"skipped": f"OpenVINO could not run the model: {e}"}}
    agree = total = 0
    finite = True
    mask_dice = {"fp32": PooledDice(), "onnx": PooledDice()}
    pair_dice = PooledDice()
    batch = max(BATCHES)
    for (h, w), lab_ref in ref_labels.items():
        images = np.stack([fit(s.image, (h, w), float(s.image.min())) for s in slices])
        for start in range(0, len(slices), batch):
            probs = runner.infer(np.ascontiguousarray(images[start:start + batch]))["probs"]
            finite &= bool(np.isfinite(probs).all())
            got, ref = probs.argmax(1), lab_ref[start:start + batch]
            agree += int((got == ref).sum())
            total += ref.size
            for j in range(len(got)):
                s = slices[start + j]
                pair_dice.add(got[j], ref[j], range(1, L.NUM_CLASSES))
                if s.labels is None:
                    continue
                y = fit(s.labels, (h, w), 0)
                for name, lab in (("fp32", ref[j]), ("onnx", got[j])):
                    mask_dice[name].add(lab, y, sorted(s.labelled))
    runner.deactivate()
    entry = {"backend": "openvino", "precision": "bf16", "cpu_capabilities": caps,
             "reference": "PyTorch FP32 labels, same slices and sizes",
             "sizes": [list(k) for k in ref_labels], "batch": batch,
             "label_agreement": agree / max(total, 1), "finite": finite,
             **_dice_summary(mask_dice, pair_dice, name="bf16"), "limits": GATE_LIMITS}
    entry["failures"] = failures(entry)
    entry["passed"] = not entry["failures"]
    entry["seconds"] = round(time.time() - t0, 1)
    return {"openvino-bf16": entry}


def failures(result: dict) -> list[str]:
    """Which limits a parity result breaks (empty: passed)."""
    out = []
    if not result["finite"]:
        out.append("non-finite outputs")
    for key, limit in result["limits"].items():
        value = result.get(key)
        if value is None:
            continue
        if key == "label_agreement" and value < limit:
            out.append(f"label_agreement {value:.5f} < {limit}")
        elif key != "label_agreement" and value > limit:
            out.append(f"{key} {value:.3g} > {limit}")
    return out


def _ort_version() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} CPUExecutionProvider"


def dumps(result: dict) -> str:
    return json.dumps(result, indent=1, allow_nan=True) + "\n"
