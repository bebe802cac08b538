"""Run work on W CPU threads at once, each with single-threaded torch ops inside.

Small GEMMs lose much of their speed when split over threads, so the CPU MoE path runs one expert
per thread instead. The calling thread is one of the W; the other W - 1 come from a pool whose
threads are created while torch runs one thread: torch sizes a thread's OpenMP team once, lazily,
from the global thread count of that moment, so their teams keep one thread afterwards (a pool
created while torch runs 2 threads would run 2-thread teams in each worker: 4 threads on 2 cores).
During a parallel section ``torch.set_num_threads(1)`` holds, because MKL's thread count is global
and the calling thread's own team must be single-threaded too; the previous count is restored after.
Sections are serialised by a lock (one at a time per pool).

Trap outside moekit's reach: after a multi-threaded op, libgomp's idle workers spin for a while and
can keep a pool thread off its core; ``GOMP_SPINCOUNT=10000`` (or ``OMP_WAIT_POLICY=PASSIVE``) in
the environment before torch is imported avoids it (the benchmarks set it).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import torch


class _Workers:
    """W - 1 pool threads whose OpenMP teams have one thread; the caller is the W-th."""

    def __init__(self, extra: int) -> None:
        self.extra = extra
        self.pool = ThreadPoolExecutor(extra, thread_name_prefix="moekit-cpu")
        self.lock = threading.Lock()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:  # a parallel op in each new thread: torch sizes its team now, to 1 thread
            self.on_each_thread(lambda: torch.zeros(1 << 16).add_(1))
        finally:
            torch.set_num_threads(threads)

    def on_each_thread(self, fn: Callable[[], object]) -> list[object]:
        """``fn()`` once on each pool thread (a barrier keeps one thread from taking two)."""
        barrier = threading.Barrier(self.extra)

        def task() -> object:
            barrier.wait(timeout=60)
            return fn()

        return [f.result() for f in [self.pool.submit(task) for _ in range(self.extra)]]

    def run(self, work: Callable[[int], None], parts: int) -> None:
        with self.lock:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            futures = []
            try:
                futures = [self.pool.submit(work, p) for p in range(1, parts)]
                work(0)
            finally:
                wait(futures)  # no worker may still run once the thread count is restored
                torch.set_num_threads(threads)
            for f in futures:
                f.result()  # re-raise a worker's exception


@functools.cache
def _pool(extra: int, pid: int) -> _Workers:
    return _Workers(extra)


def _workers(extra: int) -> _Workers:
    """The pool of this process (a forked child gets its own: the parent's threads are not there)."""
    return _pool(extra, os.getpid())


def run_parts(work: Callable[[int], None], parts: int) -> None:
    """``work(p)`` for every p < ``parts`` at once (p = 0 on the calling thread), each thread's
    torch ops single-threaded; exceptions propagate."""
    if parts <= 0:
        return
    if parts == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            work(0)
        finally:
            torch.set_num_threads(threads)
        return
    _workers(parts - 1).run(work, parts)


def worker_team_sizes(parts: int) -> list[int]:
    """``torch.get_num_threads()`` as seen now inside each pool thread of a ``parts``-way section
    (1 each, whatever the global count: the pool threads' OpenMP teams are single-threaded)."""
    if parts <= 1:
        return []
    workers = _workers(parts - 1)
    with workers.lock:
        return [int(n) for n in workers.on_each_thread(torch.get_num_threads)]  # type: ignore[call-overload]
