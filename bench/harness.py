"""Timing helpers shared by the benchmark files.

The machines are shared and noisy, so every ratio table is measured the same
way: competitors run round-robin (the order rotating from round to round, so
none always runs first), each competitor's first call of a round is not timed
(it absorbs the caches and idle threads its predecessor left behind), and the
table reports medians.  On one thread every competitor computes in the calling
thread, so its CPU time (``time.thread_time``) measures the work and ignores
time lost to other processes; with more threads only wall time says anything.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import pyconv


def clock_for(threads: int) -> Callable[[], float]:
    """The stopwatch for a run on ``threads`` threads (see the module docstring)."""
    return time.thread_time if threads == 1 else time.perf_counter


class threads_set:
    """pyconv and every BLAS in the process (NumPy's included, via threadpoolctl) on ``n`` threads.

    pyconv keeps its own BLAS on one thread whatever ``n`` is (one thread pool, see
    pyconv/_threads.py), so it is set after threadpoolctl."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import threadpoolctl

        self.before = pyconv.get_num_threads()
        self.limits = threadpoolctl.threadpool_limits(self.n)
        pyconv.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        self.limits.restore_original_limits()
        pyconv.set_num_threads(self.before)


def interleaved_samples(funcs: Dict[str, Callable[[], object]], rounds: int, calls: int = 1,
                        clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Seconds per call of each competitor, one sample per round (the mean of ``calls``
    back-to-back calls after one untimed call)."""
    samples: Dict[str, List[float]] = {name: [] for name in funcs}
    order = list(funcs.items())
    for r in range(rounds):
        shift = r % len(order)
        for name, fn in order[shift:] + order[:shift]:
            fn()
            start = clock()
            for _ in range(calls):
                fn()
            samples[name].append((clock() - start) / calls)
    return samples


def interleaved_medians(funcs: Dict[str, Callable[[], object]], rounds: int, calls: int = 1,
                        clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Median seconds per call of each competitor (see :func:`interleaved_samples`)."""
    return {name: float(np.median(t)) for name, t in interleaved_samples(funcs, rounds, calls, clock).items()}


def emit_table(lines: List[str], title: Optional[str] = None) -> None:
    """Print a Markdown table; ``PYCONV_BENCH_TABLE=path`` also appends it to that file."""
    table = (f"\n### {title}\n" if title else "") + "\n" + "\n".join(lines) + "\n"
    print(table)
    path = os.environ.get("PYCONV_BENCH_TABLE")
    if path:
        with open(path, "a") as f:
            f.write(table)
