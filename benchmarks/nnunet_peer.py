"""The peer row: nnU-Net v2's own predictor on the same volume, SPEED ONLY (untrained weights).

nnU-Net v2 (``pip install scar-net[peers]``: nnunetv2 and what its predictor needs) planned on
8 TRAIN cases of ``index_v2.json`` (2 each of vb_chu2015, vb_zukic2014, ivd_menezes2016,
vb_myosegmentum; ``python -m benchmarks.nnunet_peer --plan DIR`` redoes it): its planner's
``3d_fullres`` network (a 6-stage PlainConvUNet, 48 x 224 x 224 patches at 1 mm, instance
norm) and ``2d`` network (7 stages, 320 x 320). The plans are committed beside this file
(``peers/nnunet_plans.json``, ``peers/nnunet_dataset.json``), so the bench does not plan again.

The weights are random (seed 0): nnU-Net was NOT trained here, so the row is speed only and
carries no Dice. ``nnUNetPredictor`` with its default settings (sliding window, tile step 0.5,
Gaussian weighting, mirroring test-time augmentation over every allowed axis) on the CPU, with
the bench's thread count; the time is ``predict_single_npy_array`` on the image as nnU-Net's
SimpleITK reader gives it (its own preprocessing, resampling and export included), not the
file reading.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "peers"
PLANS = HERE / "nnunet_plans.json"
DATASET = HERE / "nnunet_dataset.json"
NOTE = ("nnU-Net v2's default planner on 8 TRAIN cases of index_v2.json (benchmarks/peers/), "
        "its `nnUNetPredictor` at default settings (sliding window, tile step 0.5, Gaussian, "
        "mirroring over every axis) on the CPU with the bench's threads, **random weights: "
        "speed only, no Dice**. A whole prediction takes hours on a 2-core CPU, so each "
        "configuration's time per volume is the predictor's own patch count for the reference "
        "volume x mirrorings x one patch's timed forward pass (median after a warm-up); "
        "`python -m benchmarks.nnunet_peer --image X --run` runs it whole.")


def unavailable() -> str | None:
    """Why the peer row cannot run here, or None."""
    try:
        import nnunetv2  # noqa: F401
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401
    except Exception as e:  # ImportError, or a dependency nnunetv2 needs and lacks
        return (f"nnunetv2 not importable ({type(e).__name__}: {e}); "
                "pip install 'scar-net[peers]'")
    if not PLANS.is_file():
        return f"{PLANS.name} missing (python -m benchmarks.nnunet_peer --plan DIR)"
    return None


def predictor(configuration: str = "3d_fullres", mirroring: bool = True, seed: int = 0):
    """An nnUNetPredictor on the CPU with the planned network, untrained (random weights)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads(PLANS.read_text()))
    dataset = json.loads(DATASET.read_text())
    conf = plans.get_configuration(configuration)
    labels = plans.get_label_manager(dataset)
    torch.manual_seed(seed)
    net = get_network_from_plans(conf.network_arch_class_name, conf.network_arch_init_kwargs,
                                 conf.network_arch_init_kwargs_req_import,
                                 determine_num_input_channels(plans, conf, dataset),
                                 labels.num_segmentation_heads, deep_supervision=False)
    pred = nnUNetPredictor(use_mirroring=mirroring, device=torch.device("cpu"),
                           allow_tqdm=False)  # tile step 0.5 and Gaussian: the defaults
    axes = tuple(range(len(conf.patch_size)))
    pred.manual_initialization(net, plans, conf, [net.state_dict()], dataset, "nnUNetTrainer",
                               axes)
    return pred


def estimate(image: Path, configuration: str = "3d_fullres", mirroring: bool = True,
             repeats: int = 2) -> dict:
    """Seconds per volume from timed forward passes: the predictor's sliding window on this
    image (its own slicer) needs ``tiles`` patches, each run ``1 + mirrorings`` times; one
    patch's forward pass is timed ``repeats`` times after a warm-up (median). A whole
    prediction at default settings takes hours on a 2-core CPU (measured per patch: 3d_fullres
    ~56 s on the loaded development VM), so the bench multiplies; ``measure`` runs it."""
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    pred = predictor(configuration, mirroring)
    data, _ = SimpleITKIO().read_images([str(image)])
    patch = [int(p) for p in pred.configuration_manager.patch_size]
    size = list(data.shape[1:])
    for i, p in enumerate(patch):  # nnU-Net pads an image smaller than a patch up to it
        size[len(size) - len(patch) + i] = max(size[len(size) - len(patch) + i], p)
    tiles = len(pred._internal_get_sliding_window_slicers(tuple(size)))
    per_tile = 2 ** len(pred.allowed_mirroring_axes) if mirroring else 1
    x = torch.randn(1, 1, *patch)
    times = []
    with torch.inference_mode():
        pred.network(x)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            pred.network(x)
            times.append(time.perf_counter() - t)
    forward = float(np.median(times))
    return {"configuration": configuration, "mirroring": mirroring, "patch_size": patch,
            "image_shape": list(data.shape[1:]), "tiles": tiles, "forwards_per_tile": per_tile,
            "forward_s": [round(t, 3) for t in times], "forward_s_median": round(forward, 3),
            "volume_s_estimated": round(tiles * per_tile * forward, 1),
            "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure(image: Path, configuration: str = "3d_fullres", mirroring: bool = True,
            repeats: int = 1) -> dict:
    """Seconds per volume (each repeat) and the process's peak RSS."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    pred = predictor(configuration, mirroring)
    data, props = SimpleITKIO().read_images([str(image)])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        seg = pred.predict_single_npy_array(data, props, None, None, False)
        times.append(time.perf_counter() - t)
    patch = list(pred.configuration_manager.patch_size)
    return {"configuration": configuration, "mirroring": mirroring, "seconds": times,
            "patch_size": [int(p) for p in patch], "image_shape": list(data.shape[1:]),
            "torch_threads": torch.get_num_threads(), "labels_shape": list(seg.shape),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def plan(out: Path, index: Path, per_set: int = 2) -> None:
    """Convert ``per_set`` TRAIN cases of each masked 1 mm set to nnU-Net's raw format in
    ``out`` and run its fingerprint and planner there; copy the plans here."""
    import subprocess

    import nibabel as nib
    import numpy as np

    from scar_runtime import labels as L

    root = index.parent
    sets = ("vb_chu2015", "vb_zukic2014", "ivd_menezes2016", "vb_myosegmentum")
    picked: dict[str, list] = {}
    for c in json.loads(index.read_text()):
        if (c["split"] == "train" and c["seg"] and c["dataset"] in sets
                and len(picked.setdefault(c["dataset"], [])) < per_set):
            picked[c["dataset"]].append(c)
    raw = out / "nnUNet_raw" / "Dataset900_ScarLumbar"
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(exist_ok=True)
    cases = [c for v in picked.values() for c in v]
    for c in cases:
        name = f"{c['dataset']}_{c['case']}"
        img, seg = nib.load(root / c["image"]), nib.load(root / c["seg"])
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine),
                 raw / "imagesTr" / f"{name}_0000.nii.gz")
        lab = L.verse_to_model(np.asarray(seg.dataobj).astype(np.int64)).astype(np.uint8)
        nib.save(nib.Nifti1Image(lab, seg.affine), raw / "labelsTr" / f"{name}.nii.gz")
    dataset = {"channel_names": {"0": "MRI"}, "numTraining": len(cases),
               "labels": {"background": 0, **{s.name: s.model_id for s in L.ALL_STRUCTURES}},
               "file_ending": ".nii.gz", "name": "ScarLumbar",
               "scar_train_cases": [f"{c['dataset']}/{c['case']}" for c in cases]}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))
    env = {**os.environ, "nnUNet_raw": str(out / "nnUNet_raw"),
           "nnUNet_preprocessed": str(out / "nnUNet_preprocessed"),
           "nnUNet_results": str(out / "nnUNet_results")}
    for cmd in (["nnUNetv2_extract_fingerprint", "-d", "900", "-np", "1"],
                ["nnUNetv2_plan_experiment", "-d", "900"]):
        subprocess.run(cmd, env=env, check=True)
    plans = out / "nnUNet_preprocessed" / "Dataset900_ScarLumbar" / "nnUNetPlans.json"
    HERE.mkdir(exist_ok=True)
    PLANS.write_text(plans.read_text())
    DATASET.write_text(json.dumps(dataset, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", type=Path, help="plan again in this scratch folder")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/index_v2.json"))
    ap.add_argument("--image", type=Path, help="time the predictor on this NIfTI volume")
    ap.add_argument("--configuration", default="3d_fullres")
    ap.add_argument("--no-mirroring", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads (set only when it differs)")
    ap.add_argument("--run", action="store_true", help="run the whole prediction (hours at "
                    "default settings on a 2-core CPU) instead of timing forward passes")
    a = ap.parse_args()
    if a.plan:
        plan(a.plan, a.data)
    if a.image:
        if a.threads:
            import torch

            if torch.get_num_threads() != a.threads:  # setting the same count can slow it
                torch.set_num_threads(a.threads)
        why = unavailable()
        if why:
            raise SystemExit(f"nnU-Net peer skipped: {why}")
        how = measure if a.run else estimate
        print(json.dumps(how(a.image, a.configuration, not a.no_mirroring, a.repeats)))


if __name__ == "__main__":
    main()
