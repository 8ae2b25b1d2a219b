"""Checkpoints: plain dicts of tensors, ints and JSON strings, so ``torch.load(...,
weights_only=True)`` reads them (no pickled code runs on load). Written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scar_runtime.atomic import atomic_write_stream
from scar_runtime.errors import ModelError

FORMAT = "scar-net-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, *, model_state: dict, model_config: dict, train_config: dict,
                    preprocess: dict, data_index_sha256: str, step: int, epoch: int,
                    optimizer_state: dict | None = None, scheduler_state: dict | None = None,
                    metrics: dict | None = None, extra: dict | None = None) -> Path:
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "model_config": json.dumps(model_config),
        "train_config": json.dumps(train_config),
        "preprocess": json.dumps(preprocess),
        "data_index_sha256": data_index_sha256,
        "step": int(step),
        "epoch": int(epoch),
        "metrics": json.dumps(metrics or {}),
        "extra": json.dumps(extra or {}),
    }
    if optimizer_state is not None:
        doc["optimizer"] = optimizer_state
    if scheduler_state is not None:
        doc["scheduler"] = scheduler_state
    doc["torch_rng"] = torch.get_rng_state()
    # Streamed into a nameless file: a run killed mid-save leaves the previous checkpoint and
    # no temp file.
    return atomic_write_stream(path, lambda f: torch.save(doc, f), force=True)


def load_checkpoint(path: Path | str) -> dict:
    """Load with ``weights_only=True``; JSON fields decoded. One-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/truncated/non-torch files
        raise ModelError(f"{path}: not a readable checkpoint ({type(e).__name__})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{path}: not a scar-net checkpoint")
    for k in ("model_config", "train_config", "preprocess", "metrics", "extra"):
        doc[k] = json.loads(doc.get(k) or "{}")
    return doc


def release_checkpoint(src: Path | str, dst: Path | str, *, force: bool = False) -> Path:
    """Copy of ``src`` with only what inference and export need (no optimiser, scheduler or RNG
    state): a third of the size. This is what ships beside the default ONNX model, so that
    ``make bench`` times PyTorch on exactly the weights the ONNX was exported from."""
    dst = Path(dst)
    if dst.exists() and not force:
        raise ModelError(f"{dst} exists (pass force=True to replace it)")
    doc = load_checkpoint(src)
    return save_checkpoint(
        dst, model_state=doc["model"], model_config=doc["model_config"],
        train_config=doc["train_config"], preprocess=doc["preprocess"],
        data_index_sha256=doc["data_index_sha256"], step=doc["step"], epoch=doc["epoch"],
        metrics=doc["metrics"], extra=doc["extra"])
