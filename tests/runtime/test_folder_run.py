"""Folder runs without Ray: the results table (a row per input, ok / no_spine / failed), resume
(finished cases kept untouched, missing ones filled in), manifests, and the lean runtime never
importing Ray. The shipped model, real scans, ONNX Runtime FP32."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from helpers import (
    CERVICAL_IMG,
    CHU_IMG,
    REPO,
    SPIDER_IMG,
    assert_one_line_error,
    run_scar,
)

from scar_runtime.commands.infer import run_infer
from scar_runtime.folder_run.table import COLUMN_NAMES, read_table_csv, write_table

PINNED = ("--backend", "onnxruntime", "--precision", "fp32")
PINNED_KW = {"backend": "onnxruntime", "precision": "fp32"}


def _folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CHU_IMG, src / "chu.nii.gz")
    shutil.copy(SPIDER_IMG, src / "spider.nii.gz")
    shutil.copy(CERVICAL_IMG, src / "cervical.nii.gz")
    (src / "broken.nii.gz").write_bytes(b"not an image at all")
    return src


def _stamps(out):
    """inode and mtime of every case file: a kept case's must not change."""
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in out.iterdir()
            if f.name not in ("results.csv", "results.parquet")}


def test_table_statuses_exit_code_and_parquet(tmp_path):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    p = run_scar("infer", src, "-o", out, *PINNED)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == "scar: error: 1 of 4 case(s) failed: " \
                                                "broken.nii.gz"
    rows = {r["case"]: r for r in read_table_csv(out / "results.csv")}
    assert list(rows) == ["broken", "cervical", "chu", "spider"]  # a row per input, in order
    assert {c: r["status"] for c, r in rows.items()} == {
        "broken": "failed", "cervical": "no_spine", "chu": "ok", "spider": "ok"}
    assert "gzip" in rows["broken"]["error"] and rows["broken"]["backend"] == ""
    assert rows["cervical"]["reason"] and rows["cervical"]["error"] == ""
    for case in ("chu", "spider"):
        r = rows[case]
        assert r["source"] == str(src / f"{case}.nii.gz") and r["backend"].startswith("onnx")
        assert r["anchor"] in ("sacrum", "T12", "network classes")
        assert 0 <= float(r["naming_confidence"]) <= 1 and float(r["seconds"]) > 0
        assert float(r["column_tilt_deg"]) >= 0 and float(r["L3_mm3"]) > 1000
        stats = json.loads((out / f"{case}_stats.json").read_text())
        assert float(r["L3_mm3"]) == stats["structures"]["L3"]["volume_mm3"]
        assert stats["model"]["sha256"] == r["model_sha256"]
    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["case"] for r in table] == list(rows) and tuple(table[0]) == COLUMN_NAMES
    assert table[2]["L3_mm3"] == float(rows["chu"]["L3_mm3"])
    assert table[0]["status"] == "failed" and table[0]["L3_mm3"] is None
    assert not [f for f in out.iterdir() if f.name.startswith(".")]


def test_resume_keeps_finished_cases_and_fills_in_the_rest(tmp_path):
    src = _folder(tmp_path)
    (src / "cervical.nii.gz").unlink()
    out = tmp_path / "out"
    run_infer(src, out, **PINNED_KW)
    before = _stamps(out)
    # one case entirely gone, one missing only its label map
    for f in out.glob("chu_*"):
        f.unlink()
    (out / "spider_seg.nii.gz").unlink()
    summary = run_infer(src, out, **PINNED_KW)
    assert sorted(summary.kept) == [] and sorted(summary.done) == ["chu", "spider"]
    after = _stamps(out)
    assert set(after) == set(before)
    assert after["labels.json"] == before["labels.json"]
    rows = {r["case"]: r for r in read_table_csv(out / "results.csv")}
    assert rows["chu"]["computed"] == rows["spider"]["computed"] == "now"
    # a third run computes nothing: not one case file is rewritten
    stamps = _stamps(out)
    summary = run_infer(src, out, **PINNED_KW)
    assert sorted(summary.kept) == ["chu", "spider"] and not summary.written
    assert _stamps(out) == stamps
    rows = {r["case"]: r for r in read_table_csv(out / "results.csv")}
    assert [r["status"] for r in rows.values()] == ["failed", "ok", "ok"]
    assert rows["chu"]["computed"] == "kept" and float(rows["chu"]["L3_mm3"]) > 1000
    # --force recomputes every case
    summary = run_infer(src, out, force=True, **PINNED_KW)
    assert not summary.kept and sorted(summary.done) == ["chu", "spider"]
    assert _stamps(out)["chu_seg.nii.gz"] != stamps["chu_seg.nii.gz"]


def test_resume_never_replaces_another_models_results_or_a_users_file(tmp_path):
    src = _folder(tmp_path)
    for f in ("cervical.nii.gz", "broken.nii.gz"):
        (src / f).unlink()
    out = tmp_path / "out"
    run_infer(src, out, **PINNED_KW)
    stats = out / "chu_stats.json"
    doc = json.loads(stats.read_text())
    doc["model"] = {"name": "older.onnx", "sha256": "0" * 64}
    stats.write_text(json.dumps(doc))
    # an unfinished case (no stats.json) beside a user's file of one of its output names
    (out / "spider_stats.json").unlink()
    (out / "spider_preview.png").unlink()
    (out / "spider_preview.png").write_bytes(b"a user's own picture")
    summary = run_infer(src, out, **PINNED_KW)
    why = dict(summary.failed)
    assert "older.onnx" in why["chu.nii.gz"] and "--force" in why["chu.nii.gz"]
    assert "already exists" in why["spider.nii.gz"]
    assert (out / "spider_preview.png").read_bytes() == b"a user's own picture"
    assert json.loads(stats.read_text())["model"]["name"] == "older.onnx"


def test_manifest_csv_with_case_names_and_a_missing_path(tmp_path):
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-02").mkdir()
    shutil.copy(CHU_IMG, tmp_path / "sub-01" / "T2w.nii.gz")
    shutil.copy(SPIDER_IMG, tmp_path / "sub-02" / "T2w.nii.gz")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("path,case\nsub-01/T2w.nii.gz,s01\nsub-02/T2w.nii.gz,s02\n"
                        "sub-03/T2w.nii.gz,s03\n")
    out = tmp_path / "out"
    p = run_scar("infer", manifest, "-o", out, *PINNED)
    assert p.returncode == 1 and "1 of 3 case(s) failed" in p.stderr.splitlines()[-1]
    rows = read_table_csv(out / "results.csv")
    assert [(r["case"], r["status"]) for r in rows] == [("s01", "ok"), ("s02", "ok"),
                                                         ("s03", "failed")]
    assert "no such file" in rows[2]["error"] and (out / "s02_seg.nii.gz").is_file()
    # one path a line works too (each case named by its file: T2w)
    listing = tmp_path / "list.txt"
    listing.write_text("# cohort\nsub-01/T2w.nii.gz\n\n")
    summary = run_infer(listing, out, **PINNED_KW)
    assert summary.done == ["T2w"]
    assert [r["case"] for r in read_table_csv(out / "results.csv")] == ["T2w"]
    # the manifest itself is never an output: refused before any work
    own = tmp_path / "out2" / "results.csv"
    own.parent.mkdir()
    own.write_text("path\n../sub-01/T2w.nii.gz\n")
    p = run_scar("infer", own, "-o", own.parent, *PINNED)
    assert_one_line_error(p, "refusing to write over the input")
    assert sorted(f.name for f in own.parent.iterdir()) == ["results.csv"]


def test_without_pyarrow_only_the_csv_and_one_note(tmp_path, monkeypatch):
    (tmp_path / "results.parquet").write_bytes(b"an earlier run's")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    written, note = write_table(tmp_path, [])
    assert [p.name for p in written] == ["results.csv"] and "pyarrow" in note
    assert not (tmp_path / "results.parquet").exists()  # it would disagree with the CSV


def test_lean_runtime_never_imports_ray():
    code = ("import sys, scar_runtime.commands.cli, scar_runtime.commands.infer, "
            "scar_runtime.cluster, scar_runtime.cluster.ray_run, scar_runtime.folder_run.case; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr


def test_ray_missing_and_bad_addresses_are_one_line(tmp_path):
    src = _folder(tmp_path)
    # a Python without Ray: a `ray` package that fails to import shadows the installed one
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "out"
    assert_one_line_error(run_scar("infer", src, "-o", out, "--ray", "local", env=env),
                          "--ray needs Ray", "scar-net[cluster]")
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1", "not-an-address"):
        assert_one_line_error(run_scar("infer", src, "-o", out, "--ray", address, timeout=60),
                              f"cannot reach Ray cluster at {address}")
    assert_one_line_error(run_scar("infer", src, "-o", out, "--ray-actors", "2"), "--ray")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    # a bad model is refused before Ray starts, not by every actor dying on it
    assert_one_line_error(run_scar("infer", src, "-o", out, "--ray", "local", "--model", junk),
                          "not a loadable ONNX model")


def test_prefetch_reads_the_next_case_while_this_one_is_worked_on():
    import threading

    from scar_runtime.folder_run.prefetch import prefetched

    started = {k: threading.Event() for k in range(3)}
    threads = set()

    def load(k):
        started[k].set()
        threads.add(threading.current_thread().name)
        if k == 1:
            raise ValueError("an unreadable case")
        return k * 10

    seen = []
    for item, value in prefetched(range(3), load):
        if item + 1 < 3:  # the next read began before this item's work is done
            assert started[item + 1].wait(10), f"case {item + 1} was not read ahead"
        seen.append((item, value))
    # in order; a read that raised gives None (the case reads itself and reports the error)
    assert seen == [(0, 0), (1, None), (2, 20)]
    assert threads and all(t.startswith("scar-prefetch") for t in threads)
    assert list(prefetched([], load)) == []
