"""Atomic output writing: a process killed while writing leaves the old file and no debris."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scar_runtime.core.atomic import atomic_write_stream
from scar_runtime.core.errors import OutputError

# Writes half of the new content, then dies by SIGKILL (no Python cleanup can run).
KILLED_WRITER = """
import os, signal, sys
from scar_runtime.core.atomic import atomic_write_stream

def write(f):
    f.write(b"new-" * 1000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write_stream(sys.argv[1], write, force=True)
"""


def test_sigkill_mid_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], timeout=60)
    assert proc.returncode == -9
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_stream_write_replaces_only_with_force(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_stream(target, lambda f: f.write(b"one"))
    assert target.read_bytes() == b"one"
    with pytest.raises(OutputError, match="already exists"):
        atomic_write_stream(target, lambda f: f.write(b"two"))
    atomic_write_stream(target, lambda f: f.write(b"two"), force=True)
    assert target.read_bytes() == b"two"
    with pytest.raises(OutputError, match="does not exist"):
        atomic_write_stream(tmp_path / "no" / "b.bin", lambda f: f.write(b"x"))


def test_failing_writer_leaves_nothing(tmp_path):
    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write_stream(tmp_path / "c.bin", boom)
    assert not list(tmp_path.iterdir())
