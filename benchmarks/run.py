"""``python -m benchmarks.run [--quick]``: the benchmark (``make bench`` / ``make bench-quick``).

Steps: resolve the model (``--checkpoint`` / ``--onnx``; defaults
``scar_runtime/models/scarnet_small.{pt,onnx}``), prepare the FP16 export and the INT8 model
(cached in ``benchmarks/.cache``), pick the data (``--data``, default ../shared/data/index.json),
measure the GEMM peak and count the model's FLOPs, then run every backend/precision in its own
subprocess (:mod:`benchmarks.worker`) and write ``latest.json`` (+ a dated copy), ``latest.md``
and plots to ``--out-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks import settings as S
from benchmarks.machine import thread_env
from benchmarks.report import (
    SCHEMA_VERSION,
    accuracy_section,
    build_rows,
    label,
    targets,
    variant_key,
    write_outputs,
)
from scar_runtime.errors import ScarError

# (backend, precision, device, notes) in report order; GPU ones are skipped with a reason here.
VARIANTS = (
    ("auto", "auto", "cpu", ["the default path, `scar infer` with no options: backend and "
                             "precision picked by `auto` (measured in the worker, fresh "
                             "cache), default batch; end to end and peak RSS only"]),
    ("pytorch", "fp32", "cpu", ["PyTorch eager (torch.inference_mode), the exported module"]),
    ("onnxruntime", "fp32", "cpu", []),
    ("onnxruntime", "fp32v01", "cpu", ["the v0.1 export form of the same checkpoint (traced "
                                       "49-tap Slice/Mul/Add dynamic conv): latency only, the "
                                       "baseline of the export-form speed-up"]),
    ("onnxruntime", "int8", "cpu", ["INT8: static QDQ (onnxruntime.quantization.quantize_static)"
                                    " calibrated on TRAIN slices"]),
    ("onnxruntime", "fp16", "cpu", ["FP16 on CPU is cast-emulated: ONNX Runtime inserts casts "
                                    "and computes in FP32, so this row checks FP16 numerics, "
                                    "not FP16 speed"]),
    ("openvino", "fp32", "cpu", ["OpenVINO on the same FP32 ONNX file"]),
    ("openvino", "bf16", "cpu", ["OpenVINO BF16 inference precision, measured here without a "
                                 "gate record (users need a passed one)"]),
    ("openvino", "int8", "cpu", ["the same QDQ INT8 model as ONNX Runtime INT8, run by "
                                 "OpenVINO"]),
    ("pytorch", "fp32", "cuda", ["GPU timings include host<->device copies"]),
    ("pytorch", "fp16", "cuda", ["GPU timings include host<->device copies"]),
    ("onnxruntime", "fp32", "cuda", ["GPU timings include host<->device copies"]),
    ("onnxruntime", "fp16", "cuda", ["GPU timings include host<->device copies"]),
    ("tensorrt", "fp32", "cuda", ["GPU timings include host<->device copies"]),
    ("tensorrt", "fp16", "cuda", ["GPU timings include host<->device copies; FP16 is in the "
                                  "ONNX graph (TensorRT 11 is strongly typed)"]),
)


def _log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description="scar-net benchmark: latency, throughput, "
                                "end-to-end time, memory, roofline and accuracy per backend.")
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions and val cases (make bench-quick, < 3 min)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint from `scar train` (PyTorch rows, "
                   f"FP16 export; default {S.DEFAULT_CHECKPOINT.relative_to(S.REPO)} if present)")
    p.add_argument("--onnx", type=Path, help="FP32 model from `scar export` (default "
                   f"{S.DEFAULT_ONNX.relative_to(S.REPO)} if present; else exported from "
                   "--checkpoint)")
    p.add_argument("--onnx-fp16", type=Path, help="FP16 model from `scar export --fp16` "
                   "(default: exported from --checkpoint, cached)")
    p.add_argument("--data", type=Path, default=S.DEFAULT_DATA,
                   help="data index (val cases scored, train cases calibrate INT8; default "
                   "%(default)s)")
    p.add_argument("--out-dir", type=Path, default=S.DEFAULT_OUT,
                   help="where latest.json/.md and the plots go (default %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=S.DEFAULT_CACHE,
                   help="exported/quantised models and engines (default %(default)s)")
    p.add_argument("--backends", help="comma-separated subset, e.g. "
                   "onnxruntime-fp32,onnxruntime-int8 (backend-precision[-device]); "
                   "default: all")
    p.add_argument("--threads", type=int, help="CPU threads per backend (default: "
                   "$OMP_NUM_THREADS if set, else every core)")
    p.add_argument("--size", type=int, help="latency input size (default 256: size x size "
                   "crops of real val slices)")
    p.add_argument("--batches", help="batch sizes, comma-separated (default 1,8)")
    p.add_argument("--repeats", type=int, help="timed calls per latency series (overrides "
                   "the mode's 30/10 or 10/3)")
    p.add_argument("--volume-repeats", type=int, help="end-to-end runs per batch size")
    p.add_argument("--max-cases", type=int, help="val cases scored (default: all; --quick: 2)")
    p.add_argument("--calib-slices", type=int, help="INT8 calibration slices (default 50)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="score the network without the 3D post-processing")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = p.parse_args(argv)
    for name in ("threads", "size", "repeats", "volume_repeats", "max_cases", "calib_slices"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.size is not None and args.size % 16:
        p.error("--size must be a multiple of 16 (the network's output stride)")
    return args


def default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def select_variants(spec: str | None) -> list[tuple]:
    if not spec:
        return list(VARIANTS)
    wanted = [w.strip().lower() for w in spec.split(",") if w.strip()]
    known = [variant_key(b, p, d) for b, p, d, _ in VARIANTS]
    chosen = [v for v, k in zip(VARIANTS, known, strict=True)
              if any(k == w or k.startswith(w + "-") for w in wanted)]
    bad = [w for w in wanted if not any(k == w or k.startswith(w + "-") for k in known)]
    if bad:
        raise ScarError(f"--backends: unknown {', '.join(bad)} (valid: {', '.join(known)})")
    return chosen


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_reason() -> str | None:
    """Why the OpenVINO rows cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'scar-net[openvino]')"
    return None


def _cuda_torch() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def prepare(args, st: S.Settings, chosen: list[tuple], threads: int, workdir: Path) -> dict:
    """Models, data, latency input, INT8, GEMM peak, FLOPs, and one spec per runnable variant."""
    from benchmarks import models as M
    from benchmarks.data import calibration_slices, latency_input, plan_data, sample_image
    from benchmarks.machine import count_gflop, gemm_peak_subprocess, machine_info

    ms = M.resolve(args.checkpoint, args.onnx, args.onnx_fp16, default_ckpt=S.DEFAULT_CHECKPOINT,
                   default_onnx=S.DEFAULT_ONNX, default_fp16=S.DEFAULT_ONNX_FP16)
    machine = machine_info(threads)
    want = {(b, p, d) for b, p, d, _ in chosen}
    M.ensure_exports(ms, args.cache_dir, want_fp16=any(p == "fp16" for _, p, _ in want),
                     log=_log)
    cfg = ms.meta.preprocess
    data = plan_data(args.data, max_cases=st.max_cases)
    if ms.meta.data_index_sha256 and data.index is not None:
        from scar_runtime.evaluation.dataset import index_hash

        if index_hash(data.index) != ms.meta.data_index_sha256:
            data.notes.append(f"{data.index} is not the index the model was trained with "
                              "(hash differs): its val split may overlap the training data")
    lat = latency_input(data.volume_image, cfg, size=st.size, n=st.latency_slices)
    lat_path = workdir / "latency_input.npy"
    np.save(lat_path, lat)

    skipped: dict[tuple, str] = {}
    if ("onnxruntime", "fp32v01", "cpu") in want:
        if not st.v01_form:
            skipped[("onnxruntime", "fp32v01", "cpu")] = (
                "quick mode: the v0.1-form comparison (an extra export) is in the full run")
        elif ms.checkpoint is None or not _torch_available():
            skipped[("onnxruntime", "fp32v01", "cpu")] = (
                "the v0.1 form is exported from the checkpoint: pass --checkpoint (needs torch)")
        else:
            from benchmarks import models as M

            M.ensure_v01_form(ms, args.cache_dir, log=_log)
    ov_reason = _openvino_reason()
    for p in ("fp32", "bf16", "int8"):
        if ov_reason and ("openvino", p, "cpu") in want:
            skipped[("openvino", p, "cpu")] = ov_reason
    if not ov_reason and ("openvino", "bf16", "cpu") in want:
        from scar_runtime.backends.openvino import cpu_capabilities

        caps = cpu_capabilities()
        if "BF16" not in caps:
            skipped[("openvino", "bf16", "cpu")] = (
                f"this CPU has no native BF16 (OpenVINO reports {', '.join(caps)}): BF16 would "
                "run as FP32 or emulated")
    if ("onnxruntime", "int8", "cpu") in want or ("openvino", "int8", "cpu") in want:
        from scar_runtime.evaluation.dataset import index_hash

        if data.train_cases:
            source = f"TRAIN cases of {data.index}"
            ckey = {"index_sha256": index_hash(data.index),
                    "train_cases": [c.id for c in data.train_cases]}

            def make_calib():
                return calibration_slices(data.train_cases, cfg, size=st.size,
                                          n=st.calib_slices)
        else:
            source = "the shipped sample volume (no train cases available; it is a val case)"
            ckey = {"sample": sample_image().name}

            def make_calib():
                return (latency_input(sample_image(), cfg, size=st.size, n=st.calib_slices),
                        [f"sample/{sample_image().name}"])
        ckey.update(n=st.calib_slices, size=st.size, preprocess=cfg.to_dict())
        try:
            M.ensure_int8(ms, args.cache_dir, make_calib=make_calib, calib_key=ckey,
                          calib_source=source, op_types=st.int8_op_types,
                          keep_io_fp32=st.int8_keep_io_fp32, log=_log)
        except Exception as e:  # quantisation is fragile across ORT versions: report, go on
            for b in ("onnxruntime", "openvino"):
                skipped.setdefault((b, "int8", "cpu"), f"quantisation failed: {e}")

    _log(f"measuring the FP32 matrix-multiply peak ({threads} thread"
         f"{'' if threads == 1 else 's'}) ...")
    peak = gemm_peak_subprocess(threads)
    gflop, gnote = None, "FlopCounterMode: conv, matmul, attention; 2 FLOP per MAC; " \
                         "element-wise ops not counted"
    from scar_runtime.io import load_volume
    from scar_runtime.pipeline.preprocess import plan_grid

    ref = load_volume(data.volume_image)
    grid = plan_grid(ref.shape[:2], ref.inplane_spacing, cfg)
    if _torch_available():
        gflop = count_gflop(ms.meta.model_config,
                            [(st.size, st.size), tuple(grid.out_shape)])
    else:
        gnote = "not counted: torch is not installed"

    cuda_torch = _cuda_torch()
    import onnxruntime as ort

    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    trt_reason = None
    if any(b == "tensorrt" for b, _, _ in want):
        try:
            from scar_export.engine import check_available

            check_available()
        except ImportError as e:
            trt_reason = f"scar_export is not installed ({e})"
        except ScarError as e:
            trt_reason = str(e)

    specs, variants = [], []
    for b, p, d, notes in chosen:
        key = variant_key(b, p, d)
        reason = skipped.get((b, p, d))
        model = None
        if reason is None and d == "cuda":
            if b == "pytorch" and not cuda_torch:
                reason = "no CUDA GPU visible to torch (torch.cuda.is_available() is False)"
            elif b == "onnxruntime" and not ort_cuda:
                reason = ("this onnxruntime has no CUDAExecutionProvider (no GPU, or "
                          "onnxruntime-gpu not installed)")
            elif b == "tensorrt" and trt_reason:
                reason = trt_reason
        if reason is None and b == "pytorch":
            if ms.checkpoint is None:
                reason = "needs the checkpoint: pass --checkpoint CKPT.pt"
            elif not _torch_available():
                reason = "torch is not installed"
            elif p == "fp16" and d == "cpu":
                reason = "PyTorch FP16 on CPU is not benchmarked"
        if reason is None and b in ("onnxruntime", "tensorrt", "openvino", "auto"):
            model = {"fp32": ms.onnx, "fp16": ms.onnx_fp16, "int8": ms.onnx_int8,
                     "bf16": ms.onnx, "auto": ms.onnx, "fp32v01": ms.onnx_v01}[p]
            if model is None:
                reason = ("no FP16 model: pass --onnx-fp16 MODEL.onnx (`scar export --fp16`) or "
                          "--checkpoint to export one" if p == "fp16" else f"no {p} model")
        if reason is None and b == "tensorrt":
            try:
                model = M.ensure_engine(model, args.cache_dir,
                                        preprocess=ms.meta.preprocess.to_dict(), log=_log)
            except Exception as e:  # UNVERIFIED path: report the failure as the reason
                reason = f"TensorRT engine build failed: {e}"
        if reason is not None:
            variants.append({"key": key, "skip": reason, "backend": b, "precision": p,
                             "device": d})
            continue
        batches, phases, env = list(st.batches), ["latency", "volume", "accuracy"], {}
        if b == "auto":  # the default path: scar infer's batch, end to end, a fresh choice
            from scar_runtime.pipeline.segmenter import DEFAULT_BATCH

            batches, phases = [DEFAULT_BATCH], ["volume", "big_volume"]
            env = {"XDG_CACHE_HOME": str(workdir / "xdg-cache")}
        elif p == "fp32v01":
            phases = ["latency"]
        specs.append({
            "variant": key, "backend": b, "precision": p, "device": d, "phases": phases,
            "env": env, "big_volume": list(st.big_volume) if st.big_volume else None,
            "runner": "torch" if b == "pytorch" else "runtime",
            "checkpoint": str(ms.checkpoint) if ms.checkpoint else None,
            "model": str(model) if model else None, "threads": threads,
            "batches": batches, "warmup": st.warmup, "reps_batch1": st.reps_batch1,
            "reps_batchn": st.reps_batchn, "min_reps": st.min_reps,
            "volume_reps": st.volume_reps, "budget_s": st.worker_budget_s,
            "postprocess": not args.no_postprocess, "latency_input": str(lat_path),
            "volume": {"case": data.volume_id, "image": str(data.volume_image)},
            "accuracy": {"index": str(data.index) if data.index else None,
                         "cases": [c.id for c in data.val_cases]},
            "out": str(workdir / f"{key}.json"),
        })
        variants.append({"key": key, "backend": b, "precision": p, "device": d,
                         "batches": batches, "notes": notes, "phases": phases,
                         "model_name": Path(model).name if model else
                         (ms.checkpoint.name if ms.checkpoint else None)})
    return {"models": ms, "machine": machine, "data": data, "peak": peak, "gflop": gflop,
            "gflop_note": gnote, "grid": list(grid.out_shape), "specs": specs,
            "variants": variants}


def run_worker(spec: dict, workdir: Path, timeout: float) -> dict:
    spec_path = workdir / f"{spec['variant']}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(spec_path)],
                              cwd=S.REPO, capture_output=True, text=True, timeout=timeout,
                              env={**thread_env(spec["threads"]), **(spec.get("env") or {})})
    except subprocess.TimeoutExpired:
        return {"variant": spec["variant"], "error": f"timed out after {timeout:.0f} s"}
    out = Path(spec["out"])
    if out.is_file():
        res = json.loads(out.read_text())
    else:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        res = {"variant": spec["variant"],
               "error": f"worker exited with code {proc.returncode}: {tail[0][:300]}"}
    res["process_s"] = round(time.time() - t0, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    created = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else None
    st = S.settings_for(args.quick, size=args.size, batches=batches,
                        reps_batch1=args.repeats, reps_batchn=args.repeats,
                        min_reps=min(args.repeats, S.FULL.min_reps) if args.repeats else None,
                        volume_reps=args.volume_repeats, max_cases=args.max_cases,
                        calib_slices=args.calib_slices)
    threads = args.threads or default_threads()
    try:
        chosen = select_variants(args.backends)
        with tempfile.TemporaryDirectory(prefix="scar-bench-") as tmp:
            workdir = Path(tmp)
            prep = prepare(args, st, chosen, threads, workdir)
            results: dict[str, dict] = {}
            for spec in prep["specs"]:
                _log(f"{label(spec['backend'], spec['precision'], spec['device'])} ...")
                res = run_worker(spec, workdir, st.worker_timeout_s)
                results[spec["variant"]] = res
                _log(_one_line(res))
            label_agreement(results)
    except ScarError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    doc = assemble(args, st, prep, results, created=created, t_start=t_start)
    paths = write_outputs(doc, args.out_dir, plots=not args.no_plots)
    _log(f"done in {doc['duration_s']:.0f} s: " + ", ".join(str(p) for p in paths.values()))
    failed = sorted({r["label"] for r in doc["rows"] if r["status"] != "ok"})
    if failed:
        print(f"bench: error: {', '.join(failed)} failed (details in {paths['json']})",
              file=sys.stderr)
        return 1
    if not doc["rows"]:
        print("bench: error: nothing was measured (every backend was skipped; see "
              f"{paths['markdown']})", file=sys.stderr)
        return 1
    return 0


def _one_line(res: dict) -> str:
    if res.get("error"):
        return f"  failed: {res['error']}"
    lat = res.get("latency", {})
    parts = [f"batch {b}: {v['slice_ms_p50']:.1f} ms/slice" for b, v in lat.items()]
    parts += [f"volume at batch {b}: {v['total_s']:.2f} s"
              for b, v in (res.get("volume") or {}).items() if not lat]
    acc = (res.get("accuracy") or {}).get("summary") or {}
    if acc.get("mean_dice") is not None:
        parts.append(f"Dice {acc['mean_dice']:.4f}")
    return f"  {', '.join(parts)} ({res.get('process_s')} s)"


def label_agreement(results: dict) -> None:
    """Per result, ``label_agreement``: the fraction of the latency slices' pixels whose label
    equals the reference backend's (PyTorch FP32 CPU, else ONNX Runtime FP32 CPU), batch-1
    calls. Reads the workers' label files, so it runs before the work folder goes."""
    def labels(key):
        path = (results.get(key) or {}).get("labels")
        return np.load(path) if path and Path(path).is_file() else None

    ref_key = next((k for k in ("pytorch-fp32-cpu", "onnxruntime-fp32-cpu")
                    if labels(k) is not None), None)
    ref = labels(ref_key) if ref_key else None
    for key, res in results.items():
        got = labels(key)
        if ref is not None and got is not None and got.shape == ref.shape:
            res["label_agreement"] = round(float((got == ref).mean()), 6)
            res["label_agreement_reference"] = ref_key


def add_label_agreement(rows: list[dict], results: dict) -> None:
    for row in rows:
        res = results.get(variant_key(row["backend"], row["precision"], row["device"])) or {}
        row["label_agreement"] = res.get("label_agreement")
        row["label_agreement_reference"] = res.get("label_agreement_reference")


def assemble(args, st: S.Settings, prep: dict, results: dict, *, created: str,
             t_start: float) -> dict:
    from benchmarks.machine import loadavg

    ms, data, machine = prep["models"], prep["data"], prep["machine"]
    order = [v["key"] for v in prep["variants"] if "skip" not in v]
    acc = accuracy_section(results, order)
    ran = [v for v in prep["variants"] if "skip" not in v]
    gflop = prep["gflop"]
    rows = build_rows(ran, results, gflop=gflop, peak=prep["peak"], size=st.size, acc=acc)
    add_label_agreement(rows, results)
    machine["load_average_end"] = loadavg()
    warnings = []
    bad_cases = {c: e for r in results.values()
                 for c, e in ((r.get("accuracy") or {}).get("failed_cases") or {}).items()}
    if bad_cases:
        warnings.append("val cases that could not be scored: "
                        + "; ".join(f"{c} ({e})" for c, e in sorted(bad_cases.items())))
    la = machine.get("load_average_start")
    cores = machine.get("logical_cores") or 1
    if la and la[0] > 0.5 * cores:
        warnings.append(f"the machine was busy when the run started (1-min load average "
                        f"{la[0]} on {cores} cores): timings are pessimistic; re-run on a quiet "
                        "machine before publishing")
    g = gflop or {}
    return {
        "schema_version": SCHEMA_VERSION, "created": created, "mode": st.mode,
        "duration_s": round(time.time() - t_start, 1),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "machine": machine, "warnings": warnings,
        "settings": {**st.to_dict(), "postprocess": not args.no_postprocess,
                     "latency_input": f"{st.size}x{st.size} centre crops of "
                                      f"{st.latency_slices} central slices of "
                                      f"{data.volume_id} after the runtime's preprocessing"},
        "model": ms.to_dict(), "data": data.to_dict(),
        "roofline": {"gemm": prep["peak"], "peak_gflops": prep["peak"]["peak_gflops"],
                     "params": g.get("params"), "gflop_per_slice": g.get("per_slice"),
                     "gflop_latency": (g.get("per_slice") or {}).get(f"{st.size}x{st.size}"),
                     "gflop_note": prep["gflop_note"], "volume_grid": prep["grid"]},
        "labels": {v["key"]: label(v["backend"], v["precision"], v["device"])
                   for v in prep["variants"]},
        "rows": rows,
        "skipped": [{"backend": v["backend"], "precision": v["precision"],
                     "device": v["device"], "label": label(v["backend"], v["precision"],
                                                            v["device"]),
                     "reason": v["skip"]} for v in prep["variants"] if "skip" in v],
        "accuracy": acc,
        "targets": targets({"rows": rows}),
        "results": {k: {kk: vv for kk, vv in r.items() if kk != "traceback"}
                    for k, r in results.items()},
        "errors": {k: r.get("traceback") for k, r in results.items() if r.get("traceback")},
    }


if __name__ == "__main__":
    sys.exit(main())
