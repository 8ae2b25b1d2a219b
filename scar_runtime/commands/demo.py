"""``make demo``: the main job on the shipped sample, offline.

    python -m scar_runtime.commands.demo [OUT_DIR]      (default: ./demo_output)

Runs ``scar infer`` on the sample volume with the default (shipped) model, then ``scar evaluate``
against the sample's reference mask, and prints where the outputs and the preview are. Nothing
is downloaded: model and sample are package data.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from scar_runtime.commands.cli import run
from scar_runtime.pipeline.segmenter import default_model_path

SAMPLE_IMAGE = "chu2015_14_crop_img.nii.gz"
SAMPLE_MASK = "chu2015_14_crop_seg.nii.gz"
DEFAULT_OUT = Path("demo_output")


def sample_dir() -> Path:
    return Path(str(resources.files("scar_runtime") / "sample"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DEFAULT_OUT
    if default_model_path() is None:  # a broken install or a trimmed package
        print("scar-net demo: error: the default model is missing from this install "
              "(scar_runtime/models/scarnet_small.onnx); reinstall scar-net", file=sys.stderr)
        return 2
    sample = sample_dir()
    out.mkdir(parents=True, exist_ok=True)
    # --force: the demo owns its output folder and reruns overwrite their own results
    rc = run(["infer", str(sample / SAMPLE_IMAGE), "-o", str(out), "--force"])
    if rc:
        return rc
    stem = SAMPLE_IMAGE.removesuffix(".nii.gz")
    seg = out / f"{stem}_seg.nii.gz"
    rc = run(["evaluate", str(seg), str(sample / SAMPLE_MASK), "--gt-labels", "verse",
              "--json", str(out / "evaluation.json"), "--force"])
    if rc:
        return rc
    where = out.resolve()
    print(f"\noutputs in {where}/\n  segmentation  {seg.name}\n"
          f"  preview       {stem}_preview.png\n  scores        evaluation.json\n"
          f"  (also key-points and per-structure stats; sample: CHU 2015 case 14, see "
          f"{sample / 'NOTICE.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
