"""`scar infer --ray` on a real local Ray (never a mock): one ``ray.init(num_cpus=2)`` shared by
every test here, real scans, the shipped model, ONNX Runtime FP32 in both runs.

The Ray run gives the local run's labels and table; a re-run computes nothing and fills in what
was deleted; an actor that dies on its first case (the test-only hook) is retried and every case
is in the table once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import CHU_IMG, IVD_IMG, REPO, SPIDER_IMG, run_scar

from scar_runtime.commands.infer import run_infer
from scar_runtime.folder_run.table import read_table_csv

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'scar-net[cluster]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")

from scar_runtime.cluster.ray_run import (  # noqa: E402
    KILL_ALWAYS_ENV,
    KILL_HOOK_ENV,
    RayOptions,
)

pytestmark = pytest.mark.xdist_group("ray")

SAMPLE = REPO / "scar_runtime" / "sample" / "chu2015_14_crop_img.nii.gz"
PINNED = {"backend": "onnxruntime", "precision": "fp32"}
# a worker of the shared session (address "auto" would find the same cluster): RayOptions'
# address is not used while a session is open in this process
ON_RAY = RayOptions(address="auto", cpus_per_actor=1)
GOOD = ("chu", "spider", "ivd", "sample", "chu_copy", "spider_copy")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six real cases (two of them the same scans under other names) and a broken file."""
    src = tmp_path_factory.mktemp("cohort")
    for name, path in zip(GOOD, (CHU_IMG, SPIDER_IMG, IVD_IMG, SAMPLE, CHU_IMG, SPIDER_IMG),
                          strict=True):
        os.symlink(path, src / f"{name}.nii.gz")
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    return src


@pytest.fixture(scope="module")
def local_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("local_out")
    summary = run_infer(cohort, out, **PINNED)
    return out, summary


def _labels(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


def _stamps(out):
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in out.iterdir()
            if f.name not in ("results.csv", "results.parquet")}


def _statuses(out):
    return {r["case"]: r["status"] for r in read_table_csv(out / "results.csv")}


TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from scar_runtime.cluster.ray_run import RayOptions
from scar_runtime.commands.infer import run_infer

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
summary = run_infer(sys.argv[1], sys.argv[2], ray=RayOptions(address="auto"),
                    backend="onnxruntime", precision="fp32")
print(json.dumps({"nodes": sum(n["Alive"] for n in ray.nodes()), "done": sorted(summary.done),
                  "failed": [n for n, _ in summary.failed]}))
ray.shutdown()
cluster.shutdown()
"""


def test_two_node_cluster(cohort, tmp_path):
    """Two Ray nodes of one CPU each (ray.cluster_utils.Cluster, in a subprocess: one driver
    per process), so the two 1-CPU actors run on different nodes. First in this module: the
    shared session of the other tests is not started yet."""
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", TWO_NODES, str(cohort), str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    assert doc["nodes"] == 2 and doc["failed"] == ["broken.nii.gz"]
    assert doc["done"] == sorted(GOOD)
    assert "2 actor(s) x 1 CPU(s) on a cluster of 2 CPU(s)" in p.stderr
    assert _statuses(out) == {"broken": "failed", **dict.fromkeys(GOOD, "ok")}


def test_ray_run_equals_the_local_run_and_resumes(ray_session, cohort, local_run, tmp_path):
    local_out, local_summary = local_run
    out = tmp_path / "ray_out"
    summary = run_infer(cohort, out, ray=ON_RAY, **PINNED)
    expected = {"broken": "failed", **dict.fromkeys(GOOD, "ok")}
    assert _statuses(out) == _statuses(local_out) == expected
    assert sorted(summary.done) == sorted(local_summary.done) == sorted(GOOD)
    assert [n for n, _ in summary.failed] == ["broken.nii.gz"]
    for name in GOOD:  # the same labels, voxel for voxel
        np.testing.assert_array_equal(_labels(out / f"{name}_seg.nii.gz"),
                                      _labels(local_out / f"{name}_seg.nii.gz"))
    ray_rows = {r["case"]: r for r in read_table_csv(out / "results.csv")}
    for r in read_table_csv(local_out / "results.csv"):
        for col in ("source", "status", "anchor", "naming_confidence", "L3_mm3", "L4_L5_mm3"):
            assert ray_rows[r["case"]][col] == r[col], (r["case"], col)
    assert not [f for f in out.iterdir() if f.name.startswith(".")]

    # resume: nothing finished is computed again; a case whose outputs were deleted is
    before = _stamps(out)
    for f in out.glob("ivd_*"):
        f.unlink()
    summary = run_infer(cohort, out, ray=ON_RAY, **PINNED)
    assert sorted(summary.kept) == sorted(set(GOOD) - {"ivd"})
    after = _stamps(out)
    assert set(after) == set(before)
    for name, stamp in before.items():
        assert (after[name] == stamp) == (not name.startswith("ivd_")), name
    rows = {r["case"]: r for r in read_table_csv(out / "results.csv")}
    assert rows["ivd"]["computed"] == "now" and rows["chu"]["computed"] == "kept"
    assert _statuses(out) == expected


def test_an_actor_killed_on_its_first_case_is_retried(ray_session, cohort, tmp_path,
                                                      monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK_ENV, str(marker))
    out = tmp_path / "out"
    summary = run_infer(cohort, out, ray=ON_RAY, **PINNED)
    assert marker.exists(), "no actor was killed: the test proves nothing"
    rows = read_table_csv(out / "results.csv")
    assert sorted(r["case"] for r in rows) == sorted([*GOOD, "broken"])  # each exactly once
    assert _statuses(out) == {"broken": "failed", **dict.fromkeys(GOOD, "ok")}
    assert sorted(summary.done) == sorted(GOOD)
    for name in GOOD:
        assert (out / f"{name}_stats.json").is_file() and (out / f"{name}_seg.nii.gz").is_file()
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # nothing half-written


def test_a_case_that_kills_every_worker_is_a_failed_row(ray_session, cohort, tmp_path,
                                                        monkeypatch):
    """An input that runs its worker out of memory on every try: given up on after the
    retries, a failed row with the reason; the job goes on and the other cases are done."""
    monkeypatch.setenv(KILL_ALWAYS_ENV, "sample")
    out = tmp_path / "out"
    summary = run_infer(cohort, out, ray=RayOptions(address="auto", max_retries=1), **PINNED)
    rows = {r["case"]: r for r in read_table_csv(out / "results.csv")}
    assert sorted(rows) == sorted([*GOOD, "broken"])
    assert rows["sample"]["status"] == "failed" and "2 tries" in rows["sample"]["error"]
    assert sorted(summary.done) == sorted(set(GOOD) - {"sample"})
    assert not list(out.glob("sample_*"))


def test_cli_on_the_running_cluster(ray_session, cohort, local_run, tmp_path):
    """`scar infer --ray auto` in a subprocess finds the cluster this module started: exit 1
    with one summary line for the broken file, then a re-run that computes nothing."""
    out = tmp_path / "out"
    shutil.copytree(local_run[0], out)  # finished by the local run: the same model
    (out / "results.csv").unlink()
    for f in out.glob("chu_copy_*"):
        f.unlink()
    args = ("infer", cohort, "-o", out, "--ray", "auto", "--backend", "onnxruntime",
            "--precision", "fp32")
    p = run_scar(*args, timeout=240)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1] == "scar: error: 1 of 7 case(s) failed: " \
                                                "broken.nii.gz"
    assert "5 case(s) already finished" in p.stderr
    # nothing from Ray's C++ core or its loggers, only scar-net's own lines
    assert not [ln for ln in p.stderr.splitlines() if ".cc:" in ln or ln.startswith("[")]
    assert (out / "chu_copy_seg.nii.gz").is_file()
    assert _statuses(out)["chu_copy"] == "ok"
