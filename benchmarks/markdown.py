"""``latest.md``: the benchmark document (:mod:`benchmarks.summary`'s data) as Markdown, one
function per section."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.summary import TABLE2_COLUMNS, delta_points, targets


def _f(x, nd: int = 1, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


def threads_text(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _pct(x) -> str:
    return "–" if x is None else f"{100.0 * x:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
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
    f = t.get("fastest_within_half_point")
    if f:
        lines += [f"- Issue 28: the fastest CPU path within 0.5 Dice point of PyTorch FP32 "
                  f"({_f(f['dice_delta_points'], 2, signed=True)} points) is {f['label']}, "
                  f"batch {f['batch']}: {_f(f['volume_s'], 2)} s per volume, "
                  f"{_f(f['speedup_vs_pytorch'], 2)}x PyTorch eager ({_f(f['pytorch_volume_s'], 2)}"
                  f" s, batch {f['pytorch_batch']}) (target >= 5x)"]
    return lines


def peer_section(doc: dict) -> list[str]:
    """nnU-Net v2's predictor beside us (benchmarks/nnunet_peer.py): speed only."""
    peers = doc.get("peers")
    if not peers:
        return []
    lines = ["", "## Peer: nnU-Net v2 (speed only: untrained weights)", ""]
    if peers.get("skipped"):
        return lines + [f"Not measured: {peers['skipped']}"]
    auto = next((x for x in doc["rows"] if x["status"] == "ok" and x["backend"] == "auto"),
                None)
    lines += [peers.get("note", ""), ""]
    rows = []
    for p in peers.get("runs", []):
        if p.get("error"):
            rows.append([p.get("configuration", "?"), "failed: " + p["error"][:120], "", "",
                         "", ""])
            continue
        est = p["volume_s_estimated"]
        ratio = f"{est / auto['volume_s']:.0f}x" if auto and auto.get("volume_s") else "-"
        rows.append([p["configuration"], " x ".join(map(str, p["patch_size"])),
                     f"{p['tiles']} x {p['forwards_per_tile']}", _f(p["forward_s_median"], 2),
                     _f(est, 0), ratio])
    return lines + _table(["nnU-Net configuration", "patch", "patches x passes (mirroring)",
                           "s per forward pass", "s per volume (estimated)",
                           "vs the default path"], rows)


def _machine_section(doc: dict) -> list[str]:
    m = doc["machine"]
    gpu = m.get("gpu")
    lines = ["## Machine", "",
             f"- CPU: {m['cpu']}" + (f" ({m['cpu_id']})" if m.get("cpu_id") else "")
             + f", {m['logical_cores']} logical cores"
             + (f", {m['physical_cores']} physical" if m.get("physical_cores") else "")
             + f" ({', '.join(m.get('cpu_flags') or []) or 'flags unknown'}), "
             f"{m.get('memory_gb')} GB; {threads_text(m['threads'])} per backend",
             "- GPU: " + (f"{gpu['name']} (sm {gpu['compute_capability']})" if gpu else "none"),
             "- Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
             f"- Load average (1/5/15 min) at start {m.get('load_average_start')}, at end "
             f"{m.get('load_average_end')}"]
    if doc.get("warnings"):
        lines += [""] + [f"> **Warning:** {w}" for w in doc["warnings"]]
    return lines


def _model_section(doc: dict) -> list[str]:
    s, r, mo = doc["settings"], doc["roofline"], doc["model"]
    tr = mo.get("training") or {}
    params = f"{r['params']:,} parameters, " if r.get("params") else ""
    return ["", "## Model", "",
            f"- checkpoint: `{mo.get('checkpoint')}`; ONNX: `{mo.get('onnx')}`",
            f"- size `{(mo.get('model_config') or {}).get('size')}`, training step "
            f"{tr.get('step')}, {params}{_f(r.get('gflop_latency'), 2)} GFLOP per "
            f"{s['size']}x{s['size']} slice (counted)"]


def _latency_section(doc: dict, rows: list[dict]) -> list[str]:
    s = doc["settings"]
    lat_rows = [x for x in rows if x["slice_ms_p50"] is not None]
    lines = ["", f"## Latency per slice ({s['size']}x{s['size']} crops of real val slices)", "",
             f"Median (p50) and p95 over timed calls after {s['warmup']} warm-up calls; at "
             "batch 8 a call's time is divided by 8. Throughput = batch / median call time. "
             "Peak RSS: the backend's own process (fresh subprocess), through the latency and "
             "end-to-end phases. Labels = ref: pixels of the 8 latency slices (batch-1 calls) "
             "labelled as the reference backend labels them.", ""]
    return lines + _table(["Backend", "Batch", "p50 ms", "p95 ms", "n", "slices/s", "GFLOP/s",
                           "% of GEMM peak", "peak RSS MB", "labels = ref"],
                          [[x["label"], str(x["batch"]), _f(x["slice_ms_p50"]),
                            _f(x["slice_ms_p95"]), _f(x["latency_n"], 0),
                            _f(x["throughput_slices_s"]), _f(x["gflops_achieved"]),
                            _f(100 * x["peak_fraction"] if x["peak_fraction"] else None),
                            _f(x["peak_rss_mb"], 0), _f(x.get("label_agreement"), 5)]
                           for x in lat_rows])


def _volume_section(doc: dict, rows: list[dict]) -> list[str]:
    vol = doc["data"]["volume"]
    shape = " x ".join(map(str, vol["shape"]))
    lines = ["", f"## Per volume, end to end (`{vol['case']}`, {shape} voxels)", "",
             "Load (NIfTI read + reorient), preprocess (normalise, resample, pad), inference, "
             "post-process (argmax, back to the input grid, key-points, 3D clean-up), write "
             "(`scar infer`'s outputs: labels, key-points, stats, preview). Seconds, the run "
             "with the median total of n.", ""]
    return lines + _table(["Backend", "Batch", "total s", "load", "preprocess", "inference",
                           "post-process", "write", "n", "peak RSS MB"],
                          [[x["label"], str(x["batch"]), _f(x["volume_s"], 2)]
                           + [_f((x["volume_split_s"] or {}).get(k), 2)
                              for k in ("load_s", "preprocess_s", "inference_s",
                                        "postprocess_s", "write_s")]
                           + [_f(x["volume_n"], 0), _f(x["peak_rss_mb"], 0)]
                           for x in rows if x["volume_s"] is not None])


def _roofline_section(doc: dict) -> list[str]:
    s, r = doc["settings"], doc["roofline"]
    g = r.get("gemm", {})
    return ["", "## Roofline", "",
            f"- Counted: {_f(r.get('gflop_latency'), 3)} GFLOP per {s['size']}x{s['size']} "
            f"slice ({r.get('gflop_note')})",
            f"- Measured FP32 matrix-multiply peak on this machine, this run ({g.get('n')}^3, "
            f"best of {g.get('reps')}): numpy {_f(g.get('numpy_sgemm_gflops'))} GFLOP/s"
            + (f", torch {_f(g.get('torch_sgemm_gflops'))} GFLOP/s"
               if g.get("torch_sgemm_gflops") else "")
            + f" -> peak {_f(g.get('peak_gflops'))} GFLOP/s",
            "- Achieved = counted GFLOP / p50 slice time (table above). INT8 and FP16 rows are "
            "FP32-equivalent rates (the same count), so they can exceed the FP32 peak."]


def _accuracy_section(doc: dict) -> list[str]:
    s, data, acc = doc["settings"], doc["data"], doc["accuracy"]
    lines = ["", "## Accuracy (Table 2 layout): 3D Dice, %", ""]
    if not acc["tables"]:
        return lines + [f"Not measured: {'; '.join(data.get('notes') or ['no val cases'])}"]
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
    return lines


def _int8_line(doc: dict) -> list[str]:
    i8 = doc["model"].get("int8") or {}
    if not i8:
        return []
    kept = f" ({i8['fp32_nodes_rule']}: {len(i8['fp32_nodes'])} nodes)" \
        if i8.get("fp32_nodes") else ""
    return ["", f"INT8: {i8.get('method')}; op types {', '.join(i8.get('op_types', []))}"
            f"{kept}; "
            f"{i8.get('calibration_slices')} calibration slices "
            f"({'x'.join(map(str, i8.get('calibration_size', [])))}) from "
            f"{i8.get('calibration_source')}: {', '.join(i8.get('calibration_cases', []))}"
            + (f"; quantised in {i8['quantize_s']} s" if i8.get("quantize_s") else "")
            + (" (cached)" if i8.get("cached") else "")]


def _closing_sections(doc: dict) -> list[str]:
    """Not measured here, the notes, and the plots' names."""
    s, data, mo = doc["settings"], doc["data"], doc["model"]
    lines = []
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
    return lines


def render_markdown(doc: dict) -> str:
    lines = [f"# scar-net benchmark ({doc['mode']})", "",
             f"Run {doc['created']} in {doc['duration_s']:.0f} s. Generated by "
             f"`python -m benchmarks.run{' --quick' if doc['mode'] == 'quick' else ''}`; "
             "method and caveats: docs/performance.md.", ""]
    rows = [x for x in doc["rows"] if x["status"] == "ok"]
    lines += _machine_section(doc) + _model_section(doc) + targets_section(doc)
    lines += _latency_section(doc, rows) + _volume_section(doc, rows) + peer_section(doc)
    lines += _roofline_section(doc) + _accuracy_section(doc) + _int8_line(doc)
    lines += _closing_sections(doc)
    return "\n".join(lines) + "\n"
