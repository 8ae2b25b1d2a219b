"""A folder run on Ray Data: the cases -> ``map_batches`` over a pool of actors, each holding
one Segmenter (the model loaded once per actor), threads set to its CPU share.

Each actor calls ``folder_run.case.run_case``, the same function as the local loop, and writes
the case's outputs itself (all or nothing) into OUT, which must therefore be the same path on
every node (a shared file system); only the small outcome (the table row) travels back to the
driver, which prints the messages and writes the results table.

Fault tolerance: an actor that dies mid-case (killed, out of memory, node lost) is restarted by
Ray and the case's task retried (Ray Data's defaults: actors restarted and their tasks retried
without end). So that an input that kills every worker that reads it cannot loop for ever, a
small counter actor counts each case's tries: past ``max_retries`` retries the case is not tried
again but becomes a ``failed`` row. One case per block, so that a case given up on
never takes other cases with it. A retried case that had already been written in full is found
finished (resume.py) and not computed again, so every case is in the table exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from scar_runtime.cluster import RAY_EXTRA
from scar_runtime.core.errors import ConfigError, ScarError, one_line
from scar_runtime.folder_run.case import CaseOutcome, CaseSettings, failed_outcome, run_case

# Test-only hook (tests/runtime/test_ray_run.py): when set to a file path, the first actor to
# start a case creates that file and kills its own process at once (os._exit, as the OOM
# killer would), so the test sees a real worker death; later cases find the file and run.
KILL_HOOK_ENV = "SCAR_TEST_KILL_ON_FIRST_CASE"
# Test-only too: the actor kills itself on every try of the case of this name (an input that
# always runs its worker out of memory), so the test sees the case given up on.
KILL_ALWAYS_ENV = "SCAR_TEST_KILL_ALWAYS_ON"


@dataclass(frozen=True)
class RayOptions:
    address: str  # "local", "auto", "ray://host:port" or "host:port"
    actors: int | None = None  # default: as many as the cluster's CPUs hold
    cpus_per_actor: int = 1  # each actor's CPU share, and its inference threads
    local_cpus: int | None = None  # "local": the CPUs Ray may use (default: all of them)
    max_retries: int = 3  # tries of a case after its worker died, before it is failed


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate extra of Ray
    except ImportError as e:
        raise ConfigError(f"--ray needs Ray: pip install 'scar-net[{RAY_EXTRA}]' ({e})") from e
    return ray


@contextlib.contextmanager
def connected(options: RayOptions) -> Iterator[object]:
    """Ray, connected to the cluster ``options.address`` names (started here for "local"); a
    session the caller already opened (``ray.init`` in a notebook or a test) is used as is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR,
             "include_dashboard": False}
    address = options.address
    if address != "local":
        _check_reachable(address)
    try:
        if address == "local":
            ray.init(num_cpus=options.local_cpus or os.cpu_count(), **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        words = one_line(e)[:200] or type(e).__name__
        if address.startswith("ray://") and "grpc" in words.lower():
            words = "ray:// addresses need Ray Client: pip install 'ray[client]'"
        raise ConfigError(f"cannot reach Ray cluster at {address} ({words})") from e
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Ray's C++ core writes to file descriptor 2 behind Python's back: with every run, a
    warning that Ray Data's actor arguments live in the object store (they stay referenced for
    the whole job) and, where RAY_BACKEND_LOG_LEVEL is set, a line saying so. Those lines go
    to /dev/null (Ray keeps its own logs under /tmp/ray/session_latest/logs); Python's
    sys.stderr, where scar-net's own lines go, keeps the real stderr. --verbose keeps them."""
    if os.environ.get("SCAR_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    old_stderr = sys.stderr
    encoding = getattr(old_stderr, "encoding", None) or "utf-8"
    try:
        with open(saved, "w", closefd=False, encoding=encoding, errors="replace") as real:
            sys.stderr = real
            os.dup2(devnull, 2)
            try:
                yield
            finally:
                real.flush()
                os.dup2(saved, 2)
                sys.stderr = old_stderr
    finally:
        os.close(saved)
        os.close(devnull)


def _bootstrap_address(address: str) -> str | None:
    """``host:port`` of the cluster ``address`` names ("auto": RAY_ADDRESS, else the cluster
    last started on this machine), or None when there is none to find."""
    if address.startswith("ray://"):
        return address[len("ray://"):]
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            return canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - a stale or unreadable record: nothing to reach
            return None
    return address


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail in one line, fast, when nothing listens at the address: ``ray.init`` waits for a
    cluster that is not there for many minutes (it did, past 10, for 127.0.0.1:1)."""
    import socket

    target = _bootstrap_address(address)
    if target is None:
        raise ConfigError(f"cannot reach Ray cluster at {address} (no running cluster found: "
                          "start one with `ray start --head`, or use --ray local)")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"cannot reach Ray cluster at {address} (expected local, auto, "
                          "host:port or ray://host:port)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"cannot reach Ray cluster at {address} "
                          f"({e.strerror or type(e).__name__})") from e


class TryCounter:
    """How many times each case was started (a Ray actor of no CPU, one per run)."""

    def __init__(self):
        self.tries: dict[int, int] = {}

    def start(self, index: int) -> int:
        self.tries[index] = self.tries.get(index, 0) + 1
        return self.tries[index]


def _gave_up(options: RayOptions) -> str:
    return (f"its worker died on each of {options.max_retries + 1} tries (out of memory, or "
            "killed); no complete output set was written")


class CaseWorker:
    """A Ray Data actor: one Segmenter for its whole life, one case per call."""

    def __init__(self, cases, settings: CaseSettings, formats: dict, segmenter: dict,
                 threads: int, input_paths: list[str], counter, options: RayOptions,
                 kill_marker: str | None = None, kill_always: str | None = None):
        from scar_runtime.core.atomic import InputSet
        from scar_runtime.pipeline.segmenter import Segmenter

        # the libraries' own thread pools, not only the backend's: the actor owns `threads` CPUs
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.cases, self.settings, self.formats = cases, settings, formats
        self.counter, self.options = counter, options
        self.kill_marker, self.kill_always = kill_marker, kill_always
        self.seg = Segmenter(threads=threads, **segmenter)
        self.inputs = InputSet(input_paths)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import ray

        outcomes = []
        for index in batch["index"]:
            case = self.cases[int(index)]
            tries = ray.get(self.counter.start.remote(int(index)))
            if tries > self.options.max_retries + 1:
                outcome = failed_outcome(case, RuntimeError(_gave_up(self.options)))
            else:
                self._test_kill_hooks(case.name)
                outcome = run_case(case, self.seg, self.settings, self.formats[case.name],
                                   self.inputs)
            outcomes.append(json.dumps(outcome.to_json()))
        return {"index": np.asarray(batch["index"]), "outcome": np.asarray(outcomes, object)}

    def _test_kill_hooks(self, name: str) -> None:
        if self.kill_always and name == self.kill_always:
            os._exit(1)
        if not self.kill_marker:
            return
        try:
            fd = os.open(self.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def cluster_cpus(ray) -> int:
    return int(ray.cluster_resources().get("CPU", 0))


def run_on_ray(cases, todo: list[int], settings: CaseSettings, formats: dict,
               segmenter: dict, input_paths: list[str], options: RayOptions,
               on_outcome: Callable[[int, CaseOutcome], None],
               on_start: Callable[[str], None] | None = None) -> None:
    """Run the cases ``todo`` (indices into ``cases``) on the cluster; ``on_outcome(index,
    outcome)`` is called on the driver as each finishes, exactly once per case."""
    model = segmenter["model"]
    if str(model).endswith(".onnx"):  # a bad model is one line here, not N dead actors
        from scar_runtime.backends import read_model_metadata

        read_model_metadata(model)
    with native_stderr_quiet(), connected(options) as ray:
        cpus = cluster_cpus(ray)
        per_actor = max(1, options.cpus_per_actor)
        if cpus < per_actor:
            raise ConfigError(f"the Ray cluster has {cpus} CPU(s); --ray-cpus-per-actor is "
                              f"{per_actor}")
        actors = min(options.actors or cpus // per_actor, len(todo))
        if on_start:
            on_start(f"Ray: {actors} actor(s) x {per_actor} CPU(s) on a cluster of {cpus} "
                     f"CPU(s), {len(todo)} case(s) to compute")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # TryCounter gives up on a case that keeps killing its worker; should Ray itself
        # give up on a block (one case), the run goes on and the case is a failed row, below
        ctx.max_errored_blocks = -1
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        counter = ray.remote(TryCounter).options(num_cpus=0).remote()
        ds = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            CaseWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=per_actor,
            fn_constructor_kwargs={"cases": cases, "settings": settings, "formats": formats,
                                   "segmenter": segmenter, "threads": per_actor,
                                   "input_paths": input_paths, "counter": counter,
                                   "options": options,
                                   "kill_marker": os.environ.get(KILL_HOOK_ENV),
                                   "kill_always": os.environ.get(KILL_ALWAYS_ENV)})
        seen: set[int] = set()
        try:
            for row in ds.iter_rows():
                index = int(row["index"])
                if index in seen:  # never expected: Ray returns a finished block once
                    continue
                seen.add(index)
                on_outcome(index, CaseOutcome.from_json(json.loads(row["outcome"])))
        except ScarError:
            raise
        except Exception as e:  # noqa: BLE001 - the job as a whole failed (no actor could start)
            words = one_line(e)
            raise ScarError(f"the Ray job failed: {type(e).__name__}: {words[:300]}") from e
        for index in todo:  # a block Ray itself gave up on (never seen in the tests)
            if index not in seen:
                on_outcome(index, failed_outcome(cases[index], RuntimeError(_gave_up(options))))
