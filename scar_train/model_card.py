"""Accuracy of an exported model on the val split, as users get it (runtime + post-processing).

    python -m scar_train.model_card --model MODEL.onnx --data INDEX.json --out card.json

Per data set: per-structure 3D Dice in the paper's Table 2 layout (L1..L5, L1/L2..L5/S1, VB /
IVD / all averages), HD95, level-identification rate, and the vertebra-centre error in mm
(predicted key-points vs the reference centres: mask centroids, or the key-point files).
Everything is computed with scar_runtime (Segmenter, metrics): the numbers are the product's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from scar_runtime import labels as L
from scar_runtime.backends import read_model_metadata
from scar_runtime.dataset import read_index
from scar_runtime.hashing import file_sha256
from scar_runtime.metrics import summarize
from scar_runtime.segmenter import Segmenter


def evaluate_model(model: Path, index: Path, split: str = "val", batch: int = 4,
                   use_postprocess: bool = True) -> dict:
    cases = [c for c in read_index(index) if c.split == split]
    per_set: dict[str, dict] = {}
    t0 = time.time()
    with Segmenter(model, batch=batch, use_postprocess=use_postprocess) as seg:
        for case in cases:
            vol = case.load_image()
            res = seg.segment(vol)
            entry = per_set.setdefault(case.dataset, {"scores": [], "centre_err": [], "cases": []})
            entry["cases"].append(case.case)
            pred_kp = {L.KEYPOINT_NAMES.index(k.name): np.array(k.world_mm)
                       for k in res.keypoints}
            for k, ref in case.load_keypoints().items():
                if L.keypoint_index(L.VERTEBRA_IDS[0]) <= k <= L.keypoint_index(
                        L.VERTEBRA_IDS[-1]):  # vertebral-body centres only
                    entry["centre_err"].append(float(np.linalg.norm(pred_kp[k] - ref)))
            if case.seg is not None:
                gt = case.load_seg(vol).data
                entry["scores"].append(case.score(res.labels, gt, vol))
    out = {"split": split, "model": str(model), "postprocess": use_postprocess,
           "wall_s": round(time.time() - t0, 1), "sets": {}}
    for name, e in per_set.items():
        s = summarize(e["scores"]) if e["scores"] else {}
        out["sets"][name] = {
            "cases": e["cases"], "summary": s,
            "vertebra_centre_error_mm": (float(np.mean(e["centre_err"]))
                                         if e["centre_err"] else None),
            "n_centres": len(e["centre_err"])}
    all_scores = [s for e in per_set.values() for s in e["scores"]]
    out["all"] = summarize(all_scores) if all_scores else {}
    errs = [x for e in per_set.values() for x in e["centre_err"]]
    out["all"]["vertebra_centre_error_mm"] = float(np.mean(errs)) if errs else None
    return out


FACTS_MARKER = ("<!-- model-facts: tests/runtime/test_shipped_model.py checks these against the "
                "model -->")


def model_facts(model: Path) -> dict[str, str]:
    """What MODEL_CARD.md states about the shipped file, read from the file itself."""
    meta = read_model_metadata(model)
    return {
        "file": model.name,
        "size_bytes": str(model.stat().st_size),
        "sha256": file_sha256(model),
        "scar_version": meta.version,
        "model_size": str(meta.model_config.get("size")),
        "precision": meta.precision,
        "data_index_sha256": meta.data_index_sha256,
        "training_step": str(meta.training.get("step")),
    }


def facts_markdown(facts: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in facts.items())
    return f"{FACTS_MARKER}\n| fact | value |\n|---|---|\n{rows}\n"


def _f(x, pct=True):
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.1f}"


def markdown(card: dict) -> str:
    names = list(L.KEYPOINT_NAMES)
    head = ("| set | " + " | ".join(names)
            + " | VB | IVD | all | HD95 mm | level id | centre err mm |")
    lines = [head, "|" + "---|" * (len(names) + 7)]
    rows = list(card["sets"].items()) + [("**all**", {"summary": card["all"],
                                                      "vertebra_centre_error_mm":
                                                      card["all"].get("vertebra_centre_error_mm")})]
    for name, e in rows:
        s = e.get("summary") or {}
        st = s.get("structures", {})
        cells = [_f(st.get(n, {}).get("dice_3d")) if st.get(n, {}).get("n") else "n/l"
                 for n in names]
        hd = [v.get("hd95_mm") for v in st.values() if v.get("hd95_mm") is not None]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_f(s.get('mean_vertebra_dice'))}"
                     f" | {_f(s.get('mean_disc_dice'))} | {_f(s.get('mean_dice'))} | "
                     f"{_f(float(np.mean(hd)) if hd else None, False)} | "
                     f"{_f(s.get('identification_rate'))} | "
                     f"{_f(e.get('vertebra_centre_error_mm'), False)} |")
    return "\n".join(lines) + "\n\nDice in %, n/l = not labelled by that set.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-postprocess", action="store_true", help="score the bare network")
    a = ap.parse_args()
    card = evaluate_model(a.model, a.data, a.split, use_postprocess=not a.no_postprocess)
    a.out.write_text(json.dumps(card, indent=1))
    print(facts_markdown(model_facts(a.model)))
    print(markdown(card))


if __name__ == "__main__":
    main()
