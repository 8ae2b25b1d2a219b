"""The model that ships in the package: MODEL_CARD.md states the truth about it, and `make demo`
segments the shipped sample with it (offline, real data, real ONNX Runtime)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from helpers import REPO, SHARED_DATA, needs_shared

from scar_runtime import __version__
from scar_runtime.backends import create_runner
from scar_runtime.pipeline.segmenter import default_model_path

CARD = REPO / "MODEL_CARD.md"
MARKER = "<!-- model-facts:"
MAX_MODEL_BYTES = 25 * 1024 * 1024  # issue 6: the shipped FP32 ONNX is <= 25 MB
# The demo sample is a crop of a VAL case (vb_chu2015/14), never trained on. The bound sits well
# under what the shipped model scores there (0.827, step 2400) and far above an untrained or
# mislabelled model (a level shift scores ~0 on every vertebra).
DEMO_MIN_VERTEBRA_DICE = 0.70


def card_facts() -> dict[str, str]:
    """The ``| fact | `value` |`` table that follows the model-facts marker in MODEL_CARD.md."""
    lines = CARD.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(MARKER)), None)
    assert start is not None, "MODEL_CARD.md has no model-facts table"
    facts = {}
    for ln in lines[start + 3:]:
        if not ln.startswith("|"):
            break
        key, value = (c.strip() for c in ln.strip("|").split("|"))
        facts[key] = value.strip("`")
    return facts


@pytest.fixture(scope="module")
def shipped():
    path = default_model_path()
    assert path is not None, "no default model in scar_runtime/models"
    with create_runner(path, backend="onnxruntime") as runner:
        return path, runner.metadata


def test_model_card_matches_the_shipped_model(shipped):
    path, meta = shipped
    facts = card_facts()
    assert facts["file"] == path.name
    assert int(facts["size_bytes"]) == path.stat().st_size <= MAX_MODEL_BYTES
    assert facts["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert facts["scar_version"] == meta.version == __version__
    assert facts["model_size"] == meta.model_config["size"] == "small"
    assert facts["precision"] == meta.precision == "fp32"
    assert facts["data_index_sha256"] == meta.data_index_sha256
    assert len(meta.data_index_sha256) == 64
    assert facts["training_step"] == str(meta.training["step"])


# The shipped v2 model was trained on index_v2.json (index.json, the v0.1 set, is unchanged).
TRAINING_INDEX = SHARED_DATA / "index_v2.json"


@needs_shared
def test_shipped_model_was_trained_on_this_data_index(shipped):
    _, meta = shipped
    assert meta.data_index_sha256 == hashlib.sha256(TRAINING_INDEX.read_bytes()).hexdigest()
    assert meta.labels["num_classes"] == 14  # the anchor classes T12, T12/L1, S1


def test_demo_segments_the_shipped_sample(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "scar_runtime.commands.demo", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stem = "chu2015_14_crop_img"
    for name in (f"{stem}_seg.nii.gz", f"{stem}_preview.png", "evaluation.json"):
        assert (out / name).is_file(), name
        assert name in proc.stdout  # the demo says where its outputs are
    summary = json.loads((out / "evaluation.json").read_text())["summary"]
    assert summary["n_vertebra"] == 5
    assert summary["mean_vertebra_dice"] >= DEMO_MIN_VERTEBRA_DICE
    assert summary["identification_rate"] == 1.0
