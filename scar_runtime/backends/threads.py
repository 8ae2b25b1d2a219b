"""How many CPU threads a backend uses when the caller names none."""

from __future__ import annotations

import os


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when it holds a positive integer, else the CPUs this process may run
    on (its affinity mask: a container's or ``taskset``'s limit, not the host's core count).

    Why the variable: it is how users, job schedulers and test runners already cap PyTorch and
    BLAS threads, and ONNX Runtime / OpenVINO ignore it. Ignoring it here oversubscribed the
    cores: two 2-thread ONNX Runtime sessions on a 2-core machine spin against each other, and
    the test suite's subprocesses ran up to 7x slower than alone.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
