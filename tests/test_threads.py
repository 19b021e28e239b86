"""BLAS threading set in one place (hil.threads) and applied by the entry points, and a `hil`
that stops quietly when its stdout is closed early. Thread counts are checked in subprocesses,
which start with the BLAS library's own setting and leave this process's alone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil.errors import ConfigError
from hil.threads import ENV_VAR, threads_from_env

ROOT = Path(__file__).resolve().parents[1]
MAX_THREADS = min(2, os.cpu_count() or 1)

# the child first lets BLAS use MAX_THREADS, so a limit of 1 afterwards is the entry point's doing
REPORT = """
import contextlib, io, sys
import numpy  # loads the BLAS library
from threadpoolctl import threadpool_info, threadpool_limits
threadpool_limits(limits={max_threads}, user_api="blas")
{call}
print("BLAS", *sorted({{lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}}))
"""


def env_with(value=None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in (ENV_VAR, "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    if value is not None:
        env[ENV_VAR] = value
    return env


def blas_threads_after(call: str, value=None) -> list[int]:
    """BLAS thread counts a fresh interpreter reports after running `call`."""
    r = subprocess.run([sys.executable, "-c", REPORT.format(max_threads=MAX_THREADS, call=call)],
                       cwd=ROOT, env=env_with(value), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1].split()
    assert line[0] == "BLAS" and len(line) > 1, r.stdout
    return [int(n) for n in line[1:]]


CONFIGURE = "from hil.threads import configure_blas; configure_blas()"
CLI_INFO = ("from hil.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['info', '--json']) == 0")


def test_configure_blas_defaults_to_one_thread():
    assert blas_threads_after("pass") == [MAX_THREADS]          # the child's starting point
    assert blas_threads_after(CONFIGURE) == [1]


@pytest.mark.skipif(MAX_THREADS < 2, reason="one CPU: BLAS cannot run 2 threads here")
def test_environment_variable_sets_the_thread_count():
    assert blas_threads_after("from hil.threads import configure_blas; configure_blas(1)") == [1]
    assert blas_threads_after("import threadpoolctl; threadpoolctl.threadpool_limits(1, 'blas')\n"
                              + CONFIGURE, value="2") == [2]


def test_default_leaves_the_library_alone():
    assert blas_threads_after(CONFIGURE, value="default") == [MAX_THREADS]
    assert blas_threads_after(CONFIGURE, value=" Default ") == [MAX_THREADS]


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_value_is_one_line_config_error(monkeypatch, bad):
    monkeypatch.setenv(ENV_VAR, bad)
    with pytest.raises(ConfigError) as e:
        threads_from_env()
    msg = str(e.value)
    assert "\n" not in msg and ENV_VAR in msg and repr(bad) in msg


def test_cli_main_applies_it():
    assert blas_threads_after(CLI_INFO) == [1]
    if MAX_THREADS >= 2:
        assert blas_threads_after("import threadpoolctl; threadpoolctl.threadpool_limits(1, 'blas')\n"
                                  + CLI_INFO, value="2") == [2]


def test_cli_bad_value_exits_2_with_one_line():
    r = subprocess.run([sys.executable, "-m", "hil", "info"], cwd=ROOT, env=env_with("lots"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"hil: error: {ENV_VAR} must be a positive integer or \"default\", got 'lots'"


def test_open_station_applies_it():
    assert blas_threads_after("import hil; hil.open_station('sim', seed=0).close()") == [1]


def test_gui_main_applies_it(monkeypatch, capsys):
    from gui.app import main as gui_main
    monkeypatch.setenv(ENV_VAR, "none")
    assert gui_main(station="sim") == 2            # stops at the variable, before any window
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ENV_VAR in err


@pytest.mark.parametrize("args", [["info"], ["info", "--json"], ["--help"]])
def test_closed_stdout_exits_quietly(args):
    """stdout is a pipe whose reader has already gone (as after `| head -1` has its line): the
    first write fails with EPIPE; `hil` must stop without a traceback or "Broken pipe"."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "hil", *args], cwd=ROOT, env=env_with(),
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert r.returncode in (0, 141)
    assert r.stderr == ""


def test_head_reads_the_first_line_and_hil_exits_quietly():
    r = subprocess.run(f"set -o pipefail; '{sys.executable}' -m hil info | head -1", shell=True,
                       executable="/bin/bash", cwd=ROOT, env=env_with(), capture_output=True,
                       text=True, timeout=300)
    assert r.stdout.startswith("memristor-hil ") and r.stdout.count("\n") == 1
    assert r.stderr == "" and r.returncode in (0, 141)
