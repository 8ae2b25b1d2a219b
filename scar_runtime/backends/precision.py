"""Reduced precision on the CPU: only where the CPU does it natively and the model's recorded
parity gate passed.

``scar export`` records, in ``MODEL.parity.json`` under ``reduced_precision``, each reduced
precision it could check on real val slices (``openvino-bf16``: label agreement with PyTorch FP32
>= 0.995 and Dice within 0.5 point, see docs/performance.md). A runner asked for such a precision
reads that record and refuses one that is missing or failed: a BF16 answer that was never checked
is not silently handed to a user.
"""

from __future__ import annotations

import json
from pathlib import Path

from scar_runtime.core.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
GATE_LIMITS = {"label_agreement": 0.995, "dice_difference": 0.5}


def parity_record_path(model: Path) -> Path:
    """``model.onnx`` -> ``model.parity.json`` (written beside it by ``scar export``)."""
    model = Path(model)
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    return model.with_name(stem + ".parity.json")


def read_gate(model: Path, key: str) -> dict | None:
    """The recorded gate ``key`` (e.g. ``openvino-bf16``) of ``model``, or None."""
    path = parity_record_path(model)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    entry = (doc.get("reduced_precision") or {}).get(key) if isinstance(doc, dict) else None
    return entry if isinstance(entry, dict) else None


def gate_passed(entry: dict | None) -> bool:
    """True only for a measured entry within :data:`GATE_LIMITS` (re-checked, not trusted)."""
    if not entry or entry.get("skipped") or not entry.get("passed"):
        return False
    try:
        return (float(entry["label_agreement"]) >= GATE_LIMITS["label_agreement"]
                and float(entry["dice_difference"]) <= GATE_LIMITS["dice_difference"]
                and bool(entry.get("finite", True)))
    except (KeyError, TypeError, ValueError):
        return False


def require_gate(model: Path, key: str) -> dict:
    """The passed gate ``key`` of ``model``; a one-line ConfigError otherwise."""
    entry = read_gate(model, key)
    if gate_passed(entry):
        return entry
    record = parity_record_path(model)
    if entry is None:
        why = f"no {key} parity record in {record.name} (re-export with `scar export` on a " \
              "machine with openvino and a BF16 CPU)"
    elif entry.get("skipped"):
        why = f"its parity check was skipped: {entry['skipped']}"
    else:
        why = f"it failed its parity gate ({'; '.join(entry.get('failures') or ['limits'])})"
    raise ConfigError(f"--precision {key.split('-')[-1]} is not allowed for {Path(model).name}: "
                      f"{why}; use --precision fp32")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (valid: {', '.join(PRECISIONS)})")
    return precision
