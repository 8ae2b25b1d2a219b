"""Checkpoints: plain dicts of tensors, ints and JSON strings, so ``torch.load(...,
weights_only=True)`` reads them (no pickled code runs on load). Written atomically.

Read with limits (a checkpoint is a zip archive: its declared sizes are checked before anything
is inflated, so a small file that inflates to gigabytes is refused first) and validated by a
schema with bounds (``_check_fields``): JSON fields must be JSON objects, step and epoch whole
numbers, and the model configuration's sizes plausible, so no absurd network is ever built.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import torch

from scar_runtime.core.atomic import atomic_write_stream
from scar_runtime.core.errors import ModelError

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


# The paper-size model with optimiser state is well under 1 GiB; 4 GiB is no checkpoint of ours.
MAX_CHECKPOINT_BYTES = 4 << 30
# torch.save stores tensors uncompressed, so an archive's content is about its file size.
MAX_INFLATION = 2
MAX_ENTRIES = 100_000
MAX_JSON_CHARS = 16 << 20
MAX_STEP = 10**9
JSON_FIELDS = ("model_config", "train_config", "preprocess", "metrics", "extra")
# Upper bounds of the model configuration's integers (the paper size uses at most 2048
# channels and 16 middle blocks). Anything larger would build a network of absurd size.
_CONFIG_BOUNDS = {"channels": 8192, "middle_blocks": 64, "at_heads": 64, "at_kernel_size": 31,
                  "at_kv_pool": 64, "mcca_reduction": 1024, "aspp_rates": 64,
                  "exit_dilation": 64, "num_classes": 256, "num_keypoints": 64,
                  "in_channels": 16, "downsample_at": 8}
_DEFAULT_INT_BOUND = 8192
MAX_LIST_LEN = 32


def _check_archive(path: Path) -> None:
    """Sizes from the archive's directory, before torch inflates anything."""
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise ModelError(f"{path}: {size / 2**30:.1f} GiB is larger than any scar-net checkpoint")
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format: not compressed, so the file size is the bound
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ModelError(f"{path}: damaged checkpoint archive ({e})") from e
    if len(infos) > MAX_ENTRIES:
        raise ModelError(f"{path}: {len(infos):,} archive entries is not a checkpoint")
    inflated = sum(i.file_size for i in infos)
    if inflated > MAX_CHECKPOINT_BYTES or inflated > MAX_INFLATION * size + (1 << 20):
        raise ModelError(f"{path}: would inflate from {size:,} to {inflated:,} bytes (refused: "
                         "a scar-net checkpoint is stored uncompressed)")


def _bad(path: Path, what: str) -> ModelError:
    return ModelError(f"{path}: damaged checkpoint ({what})")


def _check_config_value(path: Path, key: str, value) -> None:
    bound = _CONFIG_BOUNDS.get(key)
    if bound is None:
        bound = _CONFIG_BOUNDS["channels"] if key.endswith("channels") else _DEFAULT_INT_BOUND
    values = value if isinstance(value, list) else [value]
    if len(values) > MAX_LIST_LEN:
        raise _bad(path, f"model_config.{key} has {len(values)} values")
    for v in values:
        if isinstance(v, bool | str) or v is None:
            continue
        if isinstance(v, int):
            if not 0 <= v <= bound:
                raise _bad(path, f"model_config.{key} = {v} is outside 0..{bound}")
        elif isinstance(v, float):
            if not math.isfinite(v) or abs(v) > 1e6:
                raise _bad(path, f"model_config.{key} = {v} is not a plausible number")
        else:
            raise _bad(path, f"model_config.{key} holds {type(v).__name__}")


def _check_fields(doc: dict, path: Path) -> dict:
    """The checkpoint schema: types first, then bounds. Returns the doc with JSON decoded."""
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise _bad(path, f"format_version {version!r} is not one this version reads")
    model = doc.get("model")
    if not isinstance(model, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                              for k, v in model.items()):
        raise _bad(path, "'model' is not a dict of named weight tensors")
    for key in ("step", "epoch"):
        v = doc.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_STEP:
            raise _bad(path, f"{key} {v!r} is not a whole number in 0..{MAX_STEP}")
    digest = doc.get("data_index_sha256", "")
    if not isinstance(digest, str) or len(digest) > 128:
        raise _bad(path, "data_index_sha256 is not a hash string")
    for key in JSON_FIELDS:
        raw = doc.get(key) or "{}"
        if not isinstance(raw, str) or len(raw) > MAX_JSON_CHARS:
            raise _bad(path, f"{key} is not a JSON string")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise _bad(path, f"{key} is not valid JSON") from e
        if not isinstance(value, dict):
            raise _bad(path, f"{key} is not a JSON object")
        doc[key] = value
    for key, value in doc["model_config"].items():
        _check_config_value(path, str(key), value)
    return doc


def load_checkpoint(path: Path | str) -> dict:
    """Load with ``weights_only=True`` after the size checks; fields validated and JSON fields
    decoded. One-line ``ModelError`` for anything that is not a sound scar-net checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    _check_archive(path)
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # torch raises many types for corrupt/truncated/non-torch files
        raise ModelError(f"{path}: not a readable checkpoint ({type(e).__name__})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{path}: not a scar-net checkpoint")
    return _check_fields(doc, path)


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
