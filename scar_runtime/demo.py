"""``make demo``: the main job on the shipped sample, offline.

Runs ``scar infer`` on the sample volume with the default model and ``scar evaluate`` against the
sample's reference mask. Until a pretrained model ships, it runs what exists (the evaluation path
on the reference mask itself) and says so.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from scar_runtime.cli import run

SAMPLE_IMAGE = "chu2015_14_crop_img.nii.gz"
SAMPLE_MASK = "chu2015_14_crop_seg.nii.gz"


def sample_dir() -> Path:
    return Path(str(resources.files("scar_runtime") / "sample"))


def default_model_path() -> Path | None:
    p = Path(str(resources.files("scar_runtime") / "models" / "scarnet_small.onnx"))
    return p if p.is_file() else None


def main() -> int:
    sample = sample_dir()
    mask = sample / SAMPLE_MASK
    if default_model_path() is None:
        print("scar-net demo: no pretrained model ships in this version yet, so there is nothing "
              "to segment with. Running `scar evaluate` on the shipped sample's reference mask "
              "against itself to show the evaluation path (Dice 1.0 by construction).")
        return run(["evaluate", str(mask), str(mask)])
    out = Path("demo_output")
    out.mkdir(exist_ok=True)
    rc = run(["infer", str(sample / SAMPLE_IMAGE), "-o", str(out), "--force"])
    if rc:
        return rc
    seg = out / SAMPLE_IMAGE.replace(".nii.gz", "_seg.nii.gz")
    rc = run(["evaluate", str(seg), str(mask), "--gt-labels", "verse", "--json",
              str(out / "evaluation.json"), "--force"])
    print(f"outputs in {out.resolve()}/ (segmentation, key-points, stats, preview PNG, scores)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
