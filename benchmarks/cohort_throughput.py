"""Cases per minute of a folder run: the local loop vs `scar infer --ray local` with 1 and 2
actors, on the 3D val volumes of the shared data (docs/performance.md, "Cohort runs").

    python -m benchmarks.cohort_throughput [--data ../shared/data] [--out /tmp/cohort_bench]

Every configuration is the real CLI in a subprocess (Ray's start-up included in its wall time),
ONNX Runtime FP32, into a fresh OUT. Ray's own cost per case is the Ray run's wall time minus
the start-up and the cases' own seconds (read + segment, from results.csv), over the cases.
Prints one JSON document; the load average before and after says how quiet the machine was.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PINNED = ("--backend", "onnxruntime", "--precision", "fp32")
CONFIGS = {
    "local (2 threads)": (),
    "ray, 1 actor x 2 CPUs": ("--ray", "local", "--ray-actors", "1", "--ray-cpus-per-actor",
                              "2"),
    "ray, 2 actors x 1 CPU": ("--ray", "local", "--ray-actors", "2", "--ray-cpus-per-actor",
                              "1"),
}


def val_volumes(data: Path) -> list[Path]:
    """The val split's 3D volumes (the Tianchi key-point cases are single slices)."""
    index = json.loads((data / "index_v2.json").read_text())
    return [data / e["image"] for e in index
            if e.get("split") == "val" and e.get("shape", [1, 1, 1])[2] > 1]


def ray_start_seconds() -> float:
    code = ("import time, ray; t = time.perf_counter(); ray.init(num_cpus=2, "
            "include_dashboard=False, log_to_driver=False); print(time.perf_counter() - t)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("/tmp/cohort_bench"))
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    src = args.out / "in"
    src.mkdir(parents=True)
    for p in val_volumes(args.data):
        os.symlink(p.resolve(), src / f"{p.parent.name}_{p.name}")
    n = len(list(src.iterdir()))
    for f in src.iterdir():  # the page cache warm for every run alike (the first ran cold)
        f.read_bytes()
    doc = {"cases": n, "cpu": _cpu(), "load_before": os.getloadavg(), "runs": {}}
    doc["ray_init_s"] = round(ray_start_seconds(), 2)
    # the local run again at the end: on a shared machine the load drifts during the runs
    configs = [*CONFIGS.items(), ("local (2 threads), again", ())]
    for label, extra in configs:
        out = args.out / label.split(",")[0].replace(" ", "_") / str(len(doc["runs"]))
        clock = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "scar_runtime", "infer", str(src), "-o",
                            str(out), *PINNED, *extra], capture_output=True, text=True,
                           cwd=REPO)
        wall = time.perf_counter() - clock
        with open(out / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        case_s = sum(float(r["seconds"]) for r in rows if r["seconds"])
        doc["runs"][label] = {"exit": p.returncode, "wall_s": round(wall, 1),
                              "cases_per_min": round(60 * n / wall, 2),
                              "case_seconds_sum": round(case_s, 1),
                              "statuses": sorted({r["status"] for r in rows}),
                              "load_after": os.getloadavg()}
    doc["load_after"] = os.getloadavg()
    print(json.dumps(doc, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return "?"


if __name__ == "__main__":
    main()
