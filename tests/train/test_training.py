"""`scar train` end to end on real slices: overfitting, SIGKILL + --resume, torchrun, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import CHU_IMG, CHU_SEG, REPO, assert_one_line_error, run_scar

from scar_runtime import labels as L
from scar_runtime.evaluation.metrics import dice
from scar_runtime.io import load_volume
from scar_runtime.labels import verse_to_model
from scar_runtime.pipeline.preprocess import PreprocessConfig, image_to_slices, labels_to_slices
from scar_train.checkpoint import load_checkpoint
from scar_train.losses import scar_loss
from scar_train.model import ScarNetConfig, build_model

SMOKE = ["--batch", "2", "--crop", "64", "--log-every", "1", "--val-every", "100"]


def _log(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_overfits_a_handful_of_real_slices():
    """The small model, fed 4 real slices with their masks, must reach Dice >= 0.9 on them."""
    torch.manual_seed(0)
    img = load_volume(CHU_IMG)
    seg = verse_to_model(load_volume(CHU_SEG, as_labels=True).data)
    x, grid = image_to_slices(img.data, img.inplane_spacing, PreprocessConfig())
    y = labels_to_slices(seg, grid)
    idx = [16, 18, 20, 22]  # central sagittal slices (all five lumbar bodies visible)
    xb = torch.from_numpy(x[idx])
    yb = torch.from_numpy(y[idx].astype(np.int64))
    batch = {"labels": yb, "class_mask": torch.ones(4, L.NUM_CLASSES, dtype=torch.bool),
             "has_seg": torch.ones(4, dtype=torch.bool),
             "heatmaps": torch.zeros(4, 10, xb.shape[2] // 4, xb.shape[3] // 4),
             "kp_mask": torch.zeros(4, 10, dtype=torch.bool)}
    model = build_model(ScarNetConfig.from_size("small"))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t0, best = time.time(), 0.0
    for step in range(1, 301):
        loss = scar_loss(model(xb), batch, 0.0).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                pred = model(xb).logits.argmax(1).numpy()
            model.train()
            best = np.mean([dice(pred == c, y[idx] == c) for c in range(1, 6)])
            if best >= 0.9:
                break
    print(f"overfit: Dice {best:.3f} after {step} steps, {time.time() - t0:.0f} s")
    assert best >= 0.9


def test_smoke_run_writes_a_run_folder(mini_index, tmp_path):
    run = tmp_path / "run"
    p = run_scar("train", "--data", mini_index, "--out", run, "--max-steps", "3",
                 "--steps-per-epoch", "3", "--epochs", "1", *SMOKE)
    assert p.returncode == 0, p.stderr[-2000:]
    assert {"config.json", "log.jsonl", "last.pt", "best.pt"} <= {f.name for f in run.iterdir()}
    doc = torch.load(run / "last.pt", weights_only=True)  # plain tensors/ints/strings only
    assert doc["step"] == 3
    ck = load_checkpoint(run / "best.pt")
    assert "L1/L2" in ck["metrics"]["structures"]  # validation used scar_runtime's metrics
    events = [r["event"] for r in _log(run)]
    assert events[0] == "start" and "val" in events and events[-1] == "end"


def test_sigkill_then_resume_continues_at_the_saved_step(mini_index, tmp_path):
    run = tmp_path / "run"
    args = ["--data", mini_index, "--out", run, "--epochs", "1", "--steps-per-epoch", "40",
            "--ckpt-every", "3", *SMOKE]
    proc = subprocess.Popen([sys.executable, "-m", "scar_runtime", "train", *map(str, args)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    saved = 0
    while time.time() < deadline and proc.poll() is None:
        if (run / "last.pt").exists():
            saved = torch.load(run / "last.pt", weights_only=True)["step"]
            if saved >= 6:
                break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert saved >= 6, "the run did not write a checkpoint in time"
    at_kill = torch.load(run / "last.pt", weights_only=True)["step"]
    assert at_kill % 3 == 0
    assert not [f for f in run.iterdir() if f.name.startswith(".")], "temp file left behind"
    # another setting: refused in one line
    p = run_scar("train", *map(str, args), "--lambda", "77", "--resume")
    assert_one_line_error(p, "rec_weight")
    p = run_scar("train", *map(str, args), "--resume", "--max-steps", str(at_kill + 2))
    assert p.returncode == 0, p.stderr[-2000:]
    log = _log(run)
    resume = [r for r in log if r["event"] == "resume"]
    assert resume and resume[-1]["step"] == at_kill
    first_after = [r for r in log if r["event"] == "train" and r["time"] > resume[-1]["time"]]
    assert first_after[0]["step"] == at_kill + 1
    assert torch.load(run / "last.pt", weights_only=True)["step"] == at_kill + 2


@pytest.mark.slow
def test_torchrun_two_processes_identical_weights(mini_index, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", "-m", "scar_train.cli", "--data", str(mini_index),
           "--out", str(run), "--max-steps", "2", "--steps-per-epoch", "2", "--epochs", "1",
           "--threads", "1", *SMOKE]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    end = _log(run)[-1]
    start = _log(run)[0]
    assert start["world"] == 2
    assert end["event"] == "end" and end["step"] == 2 and end["ranks_identical"] is True


def test_train_errors_are_one_line(tmp_path, mini_index):
    assert_one_line_error(run_scar("train", "--data", tmp_path / "nope.json", "--out",
                                   tmp_path / "r"), "no such data index")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert_one_line_error(run_scar("train", "--data", bad, "--out", tmp_path / "r"), "JSON")
    only_val = tmp_path / "val.json"
    entries = [dict(e, split="val") for e in json.loads(mini_index.read_text())]
    for e in entries:
        for k in ("image", "seg", "keypoints"):
            if e.get(k):
                e[k] = str(mini_index.parent / e[k])
    only_val.write_text(json.dumps(entries))
    assert_one_line_error(run_scar("train", "--data", only_val, "--out", tmp_path / "r"),
                          "train split is empty")
    assert_one_line_error(run_scar("train", "--data", mini_index, "--out", tmp_path / "r",
                                   "--size", "huge"), "unknown size")
    assert_one_line_error(run_scar("train", "--data", mini_index, "--out", tmp_path / "r2",
                                   "--resume"), "no checkpoint")


def test_resume_accepts_a_run_saved_before_a_setting_existed():
    """A run saved by an older version lacks newer settings (gap_weight, fine_refinement); they
    were off then, so --resume with them off goes on and with them on refuses."""
    from scar_runtime.core.errors import ConfigError
    from scar_train.config import TrainConfig

    now = TrainConfig(data="d.json", out="r", resume=True)
    saved = {k: v for k, v in now.to_dict().items() if k not in ("gap_weight", "fine_refinement")}
    now.check_resumable_from(saved)
    with pytest.raises(ConfigError, match="gap_weight=0.0, not 5.0"):
        TrainConfig(data="d.json", out="r", resume=True, gap_weight=5.0).check_resumable_from(saved)
    # rotation_deg came later still; runs before it rotated by +-10 degrees
    saved = {k: v for k, v in now.to_dict().items() if k != "rotation_deg"}
    now.check_resumable_from(saved)
    with pytest.raises(ConfigError, match="rotation_deg=10.0, not 30.0"):
        TrainConfig(data="d.json", out="r", resume=True,
                    rotation_deg=30.0).check_resumable_from(saved)
    with pytest.raises(ConfigError, match="--rotation-deg"):
        TrainConfig(data="d.json", out="r", rotation_deg=-5.0)
