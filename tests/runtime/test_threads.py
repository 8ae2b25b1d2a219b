"""How many threads a backend takes when the user names none (scar_runtime.backends.threads)."""

from __future__ import annotations

import os

import pytest

from scar_runtime.backends import create_runner
from scar_runtime.backends.threads import default_threads
from scar_runtime.pipeline.segmenter import default_model_path

SHIPPED = default_model_path()


def test_omp_num_threads_wins_else_the_affinity_mask(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    for bad in ("", "0", "-2", "two", "1.5"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(SHIPPED is None, reason="no shipped model")
def test_onnxruntime_session_takes_the_default(monkeypatch):
    """The real session's intra-op pool follows OMP_NUM_THREADS; an explicit count beats it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for threads, want in ((None, 1), (2, 2)):
        with create_runner(SHIPPED, backend="onnxruntime", threads=threads) as runner:
            assert runner.session.get_session_options().intra_op_num_threads == want
