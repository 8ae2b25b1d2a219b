"""One backend/precision, measured in its own process: ``python -m benchmarks.worker SPEC.json``.

A fresh process per backend makes peak RSS (``ru_maxrss``) that backend's own. Phases, in order:

1. latency: per batch size, ``warmup`` untimed calls then timed ``runner.infer`` calls on the
   same real slices (size x size); per-slice time = call time / batch;
2. end-to-end: the reference val volume through load -> Segmenter -> write_case, per batch size,
   after one untimed warm-up batch at that volume's grid size; ``peak_rss_mb`` is read here;
3. accuracy: every scored val case through the same pipeline at the largest batch, predictions
   of classes the case's set does not label zeroed (as scar_train.validate does), then
   ``evaluate_case`` / ``summarize`` from scar_runtime.evaluation.metrics.

Writes a JSON result to ``spec["out"]``; on an error it writes what it has plus ``error``.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own memory
    map. Not ``ru_maxrss``: Linux carries it across fork + exec, so a worker would report the
    orchestrator's peak whenever that was larger (seen: every backend at the parent's 689 MB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024, 1)


def _stats(times: list[float], batch: int) -> dict:
    per_slice = np.asarray(times) * 1000.0 / batch
    call = float(np.median(times))
    return {"batch": batch, "n": len(times),
            "slice_ms_p50": round(float(np.percentile(per_slice, 50)), 3),
            "slice_ms_p95": round(float(np.percentile(per_slice, 95)), 3),
            "slice_ms_min": round(float(per_slice.min()), 3),
            "call_ms_p50": round(call * 1000.0, 3),
            "throughput_slices_s": round(batch / call, 2) if call > 0 else None}


class Budget:
    """Soft time budget: after it is spent, loops do only their minimum repetitions."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def time_calls(fn, *, warmup: int, reps: int, min_reps: int, budget: Budget) -> list[float]:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for i in range(reps):
        if i >= min_reps and budget.left() <= 0:
            break
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure_latency(runner, x: np.ndarray, spec: dict, budget: Budget) -> dict:
    out = {}
    for b in spec["batches"]:
        xb = np.ascontiguousarray(x[np.arange(b) % x.shape[0]])
        reps = spec["reps_batch1"] if b == 1 else spec["reps_batchn"]
        times = time_calls(lambda xb=xb: runner.infer(xb), warmup=spec["warmup"], reps=reps,
                           min_reps=min(spec["min_reps"], reps), budget=budget)
        out[str(b)] = _stats(times, b)
    return out


def _median_run(runs: list[dict]) -> dict:
    """The run with the median total (lower median), so its split adds up to its total."""
    order = sorted(runs, key=lambda r: r["total_s"])
    med = dict(order[(len(order) - 1) // 2])
    med["n"] = len(runs)
    med["total_s_all"] = [round(r["total_s"], 3) for r in runs]
    return med


def run_volume(seg, image: Path, write_dir: Path, name: str) -> tuple[dict, object]:
    from benchmarks.pipeline import timed_segment
    from scar_runtime.io import load_volume
    from scar_runtime.io.case_writer import write_case

    t0 = time.perf_counter()
    vol = load_volume(image)
    load = time.perf_counter() - t0
    result, split = timed_segment(seg, vol)
    t0 = time.perf_counter()
    write_case(result, write_dir, name=name, force=True)
    write = time.perf_counter() - t0
    run = {"load_s": load, **split, "write_s": write}
    run["total_s"] = load + split["segment_s"] + write
    return {k: round(v, 4) for k, v in run.items()}, result


def measure_volume(seg, spec: dict, budget: Budget) -> dict:
    from scar_runtime.io import load_volume
    from scar_runtime.pipeline.preprocess import iter_slice_batches

    image = Path(spec["volume"]["image"])
    vol = load_volume(image)
    cfg = seg.metadata.preprocess
    out = {}
    with tempfile.TemporaryDirectory(prefix="scar-bench-") as tmp:
        for b in spec["batches"]:
            seg.batch = b
            grid, gen = iter_slice_batches(vol.data, vol.inplane_spacing, cfg, b)
            seg.runner.infer(next(gen)[1])  # warm-up at this grid size and batch
            runs = []
            for i in range(spec["volume_reps"]):
                if i >= 1 and budget.left() <= 0:
                    break
                run, _ = run_volume(seg, image, Path(tmp), f"volume_b{b}")
                runs.append(run)
            out[str(b)] = {**_median_run(runs), "grid": list(grid.out_shape),
                           "slices": int(vol.shape[2])}
    return out


def measure_accuracy(seg, spec: dict) -> dict:
    from benchmarks.pipeline import timed_segment
    from scar_runtime.core.errors import ScarError
    from scar_runtime.evaluation.dataset import read_index
    from scar_runtime.evaluation.metrics import (
        far_fp_stats,
        masked_case_far_share,
        size_outlier_ratio,
        summarize,
    )
    from scar_runtime.io import load_volume

    wanted = spec["accuracy"]["cases"]
    if not wanted:
        return {}
    cases = {c.id: c for c in read_index(spec["accuracy"]["index"], check_files=False)}
    seg.batch = max(spec["batches"])
    scores, per_case, timings = [], {}, {}
    failed = {}
    for cid in wanted:
        case = cases[cid]
        try:
            t0 = time.perf_counter()
            vol = load_volume(case.image)
            load = time.perf_counter() - t0
            result, split = timed_segment(seg, vol)
            raw = case.load_raw_seg(vol)
            gt = case.load_seg(raw=raw).data
        except ScarError as e:  # a broken case fails the same way for every backend
            failed[cid] = str(e)
            continue
        score = case.score(result.labels, gt, vol)
        scores.append(score)
        # judged whatever the set labels (Dice cannot see a class leaking over the background)
        far = masked_case_far_share(result.labels, raw.data > 0, gt, vol.spacing)
        per_case[case.id] = {"mean_dice": score.mean_dice, "far_fp": far,
                             "size_ratio": size_outlier_ratio(result.labels),
                             "dice": {s.name: s.dice_3d for s in score.structures if s.labelled}}
        timings[case.id] = {"shape": list(vol.shape), "load_s": round(load, 4),
                            **{k: round(v, 4) for k, v in split.items()}}
    if not scores:
        return {"failed_cases": failed}
    summary = summarize(scores)
    summary.update(far_fp_stats(r["far_fp"] for r in per_case.values()))
    return {"batch": seg.batch, "postprocess": seg.use_postprocess, "summary": summary,
            "per_case": per_case, "timings": timings, "failed_cases": failed}


def big_volume_image(image: Path, shape: tuple[int, int, int], out: Path) -> Path:
    """The reference volume resampled (linear) to ``shape`` voxels of 1 mm: real intensities at
    the size of a large scan, for the memory bound (uncompressed, so writing it is quick)."""
    import nibabel as nib
    from scipy.ndimage import zoom

    from scar_runtime.io import load_volume

    vol = load_volume(image)
    data = zoom(vol.data.astype(np.float32), [t / s for t, s in zip(shape, vol.shape,
                                                                     strict=True)], order=1)
    nib.save(nib.Nifti1Image(data[: shape[0], : shape[1], : shape[2]], np.eye(4)), str(out))
    return out


def measure_big_volume(seg, spec: dict) -> dict:
    shape = tuple(spec["big_volume"])
    with tempfile.TemporaryDirectory(prefix="scar-bench-big-") as tmp:
        image = big_volume_image(Path(spec["volume"]["image"]), shape, Path(tmp) / "big.nii")
        seg.batch = spec["batches"][0]
        run, _ = run_volume(seg, image, Path(tmp), "big")
    return {**run, "shape": list(shape), "batch": seg.batch, "peak_rss_mb": rss_mb()}


def run(spec: dict) -> dict:
    from benchmarks.runners import make_runner
    from scar_runtime.pipeline.segmenter import Segmenter

    res: dict = {"variant": spec["variant"], "notes": []}
    phases = spec.get("phases") or ["latency", "volume", "accuracy"]
    budget = Budget(spec["budget_s"])
    t_start = time.perf_counter()
    t0 = time.perf_counter()  # includes `auto`'s measured choice, made in make_runner
    runner = make_runner(spec)
    runner.activate()
    res["activate_s"] = round(time.perf_counter() - t0, 3)
    res["description"] = runner.description
    res["rss_model_loaded_mb"] = rss_mb()
    seg = Segmenter(runner=runner, batch=max(spec["batches"]),
                    use_postprocess=spec["postprocess"], roi=spec.get("roi", False))
    if "latency" in phases:
        x = np.load(spec["latency_input"])
        res["latency"] = measure_latency(runner, x, spec, budget)
        # labels of the latency slices (one call each), for the agreement with the reference
        labels = np.concatenate([runner.infer(x[i:i + 1])["probs"].argmax(1).astype(np.uint8)
                                 for i in range(x.shape[0])])
        np.save(Path(spec["out"]).with_suffix(".labels.npy"), labels)
        res["labels"] = str(Path(spec["out"]).with_suffix(".labels.npy"))
    if "volume" in phases:
        res["volume"] = measure_volume(seg, spec, budget)
    res["peak_rss_mb"] = rss_mb()
    if "big_volume" in phases and spec.get("big_volume"):
        res["big_volume"] = measure_big_volume(seg, spec)
    if "accuracy" in phases:
        res["accuracy"] = measure_accuracy(seg, spec)
    res["peak_rss_with_eval_mb"] = rss_mb()
    if budget.left() <= 0:
        res["notes"].append("soft time budget spent: some timing loops stopped at their "
                            "minimum repetitions (see n)")
    res["wall_s"] = round(time.perf_counter() - t_start, 2)
    seg.close()
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(spec["out"])
    try:
        res = run(spec)
        code = 0
    except Exception as e:  # the orchestrator reports it on the row and goes on
        first = " ".join(str(e).split())[:300] or type(e).__name__
        res = {"variant": spec["variant"], "error": f"{type(e).__name__}: {first}",
               "traceback": traceback.format_exc()[-3000:]}
        code = 1
    out.write_text(json.dumps(res, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
