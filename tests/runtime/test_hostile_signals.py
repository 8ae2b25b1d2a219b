"""Signals while writing (issue 13): no temp file survives SIGKILL or SIGTERM, during ``scar
export``'s parity check (it once left an 11.7 MB temp model) or any atomic write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, default_signals

from scar_runtime.core.atomic import _open_unnamed

needs_tmpfile = pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="no O_TMPFILE here")

# A writer that is given a path (like `scar export`'s model writer), writes half, tells the test,
# then waits to be killed. MODE picks the writer: the nameless one or the named-temp one.
WRITER = """
import sys, time
from scar_runtime.core.atomic import atomic_write, atomic_write_unnamed

def write(tmp):
    with open(tmp, "wb") as f:
        f.write(b"half a model" * 100000)
    with open(tmp, "rb") as f:  # read back, as the parity check does
        assert f.read(4) == b"half"
    print("writing", flush=True)
    time.sleep(60)

fn = atomic_write_unnamed if sys.argv[2] == "unnamed" else atomic_write
fn(sys.argv[1], write, force=True)
"""


def _kill_mid_write(tmp_path, mode: str, sig: int,
                    preexec=default_signals) -> subprocess.Popen:
    target = tmp_path / "model.onnx"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec)
    assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


@needs_tmpfile
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_nameless_write_leaves_nothing_on_any_signal(tmp_path, sig):
    if _open_unnamed(tmp_path) is None:
        pytest.skip(f"{tmp_path}'s file system has no O_TMPFILE")
    proc = _kill_mid_write(tmp_path, "unnamed", sig)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_named_temp_is_removed_on_catchable_signals(tmp_path, sig):
    # The fallback without O_TMPFILE: SIGTERM/SIGHUP raise like Ctrl-C while the temp exists,
    # so the cleanup runs (SIGKILL cannot be caught: that is what O_TMPFILE is for).
    proc = _kill_mid_write(tmp_path, "named", sig)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == [], "temp file left behind"
    assert "KeyboardInterrupt" in proc.stderr.read()  # the handler ran, then the script ended


@needs_tmpfile
def test_scar_export_killed_during_parity_leaves_no_temp_file(tiny_model, tmp_path):
    if _open_unnamed(tmp_path) is None:
        pytest.skip(f"{tmp_path}'s file system has no O_TMPFILE")
    out = tmp_path / "m.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "scar_runtime", "export",
                             str(tiny_model["checkpoint"]), "-o", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=default_signals)
    seen = []
    deadline = time.time() + 900
    for line in proc.stdout:
        seen.append(line)
        if "checking parity" in line or time.time() > deadline:
            break
    assert any("checking parity" in s for s in seen), "".join(seen)
    time.sleep(1.0)  # inside the parity check: the model is written and being run
    proc.kill()
    proc.wait(timeout=60)
    assert list(tmp_path.iterdir()) == [], [p.name for p in tmp_path.iterdir()]


def test_a_signal_ignored_by_the_parent_stays_ignored(tmp_path):
    """`nohup scar export ...`: SIGHUP is ignored when the writer starts, so a hang-up must not
    stop the write (the runtime installs its handler only over the default one); a SIGTERM
    afterwards still cleans up."""
    def nohup():
        default_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    target = tmp_path / "model.onnx"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), "named"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=nohup)
    assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
    proc.send_signal(signal.SIGHUP)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)  # still writing
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == [], "temp file left behind"
