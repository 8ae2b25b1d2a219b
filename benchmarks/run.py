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
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks import settings as S
from benchmarks.machine import thread_env
from benchmarks.prepare import log as _log
from benchmarks.prepare import prepare
from benchmarks.report import (
    SCHEMA_VERSION,
    accuracy_section,
    build_rows,
    label,
    targets,
    variant_key,
    write_outputs,
)
from benchmarks.variants import select_variants
from scar_runtime.backends.threads import default_threads
from scar_runtime.core.errors import ScarError

__all__ = ["main", "parse_args", "prepare", "select_variants"]


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
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None,
                   help="the nnU-Net v2 peer row (benchmarks/nnunet_peer.py; default: in the "
                   "full run only; skipped with the reason without scar-net[peers])")
    args = p.parse_args(argv)
    for name in ("threads", "size", "repeats", "volume_repeats", "max_cases", "calib_slices"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.size is not None and args.size % 16:
        p.error("--size must be a multiple of 16 (the network's output stride)")
    return args


def run_peers(image: Path, threads: int, quick: bool) -> dict:
    """nnU-Net v2's predictor on the reference volume (benchmarks/nnunet_peer.py), each
    configuration in its own process; skipped with the reason when nnunetv2 is not here."""
    from benchmarks.nnunet_peer import NOTE, unavailable

    why = unavailable()
    if why:
        _log(f"nnU-Net peer skipped: {why}")
        return {"skipped": why}
    runs = []
    for conf in ("2d", "3d_fullres"):
        _log(f"nnU-Net v2 {conf} (speed only, untrained) ...")
        cmd = [sys.executable, "-m", "benchmarks.nnunet_peer", "--image", str(image),
               "--configuration", conf, "--repeats", "1" if quick else "3",
               "--threads", str(threads)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            runs.append(json.loads(last) if proc.returncode == 0 else
                        {"configuration": conf, "error": (proc.stderr.strip().splitlines()
                                                          or ["?"])[-1]})
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            runs.append({"configuration": conf, "error": f"{type(e).__name__}: {e}"[:300]})
        _log(str(runs[-1])[:200])
    return {"note": NOTE, "runs": runs}


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
    if args.peers if args.peers is not None else not args.quick:
        doc["peers"] = run_peers(prep["data"].volume_image, threads, st.mode == "quick")
        doc["duration_s"] = round(time.time() - t_start, 1)
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
