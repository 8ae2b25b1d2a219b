"""FP32 vs BF16-autocast training steps on this CPU, interleaved: ``python -m
scar_train.bench_precision INDEX CASE_ID [--steps 5 --warmup 2 --batch 8]`` (CASE_ID a
train-split mask case of the index, e.g. seg_spider2024/005).

A/B in alternation (fp32, bf16, fp32, ...) so that a change of load on a shared machine hits
both sides; the model is the shipped configuration (small, refinement head, 2.5D, 14 classes),
the batches real crops from one mask case through the training sampler (augmentations on, so
the sampler's own time per batch is reported too). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("case_id")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    a = ap.parse_args(argv)

    from pathlib import Path

    from scar_runtime.evaluation.dataset import read_index
    from scar_runtime.pipeline.preprocess import PreprocessConfig
    from scar_train.config import TrainConfig
    from scar_train.data import AugmentConfig, SliceSampler, prepare_case
    from scar_train.model import ScarNetConfig, build_model
    from scar_train.train import (
        _batch_to_torch,
        cpu_model_name,
        forward_loss,
        structure_augment,
    )

    cfg = TrainConfig(data="-", out="-", batch=a.batch, crop=a.crop, context_slices=1,
                      fine_refinement=True)
    pre = replace(PreprocessConfig(), context_slices=1)
    case = next(c for c in read_index(Path(a.index)) if c.id == a.case_id)
    if case.split != "train" or case.seg is None:
        raise SystemExit(f"{a.case_id}: not a train-split mask case")
    pc = prepare_case(case, pre)
    sampler = SliceSampler([pc], crop=(a.crop, a.crop), batch_size=a.batch, weak_per_batch=0,
                           augment=AugmentConfig(structures=structure_augment(cfg)),
                           context_slices=1, seed=0)
    torch.manual_seed(0)
    model = build_model(ScarNetConfig.from_size("small", fine_refinement=True,
                                                in_channels=pre.input_channels))
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    model.train()
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    t_batch = []
    for i in range(a.warmup + a.steps):
        for prec in ("fp32", "bf16"):
            t = time.perf_counter()
            b = sampler.next_batch()
            t_batch.append(time.perf_counter() - t)
            batch = _batch_to_torch(b, torch.device("cpu"))
            t = time.perf_counter()
            terms = forward_loss(model, batch, cfg, prec)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            opt.step()
            dt = time.perf_counter() - t
            if i >= a.warmup:
                times[prec].append(dt)
            losses[prec].append(float(terms.total.detach()))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    out = {"cpu": cpu_model_name(), "threads": torch.get_num_threads(),
           "capability": torch.backends.cpu.get_cpu_capability(), "batch": a.batch,
           "crop": a.crop, "loadavg_at_end": os.getloadavg(),
           "s_per_step": {k: [round(x, 3) for x in v] for k, v in times.items()},
           "median_s": med, "bf16_speedup": med["fp32"] / med["bf16"],
           "sampler_s_per_batch_median": sorted(t_batch)[len(t_batch) // 2],
           "finite": all(math.isfinite(x) for v in losses.values() for x in v),
           "losses": losses}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
