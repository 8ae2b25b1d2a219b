"""Training-step speed on this CPU: FP32 vs BF16 autocast vs channels_last (issue 11, item 5).

    python -m benchmarks.train_step [--steps 6] [--batch 8] [--crop 256]

Each variant runs warm-up steps, then the variants are timed round-robin (so a background load
hits them alike) on the same random batch; prints the median seconds per optimiser step and the
ratio to FP32. The loss is the real training loss on a synthetic batch (speed does not depend on
the pixel values).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scar_runtime import labels as L
from scar_train.losses import scar_loss
from scar_train.model import ScarNetConfig, build_model


def _batch(n: int, crop: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 1, crop, crop, generator=g),
            "labels": torch.randint(0, L.NUM_CLASSES, (n, crop, crop), generator=g),
            "class_mask": torch.ones(n, L.NUM_CLASSES, dtype=torch.bool),
            "has_seg": torch.ones(n, dtype=torch.bool),
            "heatmaps": torch.rand(n, L.NUM_KEYPOINTS, crop // 4, crop // 4, generator=g),
            "kp_mask": torch.ones(n, L.NUM_KEYPOINTS, dtype=torch.bool)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--size", default="small")
    args = ap.parse_args()
    batch = _batch(args.batch, args.crop)
    variants = {"fp32": (False, False), "bf16_autocast": (True, False),
                "channels_last": (False, True), "bf16+channels_last": (True, True)}
    state = {}
    for name, (bf16, cl) in variants.items():
        torch.manual_seed(0)
        model = build_model(ScarNetConfig.from_size(args.size))
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        state[name] = (model, opt, bf16, cl)

    def step(name: str) -> float:
        model, opt, bf16, cl = state[name]
        x = batch["image"].contiguous(memory_format=torch.channels_last) if cl else batch["image"]
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        terms = scar_loss(out, batch, 50.0, 20.0)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        return time.perf_counter() - t

    for name in variants:
        step(name)  # warm-up (allocator, oneDNN primitive cache)
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name in variants:
            times[name].append(step(name))
    base = statistics.median(times["fp32"])
    print(f"threads={torch.get_num_threads()} batch={args.batch} crop={args.crop}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:20s} {med:6.3f} s/step  x{base / med:4.2f} vs fp32")


if __name__ == "__main__":
    main()
