"""Read the next case while the network works on this one (local folder runs).

A case's volume is read (gzip, DICOM decoding) before the network can start on it; on a file
system far from the machine (NFS, object-store mounts) that read is mostly waiting. One thread
reads case k + 1 while case k is segmented; the backends, gzip and numpy release the GIL while
they work, so the two overlap. Writing stays in the case's own step: its outputs are complete
(all or nothing) before the next case's row is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
V = TypeVar("V")


def prefetched(items: Iterable[T], load: Callable[[T], V]) -> Iterator[tuple[T, V | None]]:
    """``(item, load(item))`` in order, ``load`` of the next item running in a background thread
    while the caller works on this one. A load that raised gives ``None``: the caller reads the
    item itself and reports its error as it always does (one code path for bad input). Leaving
    the loop early (an error, Ctrl-C) does not wait for a read in flight."""
    items = list(items)
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scar-prefetch")
    try:
        ahead: Future = pool.submit(load, items[0])
        for k, item in enumerate(items):
            try:
                value = ahead.result()
            except Exception:  # noqa: BLE001 - the caller's own read says what is wrong
                value = None
            if k + 1 < len(items):
                ahead = pool.submit(load, items[k + 1])
            yield item, value
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
