"""Shared test fixtures and hooks (helpers the tests import live in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import run_scar, write_mini_index

# Under pytest-xdist each worker gets its share of the cores, and so do the `scar` subprocesses
# it starts (they inherit the variable; torch, ONNX Runtime and OpenVINO runners all honour it):
# two workers whose threads each spin on every core ran subprocess tests up to 7x slower than
# alone. Set before any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    from scar_runtime.backends.threads import default_threads

    os.environ["OMP_NUM_THREADS"] = str(
        max(1, default_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


# optional: a run without xdist (-p no:xdist) has no such hook
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Stop at once when ``--dist loadgroup`` silently stops grouping (make test uses it).

    The modules marked ``xdist_group`` build costly module fixtures (exports, the bench run);
    split over two workers each is built twice or more, and the suite measured 19 min instead
    of ~15. pytest-xdist marks a grouped test by appending ``@group`` to its node id; pytest 9.2
    ignores that edit (pytest-dev/pytest-xdist#1386), hence the ``pytest<9.2`` pin in the dev
    extra. Runs on the controller, which sees only node ids: a module whose source marks
    ``xdist_group`` must come back with suffixed ids.
    """
    if node.config.getoption("dist", "no") != "loadgroup":
        return
    files: dict[str, bool] = {}
    for nodeid in ids:
        path = nodeid.split("::", 1)[0]
        files[path] = files.get(path, False) or "@" in nodeid
    for path, grouped in files.items():
        if not grouped and "pytest.mark.xdist_group(" in (node.config.rootpath / path).read_text():
            raise pytest.UsageError(
                f"--dist loadgroup is not grouping the tests of {path}: this pytest-xdist / "
                "pytest pair ignores xdist_group (pytest-dev/pytest-xdist#1386); install the "
                "dev extra's pytest (<9.2)")


@pytest.fixture
def mini_index(tmp_path) -> Path:
    return write_mini_index(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict:
    """A real (2-step) SCAR-Net trained on the mini index and exported with `scar export`:
    weights are poor, but every code path (checkpoint, ONNX, metadata) is the real one.

    Under pytest-xdist the workers share one build: the first to take the lock trains and
    exports into the run's common temp folder, the others wait and reuse it (the pattern of
    pytest-xdist's docs)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # plain pytest: nobody to share with
        return _build_tiny_model(tmp_path_factory.mktemp("tiny_model"))
    from filelock import FileLock
    shared = tmp_path_factory.getbasetemp().parent / "tiny_model"
    with FileLock(str(shared) + ".lock"):
        done = shared / "built"
        if not done.exists():
            if shared.exists():  # a worker died half-way: start afresh
                import shutil
                shutil.rmtree(shared)
            shared.mkdir()
            _build_tiny_model(shared)
            done.touch()
    return _tiny_model_paths(shared)


def _tiny_model_paths(d: Path) -> dict:
    return {"onnx": d / "tiny.onnx", "checkpoint": d / "run" / "last.pt",
            "index": d / "data" / "index.json"}


def _build_tiny_model(d: Path) -> dict:
    index = write_mini_index(d / "data")
    run = d / "run"
    p = run_scar("train", "--data", index, "--out", run, "--max-steps", "2", "--batch", "2",
                 "--crop", "64", "--val-every", "100", "--steps-per-epoch", "2", "--epochs", "1",
                 env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    onnx_path = d / "tiny.onnx"
    p = run_scar("export", run / "last.pt", "-o", onnx_path, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return _tiny_model_paths(d)


@pytest.fixture(scope="module")
def shipped_or_tiny_model(request) -> Path:
    """The shipped model when it matches this scar-net's label map, else the tiny real one."""
    from scar_runtime.core.errors import ScarError
    from scar_runtime.pipeline.segmenter import Segmenter, default_model_path

    try:
        Segmenter().close()
        return default_model_path()
    except ScarError:
        return request.getfixturevalue("tiny_model")["onnx"]
