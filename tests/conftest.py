"""Fixtures shared by the kernel tests."""
import pytest

import pyconv
import pyconv._threads


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def nthreads(request, monkeypatch):
    """Run the test on 1 and on 2 threads, threading even tiny cases."""
    monkeypatch.setattr(pyconv._threads, "MIN_WORK_PER_THREAD", 1)
    old = pyconv.get_num_threads()
    pyconv.set_num_threads(request.param)
    yield request.param
    pyconv.set_num_threads(old)
