"""An ordered parallel map with a bounded number of tasks in flight.

Bounded, so that a fast producer (a listing of a million keys, rendered sprites) never queues the
whole dataset in memory; ordered, so that the output order (and the dataset's content hash)
does not depend on scheduling.

Processes suit decoding (PIL, hashing and numpy hold the GIL for small images); threads suit
fetching from a bucket (waiting on the network). benchmarks/dedup.py measures both.

Each worker computes on one core: the workers are the parallelism. A BLAS or OpenMP pool of
its own in every worker (numpy's matrix products start one as wide as the machine) would put
workers x cores threads on the cores, spinning against each other (docs/data.md).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("process", "thread")


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], *, workers: int, kind: str,
                in_flight_per_worker: int = 2) -> Iterator[R]:
    if kind not in EXECUTORS:
        raise ValueError(f"executor: expected one of {EXECUTORS}, got {kind!r}")
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    if workers == 1:
        yield from map(fn, tasks)
        return
    with _executor(kind, workers) as pool, _one_thread_each(kind):
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.submit(fn, task))
            if len(pending) >= workers * in_flight_per_worker:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _one_thread_each(kind: str):
    """Threads share this process's pools: one thread each while they run. Processes set
    their own when they start (_single_threaded)."""
    return threadpool_limits(1) if kind == "thread" else contextlib.nullcontext()


def _single_threaded() -> None:
    threadpool_limits(1)


def _executor(kind: str, workers: int) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(workers, thread_name_prefix="kubevae-ingest")
    # fork (as torch's DataLoader does on Linux): workers start at once and need no importable
    # __main__ (spawn and forkserver re-run a script that lacks an `if __name__ == "__main__"`
    # guard). The work they run touches no lock or thread of the parent.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=_single_threaded)
