"""How many threads pyconv's kernels use.

pyconv runs one thread pool: its own OpenMP team.  The BLAS behind
``scipy.linalg.cython_blas`` is kept on one thread and every GEMM-shaped
kernel splits its work (tiles, groups, images, column blocks) across the
OpenMP threads, each calling a single-threaded sgemm.  Two pools on the
same cores (OpenMP workers and OpenBLAS's pthreads, each spin-waiting for
work after a call) slow each other down badly: measured 6-15x slower whole
networks at 2 threads on a 2-core machine before this rule.
"""
from __future__ import annotations

import math
import os
import threading

_lock = threading.Lock()
_num_threads = 0  # 0: not resolved yet

# Below this many multiply-adds (or element operations) per call a kernel runs
# on one thread: waking a second thread costs a few microseconds.
MIN_WORK_PER_THREAD = 1 << 16


def available_cpus() -> int:
    """CPUs this process may run on: affinity mask and cgroup CPU quota aware."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def _cgroup_cpu_quota():
    """CPU limit from cgroup v2 (``cpu.max``) or v1 (``cfs_quota``), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def _parse_thread_count(value, source: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{source} must be a positive integer, got {value!r}")
    return n


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in pyconv's kernels (the BLAS they call stays on one thread)."""
    global _num_threads
    n = _parse_thread_count(n, "set_num_threads(n)")
    from pyconv import _blas

    with _lock:
        _num_threads = n
        _blas.set_threads(1)


def get_num_threads() -> int:
    """Threads pyconv uses: set_num_threads(), else $PYCONV_NUM_THREADS, else the CPUs available."""
    if _num_threads == 0:
        env = os.environ.get("PYCONV_NUM_THREADS")
        set_num_threads(_parse_thread_count(env, "PYCONV_NUM_THREADS") if env else available_cpus())
    return _num_threads


def threads_for(work: float) -> int:
    """Threads worth using for a kernel call doing ``work`` elementary operations."""
    n = get_num_threads()
    if n == 1 or work < 2 * MIN_WORK_PER_THREAD:
        return 1
    return int(min(n, work // MIN_WORK_PER_THREAD))
