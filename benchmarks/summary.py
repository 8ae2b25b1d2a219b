"""What a benchmark run found, as data: the accuracy tables (Table 2 layout), one row per backend
and batch, and issue 14's targets. Rendered by :mod:`benchmarks.markdown` and
:mod:`benchmarks.plots`, written by :mod:`benchmarks.report`."""

from __future__ import annotations

from benchmarks.variants import label
from scar_runtime.labels import STRUCTURES

# far-FP max: the largest share of predicted lumbar voxels > 20 mm from every labelled
# structure over the val cases (evaluation.metrics.far_false_positive_share), beside Dice
TABLE2_COLUMNS = tuple(s.name for s in STRUCTURES) + ("VB avg", "IVD avg", "All avg",
                                                     "far-FP max")
SCHEMA_VERSION = 1


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


def fastest_close_path(doc: dict) -> dict | None:
    """Issue 28: the CPU row with the shortest time per volume whose mean Dice is within 0.5
    point of the reference (PyTorch FP32), against PyTorch eager's best time per volume."""
    ok = [x for x in doc["rows"] if x["status"] == "ok" and x["device"] == "cpu"
          and x["volume_s"]]
    torch_rows = [x for x in ok if (x["backend"], x["precision"]) == ("pytorch", "fp32")]
    close = [x for x in ok if x["backend"] != "pytorch" and x["dice_delta_points"] is not None
             and abs(x["dice_delta_points"]) <= 0.5]
    if not torch_rows or not close:
        return None
    best, torch_best = (min(r, key=lambda x: x["volume_s"]) for r in (close, torch_rows))
    return {"label": best["label"], "batch": best["batch"], "volume_s": best["volume_s"],
            "dice_delta_points": best["dice_delta_points"],
            "pytorch_volume_s": torch_best["volume_s"], "pytorch_batch": torch_best["batch"],
            "speedup_vs_pytorch": _ratio(torch_best["volume_s"], best["volume_s"])}


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
    fast = fastest_close_path(doc)
    if fast:
        out["fastest_within_half_point"] = fast
    ov, ort_ = _row(doc, "openvino", "fp32", 1), _row(doc, "onnxruntime", "fp32", 1)
    if ov and ort_:
        out["openvino_vs_onnxruntime_fp32_batch1"] = _ratio(ort_["slice_ms_p50"],
                                                            ov["slice_ms_p50"])
    return out
