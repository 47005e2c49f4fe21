import subprocess
import sys

import pytest

import pyconv


def test_show_config_prints_build_facts(capsys):
    pyconv.show_config()
    text = capsys.readouterr().out
    for key in ("pyconv:", "openmp:", "blas:", "compile flags:", "threads:"):
        assert key in text


def test_set_and_get_num_threads():
    before = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(1)
        assert pyconv.get_num_threads() == 1
    finally:
        pyconv.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, "two", None])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        pyconv.set_num_threads(bad)


def test_env_thread_count_is_read_and_validated():
    code = "import pyconv; print(pyconv.get_num_threads())"
    env = {"PYCONV_NUM_THREADS": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
    env["PYCONV_NUM_THREADS"] = "zero"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "PYCONV_NUM_THREADS" in out.stderr
