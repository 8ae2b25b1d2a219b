"""Benchmark results -> ``latest.json`` (+ a dated copy), ``latest.md`` and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scar_runtime.labels import STRUCTURES

# far-FP max: the largest share of predicted lumbar voxels > 20 mm from every labelled
# structure over the val cases (evaluation.metrics.far_false_positive_share), beside Dice
TABLE2_COLUMNS = tuple(s.name for s in STRUCTURES) + ("VB avg", "IVD avg", "All avg",
                                                     "far-FP max")
SCHEMA_VERSION = 1

LABELS = {
    ("pytorch", "fp32", "cpu"): "PyTorch eager FP32 (CPU)",
    ("pytorch", "fp16", "cpu"): "PyTorch eager FP16 (CPU)",
    ("onnxruntime", "fp32", "cpu"): "ONNX Runtime FP32 (CPU)",
    ("onnxruntime", "int8", "cpu"): "ONNX Runtime INT8 static QDQ (CPU)",
    ("onnxruntime", "fp16", "cpu"): "ONNX Runtime FP16 (CPU, cast-emulated)",
    ("pytorch", "fp32", "cuda"): "PyTorch eager FP32 (CUDA)",
    ("pytorch", "fp16", "cuda"): "PyTorch eager FP16 (CUDA)",
    ("onnxruntime", "fp32", "cuda"): "ONNX Runtime FP32 (CUDA)",
    ("onnxruntime", "fp16", "cuda"): "ONNX Runtime FP16 (CUDA)",
    ("tensorrt", "fp32", "cuda"): "TensorRT FP32",
    ("tensorrt", "fp16", "cuda"): "TensorRT FP16",
    ("auto", "auto", "cpu"): "Default path (scar infer, auto)",
    ("onnxruntime", "fp32v01", "cpu"): "ONNX Runtime FP32, v0.1 export form (CPU)",
    ("openvino", "fp32", "cpu"): "OpenVINO FP32 (CPU)",
    ("openvino", "bf16", "cpu"): "OpenVINO BF16 (CPU)",
    ("openvino", "int8", "cpu"): "OpenVINO INT8 static QDQ (CPU)",
}


SHORT = {"pytorch": "PyTorch", "onnxruntime": "ORT", "tensorrt": "TensorRT", "openvino": "OV",
         "auto": "default"}


def short_label(backend: str, precision: str, device: str) -> str:
    """Two-line label for plot axes."""
    extra = ", cast-emul." if (backend, precision, device) == ("onnxruntime", "fp16", "cpu") \
        else ""
    return f"{SHORT.get(backend, backend)} {precision.upper()}\n{device.upper()}{extra}"


def variant_key(backend: str, precision: str, device: str) -> str:
    return f"{backend}-{precision}-{device}"


def label(backend: str, precision: str, device: str) -> str:
    return LABELS.get((backend, precision, device),
                      f"{backend} {precision.upper()} ({device.upper()})")


# ------------------------------------------------------------------------------ accuracy tables


def table2(summary: dict) -> dict:
    """One Table-2 row (Dice 0..1 or None) from ``metrics.summarize`` output, with ``n``."""
    st = summary.get("structures", {})
    row = {s.name: st.get(s.name, {}).get("dice_3d") for s in STRUCTURES}
    row["VB avg"] = summary.get("mean_vertebra_dice")
    row["IVD avg"] = summary.get("mean_disc_dice")
    row["All avg"] = summary.get("mean_dice")
    row["far-FP max"] = summary.get("far_fp_max")
    n = {s.name: st.get(s.name, {}).get("n", 0) for s in STRUCTURES}
    n.update({"VB avg": summary.get("n_vertebra", 0), "IVD avg": summary.get("n_disc", 0),
              "All avg": summary.get("n_labelled", 0), "far-FP max": summary.get("n_cases", 0)})
    return {"dice": row, "n": n}


def delta_points(row: dict, ref: dict) -> dict:
    """(row - ref) x 100 per column: Dice points; None where either is missing."""
    return {k: None if row.get(k) is None or ref.get(k) is None
            else round(100.0 * (row[k] - ref[k]), 3) for k in TABLE2_COLUMNS}


def accuracy_section(results: dict[str, dict], order: list[str]) -> dict:
    tables = {}
    for key in order:
        acc = (results.get(key) or {}).get("accuracy") or {}
        if acc.get("summary"):
            tables[key] = table2(acc["summary"])
    ref = next((k for k in ("pytorch-fp32-cpu", "pytorch-fp32-cuda", "onnxruntime-fp32-cpu",
                            "onnxruntime-fp32-cuda") if k in tables), None)
    deltas = {k: delta_points(t["dice"], tables[ref]["dice"]) for k, t in tables.items()
              if ref is not None}
    return {"reference": ref, "columns": list(TABLE2_COLUMNS), "tables": tables,
            "delta_points_vs_reference": deltas}


# ------------------------------------------------------------------------------------ rows


def build_rows(variants: list[dict], results: dict[str, dict], *, gflop: dict | None,
               peak: dict, size: int, acc: dict) -> list[dict]:
    """One row per (backend, precision, device, batch) that ran (errors included)."""
    g = (gflop or {}).get("per_slice", {}).get(f"{size}x{size}")
    rows = []
    for v in variants:
        key = v["key"]
        res = results.get(key) or {}
        dice = (acc["tables"].get(key) or {}).get("dice", {})
        delta = acc["delta_points_vs_reference"].get(key, {})
        for b in v["batches"]:
            lat = (res.get("latency") or {}).get(str(b)) or {}
            vol = (res.get("volume") or {}).get(str(b)) or {}
            p50 = lat.get("slice_ms_p50")
            achieved = round(g / (p50 / 1000.0), 1) if g and p50 else None
            row = {
                "backend": v["backend"], "precision": v["precision"], "device": v["device"],
                "batch": b, "label": label(v["backend"], v["precision"], v["device"]),
                "model": v.get("model_name"), "status": "error" if res.get("error") else "ok",
                "slice_size": [size, size],
                "slice_ms_p50": p50, "slice_ms_p95": lat.get("slice_ms_p95"),
                "slice_ms_min": lat.get("slice_ms_min"), "latency_n": lat.get("n"),
                "throughput_slices_s": lat.get("throughput_slices_s"),
                "volume_s": vol.get("total_s"),
                "volume_split_s": {k: vol.get(k) for k in ("load_s", "preprocess_s",
                                                           "inference_s", "postprocess_s",
                                                           "write_s")} if vol else None,
                "volume_n": vol.get("n"),
                "peak_rss_mb": res.get("peak_rss_mb"),
                "description": res.get("description"),
                "big_volume_s": (res.get("big_volume") or {}).get("total_s"),
                "big_volume_shape": (res.get("big_volume") or {}).get("shape"),
                "big_volume_peak_rss_mb": (res.get("big_volume") or {}).get("peak_rss_mb"),
                "gflop_per_slice": g, "gflops_achieved": achieved,
                "peak_fraction": round(achieved / peak["peak_gflops"], 3)
                if achieved and peak.get("peak_gflops") else None,
                "dice_mean": dice.get("All avg"), "dice_vb": dice.get("VB avg"),
                "dice_ivd": dice.get("IVD avg"),
                "dice_delta_points": delta.get("All avg"),
                "notes": list(v.get("notes", []))
                + [f"{label(v['backend'], v['precision'], v['device'])}: {n}"
                   for n in res.get("notes", [])],
            }
            if res.get("error"):
                row["error"] = res["error"]
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------- targets


def _row(doc: dict, backend: str, precision: str, batch: int | None = None) -> dict | None:
    return next((x for x in doc["rows"] if x["status"] == "ok" and x["backend"] == backend
                 and x["precision"] == precision and x["device"] == "cpu"
                 and (batch is None or x["batch"] == batch)), None)


def _ratio(a, b) -> float | None:
    return round(a / b, 2) if a and b else None


def targets(doc: dict) -> dict:
    """Issue 14's ratios and bounds, all from this run's rows (None where a row is missing)."""
    out: dict = {}
    auto = _row(doc, "auto", "auto")
    if auto:
        b = auto["batch"]
        torch_same = _row(doc, "pytorch", "fp32", b)
        torch_best = min((x for x in doc["rows"] if x["status"] == "ok"
                          and (x["backend"], x["precision"], x["device"])
                          == ("pytorch", "fp32", "cpu") and x["volume_s"]),
                         key=lambda x: x["volume_s"], default=None)
        out["default_path"] = {
            "runner": auto.get("description"), "batch": b, "volume_s": auto["volume_s"],
            "speedup_vs_pytorch_same_batch": _ratio((torch_same or {}).get("volume_s"),
                                                    auto["volume_s"]),
            "speedup_vs_pytorch_best_batch": _ratio((torch_best or {}).get("volume_s"),
                                                    auto["volume_s"]),
            "pytorch_best_batch": (torch_best or {}).get("batch"),
            "peak_rss_mb": auto["peak_rss_mb"], "big_volume_shape": auto["big_volume_shape"],
            "big_volume_s": auto["big_volume_s"],
            "big_volume_peak_rss_mb": auto["big_volume_peak_rss_mb"]}
    new, old = _row(doc, "onnxruntime", "fp32", 1), _row(doc, "onnxruntime", "fp32v01", 1)
    if new and old:
        out["export_form_speedup_ort_fp32_batch1"] = _ratio(old["slice_ms_p50"],
                                                            new["slice_ms_p50"])
    for backend in ("onnxruntime", "openvino"):
        for b in sorted({x["batch"] for x in doc["rows"]}):
            f32, i8 = _row(doc, backend, "fp32", b), _row(doc, backend, "int8", b)
            if f32 and i8:
                out[f"int8_speedup_{backend}_batch{b}"] = _ratio(f32["slice_ms_p50"],
                                                                 i8["slice_ms_p50"])
    ov, ort_ = _row(doc, "openvino", "fp32", 1), _row(doc, "onnxruntime", "fp32", 1)
    if ov and ort_:
        out["openvino_vs_onnxruntime_fp32_batch1"] = _ratio(ort_["slice_ms_p50"],
                                                            ov["slice_ms_p50"])
    return out


def targets_section(doc: dict) -> list[str]:
    t = doc.get("targets") or targets(doc)
    if not t:
        return []
    lines = ["", "## Issue 14 targets, from this run", ""]
    d = t.get("default_path")
    if d:
        vs_torch = (f"{_f(d['speedup_vs_pytorch_same_batch'], 2)}x PyTorch eager FP32 at the "
                    f"same batch, {_f(d['speedup_vs_pytorch_best_batch'], 2)}x at PyTorch's best "
                    f"batch ({d['pytorch_best_batch']}) (target >= 4x)"
                    if d.get("pytorch_best_batch") else "no PyTorch row to compare with")
        lines += [f"- Default path ({d['runner']}, batch {d['batch']}) on the reference volume: "
                  f"{_f(d['volume_s'], 2)} s end to end (target <= 2.5 s); {vs_torch}; peak RSS "
                  f"{_f(d['peak_rss_mb'], 0)} MB (target <= 1000)"]
        if d.get("big_volume_shape"):
            lines += [f"- Default path on a {' x '.join(map(str, d['big_volume_shape']))} volume "
                      f"(the reference volume resampled): {_f(d['big_volume_s'], 1)} s, peak "
                      f"RSS {_f(d['big_volume_peak_rss_mb'], 0)} MB (target <= 2000)"]
    if t.get("export_form_speedup_ort_fp32_batch1"):
        lines += ["- ONNX Runtime FP32 per slice, batch 1: the new export form is "
                  f"{_f(t['export_form_speedup_ort_fp32_batch1'], 2)}x the v0.1 form of the "
                  "same checkpoint (target >= 2x)"]
    for k, v in t.items():
        if k.startswith("int8_speedup_"):
            backend, b = k.removeprefix("int8_speedup_").rsplit("_batch", 1)
            lines += [f"- INT8 vs FP32, {backend}, batch {b}: {_f(v, 2)}x (pays at >= 1.5x)"]
    if t.get("openvino_vs_onnxruntime_fp32_batch1"):
        lines += [f"- OpenVINO FP32 vs ONNX Runtime FP32 per slice, batch 1: "
                  f"{_f(t['openvino_vs_onnxruntime_fp32_batch1'], 2)}x"]
    return lines


# ---------------------------------------------------------------------------------- markdown


def _f(x, nd: int = 1, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _pct(x) -> str:
    return "–" if x is None else f"{100.0 * x:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(doc: dict) -> str:
    m, s, r = doc["machine"], doc["settings"], doc["roofline"]
    data, acc = doc["data"], doc["accuracy"]
    lines = [f"# scar-net benchmark ({doc['mode']})", "",
             f"Run {doc['created']} in {doc['duration_s']:.0f} s. Generated by "
             f"`python -m benchmarks.run{' --quick' if doc['mode'] == 'quick' else ''}`; "
             "method and caveats: docs/performance.md.", ""]
    gpu = m.get("gpu")
    lines += ["## Machine", "",
              f"- CPU: {m['cpu']}" + (f" ({m['cpu_id']})" if m.get("cpu_id") else "")
              + f", {m['logical_cores']} logical cores"
              + (f", {m['physical_cores']} physical" if m.get("physical_cores") else "")
              + f" ({', '.join(m.get('cpu_flags') or []) or 'flags unknown'}), "
              f"{m.get('memory_gb')} GB; {_threads(m['threads'])} per backend",
              "- GPU: " + (f"{gpu['name']} (sm {gpu['compute_capability']})" if gpu else "none"),
              "- Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
              f"- Load average (1/5/15 min) at start {m.get('load_average_start')}, at end "
              f"{m.get('load_average_end')}"]
    if doc.get("warnings"):
        lines += [""] + [f"> **Warning:** {w}" for w in doc["warnings"]]
    mo = doc["model"]
    tr = mo.get("training") or {}
    params = f"{r['params']:,} parameters, " if r.get("params") else ""
    lines += ["", "## Model", "",
              f"- checkpoint: `{mo.get('checkpoint')}`; ONNX: `{mo.get('onnx')}`",
              f"- size `{(mo.get('model_config') or {}).get('size')}`, training step "
              f"{tr.get('step')}, {params}{_f(r.get('gflop_latency'), 2)} GFLOP per "
              f"{s['size']}x{s['size']} slice (counted)"]
    rows = [x for x in doc["rows"] if x["status"] == "ok"]
    lines += targets_section(doc)
    lat_rows = [x for x in rows if x["slice_ms_p50"] is not None]
    lines += ["", f"## Latency per slice ({s['size']}x{s['size']} crops of real val slices)", "",
              f"Median (p50) and p95 over timed calls after {s['warmup']} warm-up calls; at "
              "batch 8 a call's time is divided by 8. Throughput = batch / median call time. "
              "Peak RSS: the backend's own process (fresh subprocess), through the latency and "
              "end-to-end phases. Labels = ref: pixels of the 8 latency slices (batch-1 calls) "
              "labelled as the reference backend labels them.", ""]
    lines += _table(["Backend", "Batch", "p50 ms", "p95 ms", "n", "slices/s", "GFLOP/s",
                     "% of GEMM peak", "peak RSS MB", "labels = ref"],
                    [[x["label"], str(x["batch"]), _f(x["slice_ms_p50"]), _f(x["slice_ms_p95"]),
                      _f(x["latency_n"], 0), _f(x["throughput_slices_s"]),
                      _f(x["gflops_achieved"]), _f(100 * x["peak_fraction"]
                                                    if x["peak_fraction"] else None),
                      _f(x["peak_rss_mb"], 0), _f(x.get("label_agreement"), 5)]
                     for x in lat_rows])
    vol = data["volume"]
    shape = " x ".join(map(str, vol["shape"]))
    lines += ["", f"## Per volume, end to end (`{vol['case']}`, {shape} voxels)", "",
              "Load (NIfTI read + reorient), preprocess (normalise, resample, pad), inference, "
              "post-process (argmax, back to the input grid, key-points, 3D clean-up), write "
              "(`scar infer`'s outputs: labels, key-points, stats, preview). Seconds, the run "
              "with the median total of n.", ""]
    lines += _table(["Backend", "Batch", "total s", "load", "preprocess", "inference",
                     "post-process", "write", "n", "peak RSS MB"],
                    [[x["label"], str(x["batch"]), _f(x["volume_s"], 2)]
                     + [_f((x["volume_split_s"] or {}).get(k), 2)
                        for k in ("load_s", "preprocess_s", "inference_s", "postprocess_s",
                                  "write_s")] + [_f(x["volume_n"], 0), _f(x["peak_rss_mb"], 0)]
                     for x in rows if x["volume_s"] is not None])
    g = r.get("gemm", {})
    lines += ["", "## Roofline", "",
              f"- Counted: {_f(r.get('gflop_latency'), 3)} GFLOP per {s['size']}x{s['size']} "
              f"slice ({r.get('gflop_note')})",
              f"- Measured FP32 matrix-multiply peak on this machine, this run ({g.get('n')}^3, "
              f"best of {g.get('reps')}): numpy {_f(g.get('numpy_sgemm_gflops'))} GFLOP/s"
              + (f", torch {_f(g.get('torch_sgemm_gflops'))} GFLOP/s"
                 if g.get("torch_sgemm_gflops") else "")
              + f" -> peak {_f(g.get('peak_gflops'))} GFLOP/s",
              "- Achieved = counted GFLOP / p50 slice time (table above). INT8 and FP16 rows are "
              "FP32-equivalent rates (the same count), so they can exceed the FP32 peak."]
    lines += ["", "## Accuracy (Table 2 layout): 3D Dice, %", ""]
    if not acc["tables"]:
        lines += [f"Not measured: {'; '.join(data.get('notes') or ['no val cases'])}"]
    else:
        a0 = next(iter(doc["results"].values()), {}).get("accuracy") or {}
        lines += [f"Val split, {len(data['val_cases'])} case(s): "
                  f"{', '.join(data['val_cases'])}; runtime pipeline at batch "
                  f"{a0.get('batch')}, post-processing "
                  f"{'on' if s['postprocess'] else 'off'}; each case scored only on the "
                  "structures its set labels (other predictions zeroed); VB/IVD/All avg pool "
                  "every labelled (case, structure) pair "
                  "(scar_runtime.evaluation.metrics.summarize).", ""]
        cols = list(TABLE2_COLUMNS)
        body = [[doc["labels"][k]] + [_pct(t["dice"][c]) for c in cols]
                for k, t in acc["tables"].items()]
        first = next(iter(acc["tables"].values()))
        body.append(["n (labelled)"] + [str(first["n"][c]) for c in cols])
        lines += _table(["Backend"] + cols, body)
        if acc["reference"] and len(acc["tables"]) > 1:
            lines += ["", f"Difference to {doc['labels'][acc['reference']]} (Dice points):", ""]
            lines += _table(["Backend"] + cols,
                            [[doc["labels"][k]] + [_f(d[c], 2, signed=True) for c in cols]
                             for k, d in acc["delta_points_vs_reference"].items()
                             if k != acc["reference"]])
        t = acc["tables"]
        if "onnxruntime-int8-cpu" in t and "onnxruntime-fp32-cpu" in t:
            d = delta_points(t["onnxruntime-int8-cpu"]["dice"], t["onnxruntime-fp32-cpu"]["dice"])
            lines += ["", "INT8 minus ONNX Runtime FP32 (same runtime, Dice points): VB avg "
                      f"{_f(d['VB avg'], 2, True)}, IVD avg {_f(d['IVD avg'], 2, True)}, all "
                      f"{_f(d['All avg'], 2, True)}."]
    i8 = mo.get("int8") or {}
    if i8:
        kept = f" ({i8['fp32_nodes_rule']}: {len(i8['fp32_nodes'])} nodes)" \
            if i8.get("fp32_nodes") else ""
        lines += ["", f"INT8: {i8.get('method')}; op types {', '.join(i8.get('op_types', []))}"
                  f"{kept}; "
                  f"{i8.get('calibration_slices')} calibration slices "
                  f"({'x'.join(map(str, i8.get('calibration_size', [])))}) from "
                  f"{i8.get('calibration_source')}: {', '.join(i8.get('calibration_cases', []))}"
                  + (f"; quantised in {i8['quantize_s']} s" if i8.get("quantize_s") else "")
                  + (" (cached)" if i8.get("cached") else "")]
    errors = [x for x in doc["rows"] if x["status"] != "ok" and x["batch"] == min(s["batches"])]
    if doc["skipped"] or errors:
        lines += ["", "## Not measured here", ""]
        lines += [f"- {x['label']}: failed: {x.get('error')}" for x in errors]
        lines += [f"- {sk['label']}: {sk['reason']}" for sk in doc["skipped"]]
    notes = sorted({n for x in doc["rows"] for n in x["notes"]})
    notes += data.get("notes", []) + (mo.get("notes") or [])
    if data.get("skipped"):
        notes.append("cases skipped (files absent): " + "; ".join(data["skipped"]))
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if doc.get("plots"):
        lines += ["", "Plots (not committed; made by each run): "
                  + ", ".join(f"`{Path(p).name}`" for p in doc["plots"])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ plots


def make_plots(doc: dict, out_dir: Path) -> list[Path]:
    """latest_latency.png (p50 bars, p95 whiskers, per backend and batch) and latest_dice.png
    (Dice per structure per backend). Empty list when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    rows = [x for x in doc["rows"] if x["status"] == "ok" and x["slice_ms_p50"] is not None]
    if rows:
        labels = list(dict.fromkeys(x["label"] for x in rows))
        short = {x["label"]: short_label(x["backend"], x["precision"], x["device"])
                 for x in rows}
        batches = sorted({x["batch"] for x in rows})
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
        width = 0.8 / len(batches)
        for j, b in enumerate(batches):
            xs, ys, errs = [], [], []
            for i, lab in enumerate(labels):
                x = next((r for r in rows if r["label"] == lab and r["batch"] == b), None)
                if x:
                    xs.append(i + (j - (len(batches) - 1) / 2) * width)
                    ys.append(x["slice_ms_p50"])
                    errs.append(max(x["slice_ms_p95"] - x["slice_ms_p50"], 0))
            ax.bar(xs, ys, width, yerr=[[0] * len(errs), errs], capsize=3, label=f"batch {b}")
        ax.set_xticks(range(len(labels)), [short[lab] for lab in labels], fontsize=8)
        size = doc["settings"]["size"]
        ax.set_ylabel(f"ms per {size}x{size} slice (p50, whisker p95)")
        ax.set_title(f"scar-net latency per backend ({doc['machine']['cpu']}, "
                     f"{_threads(doc['machine']['threads'])})", fontsize=9)
        ax.legend()
        fig.tight_layout()
        p = out_dir / "latest_latency.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    tables = doc["accuracy"]["tables"]
    if tables:
        cols = list(TABLE2_COLUMNS)
        fig, ax = plt.subplots(figsize=(11, 4.6))
        width = 0.8 / len(tables)
        for j, (k, t) in enumerate(tables.items()):
            xs = [i + (j - (len(tables) - 1) / 2) * width for i in range(len(cols))]
            ys = [t["dice"][c] if t["dice"][c] is not None else 0.0 for c in cols]
            ax.bar(xs, ys, width, label=doc["labels"][k])
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("3D Dice (val)")
        ax.set_title("Dice per structure and backend (no bar: not labelled in these cases)",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1),
                  ncol=min(len(tables), 4), frameon=False)
        fig.tight_layout()
        p = out_dir / "latest_dice.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def write_outputs(doc: dict, out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc["plots"] = [str(p) for p in make_plots(doc, out_dir)] if plots else []
    stamp = doc["created"].replace(":", "").replace("-", "")[:15]
    text = json.dumps(doc, indent=1, default=str) + "\n"
    paths = {"json": out_dir / "latest.json",
             "dated_json": out_dir / f"bench-{stamp}-{doc['mode']}.json",
             "markdown": out_dir / "latest.md"}
    for key in ("json", "dated_json"):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp")
        tmp.write_text(text)
        tmp.replace(paths[key])
    paths["markdown"].write_text(render_markdown(doc))
    for p in doc["plots"]:
        paths[Path(p).stem] = Path(p)
    return paths
