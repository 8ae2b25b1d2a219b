"""The benchmark suite (benchmarks/): the quick code path end to end on a tiny real model, and its
pieces. Structure only: no test asserts a time, a speed or a ratio of speeds.

The end-to-end test runs ``python -m benchmarks.run --quick`` (what ``make bench-quick`` runs)
on the session's 2-step model and the mini data index, with 64x64 latency crops, 2 repetitions,
one thread: every CPU backend (PyTorch FP32, ONNX Runtime FP32 / INT8 / FP16) runs in its own
subprocess, the INT8 model is quantised and the FP16 one exported for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import CHU_IMG, CHU_SEG, REPO, assert_one_line_error

from benchmarks import report as R
from benchmarks.data import fit, plan_data
from benchmarks.models import resolve
from benchmarks.run import select_variants
from scar_runtime import labels as L
from scar_runtime.core.errors import ConfigError, ScarError
from scar_runtime.evaluation.metrics import evaluate_case, summarize
from scar_runtime.io import load_volume

# one worker builds this module's fixtures (make test runs pytest-xdist --dist loadgroup)
pytestmark = pytest.mark.xdist_group("bench")

ENV = {"OMP_NUM_THREADS": "1"}
ROW_KEYS = {"backend", "precision", "device", "batch", "slice_ms_p50", "slice_ms_p95",
            "throughput_slices_s", "volume_s", "volume_split_s", "peak_rss_mb", "dice_mean",
            "gflop_per_slice", "gflops_achieved", "notes", "status"}
SPLIT_KEYS = {"load_s", "preprocess_s", "inference_s", "postprocess_s", "write_s"}


def run_bench(*args, timeout: float = 900):
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **ENV})


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def quick_run(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    out, cache = d / "results", d / "cache"
    p = run_bench("--quick", "--checkpoint", tiny_model["checkpoint"], "--onnx",
                  tiny_model["onnx"], "--data", tiny_model["index"], "--out-dir", out,
                  "--cache-dir", cache, "--threads", "1", "--size", "64", "--repeats", "2",
                  "--volume-repeats", "1", "--calib-slices", "4")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"out": out, "cache": cache, "doc": json.loads((out / "latest.json").read_text()),
            "md": (out / "latest.md").read_text(), "stdout": p.stdout, **tiny_model}


@pytest.mark.slow
def test_quick_run_writes_every_output(quick_run):
    out = quick_run["out"]
    dated = list(out.glob("bench-*-quick.json"))
    assert len(dated) == 1
    assert json.loads(dated[0].read_text())["rows"] == quick_run["doc"]["rows"]
    pytest.importorskip("matplotlib")
    assert (out / "latest_latency.png").stat().st_size > 0
    assert (out / "latest_dice.png").stat().st_size > 0


@pytest.mark.slow
def test_json_structure(quick_run):
    doc = quick_run["doc"]
    assert doc["mode"] == "quick" and doc["schema_version"] == R.SCHEMA_VERSION
    m = doc["machine"]
    for key in ("cpu", "logical_cores", "threads", "libraries", "gpu"):
        assert key in m
    assert m["threads"] == 1
    assert {"numpy", "onnxruntime", "torch"} <= set(m["libraries"])
    # the rows the issue requires, one per (backend, precision, batch), all measured
    got = {(r["backend"], r["precision"], r["device"], r["batch"]): r for r in doc["rows"]}
    for b in (1, 8):
        for key in (("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                    ("onnxruntime", "fp16")):
            assert (*key, "cpu", b) in got, sorted(got)
    openvino = importlib.util.find_spec("openvino") is not None
    if openvino:  # OpenVINO FP32 and INT8 run on any x86 CPU
        for b in (1, 8):
            for p in ("fp32", "int8"):
                assert ("openvino", p, "cpu", b) in got, sorted(got)
    for r in doc["rows"]:
        assert set(r) >= ROW_KEYS, ROW_KEYS - set(r)
        assert r["status"] == "ok", r.get("error")
        assert r["backend"] in ("pytorch", "onnxruntime", "tensorrt", "openvino", "auto")
        assert r["precision"] in ("fp32", "fp16", "int8", "bf16", "auto")
        assert r["slice_size"] == [64, 64]
        assert _is_number(r["peak_rss_mb"]) and r["peak_rss_mb"] > 0
        if r["backend"] == "auto":  # the default path: end to end only, at scar infer's batch
            assert r["batch"] == 1 and r["slice_ms_p50"] is None and r["dice_mean"] is None
            assert r["description"].split()[0] in ("onnxruntime", "openvino")
        else:
            for k in ("slice_ms_p50", "slice_ms_p95", "throughput_slices_s", "gflop_per_slice",
                      "gflops_achieved"):
                assert _is_number(r[k]) and r[k] > 0, (k, r[k])
            assert r["slice_ms_p95"] >= r["slice_ms_p50"]
            assert 0.0 <= r["dice_mean"] <= 1.0
            # FP32 backends label the latency slices as PyTorch does
            assert r["label_agreement_reference"] == "pytorch-fp32-cpu"
            if r["precision"] == "fp32":
                assert r["label_agreement"] >= 0.999, r["label"]
        assert _is_number(r["volume_s"]) and r["volume_s"] > 0
        assert set(r["volume_split_s"]) == SPLIT_KEYS
        assert all(_is_number(v) and v >= 0 for v in r["volume_split_s"].values())
    assert ("auto", "auto", "cpu", 1) in got
    t = doc["targets"]
    assert t["default_path"]["volume_s"] == got[("auto", "auto", "cpu", 1)]["volume_s"]
    assert _is_number(t["default_path"]["speedup_vs_pytorch_same_batch"])
    assert _is_number(t["int8_speedup_onnxruntime_batch1"])
    assert "## Issue 14 targets, from this run" in quick_run["md"]
    fp16 = got[("onnxruntime", "fp16", "cpu", 1)]
    assert any("cast-emulated" in n for n in fp16["notes"])
    # GPU rows are skipped with a reason on a machine without one, never silently dropped
    ran = {(r["backend"], r["precision"], r["device"]) for r in doc["rows"]}
    skipped = {(s["backend"], s["precision"], s["device"]) for s in doc["skipped"]}
    assert ("tensorrt", "fp16", "cuda") in ran | skipped
    assert ("openvino", "bf16", "cpu") in ran | skipped
    assert ("onnxruntime", "fp32v01", "cpu") in skipped  # full mode only
    assert all(s["reason"] for s in doc["skipped"])
    # roofline: counted FLOPs and a GEMM peak measured in the run
    rf = doc["roofline"]
    assert rf["gflop_per_slice"]["64x64"] > 0 and rf["peak_gflops"] > 0
    assert rf["gemm"]["numpy_sgemm_gflops"] > 0


@pytest.mark.slow
def test_accuracy_table2_and_differences(quick_run):
    doc = quick_run["doc"]
    acc = doc["accuracy"]
    assert acc["columns"] == [s.name for s in L.STRUCTURES] + ["VB avg", "IVD avg", "All avg",
                                                               "far-FP max"]
    assert acc["reference"] == "pytorch-fp32-cpu"
    expected = {"pytorch-fp32-cpu", "onnxruntime-fp32-cpu", "onnxruntime-int8-cpu",
                "onnxruntime-fp16-cpu"}
    if importlib.util.find_spec("openvino") is not None:  # OpenVINO rows (BF16: native only)
        expected |= {"openvino-fp32-cpu", "openvino-int8-cpu"}
    assert set(acc["tables"]) - {"openvino-bf16-cpu"} == expected
    # the mini index's val case is a disc-only set: vertebrae are "not labelled", never 0
    t = acc["tables"]["onnxruntime-fp32-cpu"]
    assert all(t["dice"][s.name] is None and t["n"][s.name] == 0 for s in L.STRUCTURES
               if s.kind == "vertebra")
    assert t["dice"]["VB avg"] is None and t["n"]["IVD avg"] == 5
    assert all(t["dice"][s.name] is not None for s in L.STRUCTURES if s.kind == "disc")
    # beside Dice: the far-false-positive share, judged whatever the set labels
    assert _is_number(t["dice"]["far-FP max"]) and 0.0 <= t["dice"]["far-FP max"] <= 1.0
    assert t["n"]["far-FP max"] == 1
    d = acc["delta_points_vs_reference"]
    assert all(v in (0, None) for v in d["pytorch-fp32-cpu"].values())
    assert _is_number(d["onnxruntime-int8-cpu"]["All avg"])
    # the same numbers through the runtime's own metrics: ORT FP32 reproduces PyTorch closely
    assert abs(d["onnxruntime-fp32-cpu"]["All avg"]) < 1.0
    res = doc["results"]["onnxruntime-int8-cpu"]["accuracy"]
    assert set(res["per_case"]) == {"ivdval/25"} and res["batch"] == 8
    md = quick_run["md"]
    for needle in ("Table 2", "L1/L2", "VB avg", "IVD avg", "All avg", "Difference to",
                   "INT8 minus ONNX Runtime FP32", "cast-emulated", "Roofline",
                   "Per volume, end to end", "Not measured here"):
        assert needle in md, needle


@pytest.mark.slow
def test_int8_model_is_cached_and_calibrated_on_train(quick_run):
    info = quick_run["doc"]["model"]["int8"]
    assert info["calibration_source"].startswith("TRAIN")
    val = set(quick_run["doc"]["data"]["val_cases"])
    assert info["calibration_cases"] and not set(info["calibration_cases"]) & val
    assert info["fp32_nodes"]  # first conv + heads kept FP32
    assert (quick_run["cache"] / os.path.basename(info["cache"])).is_file()
    out2 = quick_run["out"].parent / "again"
    p = run_bench("--quick", "--onnx", quick_run["onnx"], "--data", quick_run["index"],
                  "--out-dir", out2, "--cache-dir", quick_run["cache"], "--threads", "1",
                  "--size", "64", "--repeats", "2", "--volume-repeats", "1",
                  "--calib-slices", "4", "--backends", "onnxruntime-int8", "--no-plots")
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((out2 / "latest.json").read_text())
    assert doc["model"]["int8"]["cached"] is True
    assert "quantising" not in p.stdout
    assert [(r["backend"], r["precision"]) for r in doc["rows"]] == [("onnxruntime", "int8")] * 2
    assert not (out2 / "latest_latency.png").exists()  # --no-plots


@pytest.mark.slow
def test_onnx_from_another_checkpoint_is_refused(quick_run, tmp_path):
    other = tmp_path / "other.onnx"
    import onnx

    m = onnx.load(str(quick_run["onnx"]))
    props = {p.key: p.value for p in m.metadata_props}
    training = json.loads(props["scar.training"])
    training["step"] = int(training.get("step", 0)) + 1000
    props["scar.training"] = json.dumps(training)
    onnx.helper.set_model_props(m, props)
    onnx.save(m, str(other))
    p = run_bench("--quick", "--checkpoint", quick_run["checkpoint"], "--onnx", other,
                  "--out-dir", tmp_path / "out", timeout=300)
    assert_one_line_error(p, "not exported from the checkpoint")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- pieces


def test_missing_model_is_one_line(tmp_path):
    p = run_bench("--checkpoint", tmp_path / "nope.pt", "--out-dir", tmp_path / "out",
                  timeout=120)
    assert_one_line_error(p, "--checkpoint", "no such file")
    with pytest.raises(ConfigError, match="pass --checkpoint"):
        resolve(None, None, None, default_ckpt=tmp_path / "a" / "b" / "m.pt",
                default_onnx=tmp_path / "m.onnx", default_fp16=tmp_path / "m16.onnx")


def test_select_variants():
    keys = [f"{v.backend}-{v.precision}-{v.device}"
            for v in select_variants("onnxruntime-int8,pytorch-fp32")]
    assert keys == ["pytorch-fp32-cpu", "onnxruntime-int8-cpu", "pytorch-fp32-cuda"]
    assert len(select_variants(None)) >= 10
    with pytest.raises(ScarError, match="unknown"):
        select_variants("onnxruntime-int4")


def test_fit_crops_and_pads_centred():
    a = np.arange(6 * 10, dtype=np.float32).reshape(1, 6, 10)
    out = fit(a, 8, -1.0)
    assert out.shape == (1, 8, 8)
    assert (out[0, 0] == -1).all() and (out[0, -1] == -1).all()  # padded rows
    np.testing.assert_array_equal(out[0, 1:7], a[0, :, 1:9])  # centre-cropped columns


def test_plan_data_without_index_falls_back_to_the_sample(tmp_path):
    plan = plan_data(tmp_path / "none.json", max_cases=2)
    assert plan.val_cases == [] and plan.volume_image.is_file()
    assert any("accuracy skipped" in n for n in plan.notes)


def test_plan_data_skips_absent_cases_and_picks_both_kinds(mini_index, tmp_path):
    entries = json.loads(mini_index.read_text())
    entries.append({"dataset": "vbval", "case": "06", "image": CHU_IMG.name,
                    "seg": CHU_SEG.name, "levels": ["L1", "L2", "L3", "L4", "L5"],
                    "split": "val", "subject": "vbval"})
    entries.append({"dataset": "gone", "case": "1", "image": "missing_img.nii.gz",
                    "seg": "missing_seg.nii.gz", "levels": ["L1"], "split": "val"})
    mini_index.write_text(json.dumps(entries))
    plan = plan_data(mini_index, max_cases=2)
    assert sorted(c.id for c in plan.val_cases) == ["ivdval/25", "vbval/06"]
    assert any("gone/1" in s for s in plan.skipped)
    assert plan.volume_id in ("ivdval/25", "vbval/06")
    assert len(plan_data(mini_index, max_cases=1).val_cases) == 1


def _summary() -> dict:
    gt = load_volume(CHU_SEG, as_labels=True)
    seg = L.verse_to_model(gt.data)
    pred = seg.copy()
    pred[pred == 3] = 0  # L3 missed: Dice 0 for L3, 1 for the other vertebrae
    return summarize([evaluate_case(pred, seg, gt.spacing, gt.affine, name="c")])


def test_table2_row_and_delta_from_runtime_metrics():
    s = _summary()
    t = R.table2(s)
    assert list(t["dice"]) == list(R.TABLE2_COLUMNS)
    assert t["dice"]["L3"] == 0.0 and t["dice"]["L1"] == 1.0
    assert t["dice"]["L1/L2"] is None and t["n"]["L1/L2"] == 0  # discs: not labelled
    assert t["dice"]["VB avg"] == pytest.approx(0.8)
    ref = dict(t["dice"], L3=0.5, **{"VB avg": 0.9})
    d = R.delta_points(t["dice"], ref)
    assert d["L3"] == pytest.approx(-50.0) and d["VB avg"] == pytest.approx(-10.0)
    assert d["L1/L2"] is None


def test_markdown_renders_a_minimal_document():
    s = _summary()
    results = {"onnxruntime-fp32-cpu": {"accuracy": {"summary": s, "batch": 8}},
               "onnxruntime-int8-cpu": {"accuracy": {"summary": s, "batch": 8}}}
    acc = R.accuracy_section(results, list(results))
    assert acc["reference"] == "onnxruntime-fp32-cpu"
    variants = [{"key": k, "backend": "onnxruntime", "precision": k.split("-")[1],
                 "device": "cpu", "batches": [1, 8], "notes": []} for k in results]
    rows = R.build_rows(variants, results, gflop={"per_slice": {"256x256": 2.8}},
                        peak={"peak_gflops": 100.0}, size=256, acc=acc)
    assert len(rows) == 4 and all(r["slice_ms_p50"] is None for r in rows)
    doc = {"mode": "quick", "created": "2026-01-01T00:00:00+00:00", "duration_s": 1.0,
           "machine": {"cpu": "x", "logical_cores": 2, "threads": 2, "libraries": {},
                       "gpu": None},
           "settings": {"size": 256, "warmup": 2, "batches": [1, 8], "postprocess": True},
           "roofline": {"gemm": {}, "gflop_latency": 2.8}, "data": {
               "volume": {"case": "c", "shape": [1, 2, 3]}, "val_cases": ["c"], "notes": []},
           "model": {}, "rows": rows, "skipped": [], "accuracy": acc, "results": results,
           "labels": {k: R.label("onnxruntime", k.split("-")[1], "cpu") for k in results}}
    md = R.render_markdown(doc)
    assert "| ONNX Runtime INT8 static QDQ (CPU) | 100.00 | 100.00 | 0.00 |" in md
    assert "INT8 minus ONNX Runtime FP32 (same runtime, Dice points): VB avg +0.00" in md


def test_thread_env_only_overrides_when_the_count_differs(monkeypatch):
    from benchmarks.machine import thread_env

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert thread_env(1)["OMP_NUM_THREADS"] == "1"
    env = thread_env(3)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    monkeypatch.delenv("OMP_NUM_THREADS")
    cores = len(os.sched_getaffinity(0))
    assert "OMP_NUM_THREADS" not in thread_env(cores)  # torch keeps its own default
