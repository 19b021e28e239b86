"""End-to-end tests of the `hil` command line on the simulated station (subprocesses), its entry
points, every command's help, and the registry entries that start the GUI and the emulators."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from hil import registry
from hil.cli import build_parser, main
from hil.errors import ConfigError
from hil.registry import resolve
from hil.runstore import RunRecord

ROOT = Path(__file__).resolve().parents[1]


def hil(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "hil", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"hil {args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def test_program_json_one_pe(tmp_path):
    out = tmp_path / "p.h5"
    r = hil("program", "--station", "sim", "--pe", "3", "--seed", "4", "--out", out, "--json")
    s = json.loads(r.stdout)
    assert s["cells"] == 2048
    assert s["in_band_fraction"] >= 0.99
    for key in ("write_errors", "mean_pulses", "max_pulses", "seconds"):
        assert key in s
    assert 3 < s["mean_pulses"] < 60
    with RunRecord.open(out) as rec:
        assert rec.status == "complete"
        cells = rec.table("programming/cells")
        assert np.unique(cells["cell"]).size == 2048
        assert rec.table("programming/pulses")["op"].size >= cells["pulses"].sum()
        assert rec.station["seed"] == 4


def test_sigkill_recover_resume(tmp_path):
    out = tmp_path / "k.h5"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "hil", "program", "--seed", "2", "--out", str(out), "--json"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = Path(str(out) + ".journal")
    while p.poll() is None:
        if journal.exists() and journal.stat().st_size > 3_000_000:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    assert p.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    r = hil("runs", "recover", out, "--json")
    rep = json.loads(r.stdout)
    finished_before = rep["tables"].get("programming/cells", 0)
    assert 0 < finished_before < 16384
    with RunRecord.open(out) as rec:
        assert rec.status == "recovered"
        before = rec.table("programming/cells")
    r = hil("program", "--resume", out, "--json")
    s = json.loads(r.stdout)
    assert s["cells"] == 16384 and s["not_finished"] == 0
    with RunRecord.open(out) as rec:
        assert rec.status == "complete"
        cells = rec.table("programming/cells")
    assert np.unique(cells["cell"]).size == 16384 == cells["cell"].size  # no cell redone
    np.testing.assert_array_equal(cells["final_g_s"][:before["cell"].size], before["final_g_s"])


@pytest.mark.parametrize("args, message", [
    (("program", "--station", "nowhere.toml"), "neither 'sim' nor an existing station file"),
    (("program", "--pe", "9"), "out of range"),
    (("read", "--params", "{bad}"), "cannot read parameter file"),
    (("runs", "show", "{missing}"), "no run record"),
    (("runs", "show", "{garbage}"), "not a readable HDF5 file"),
])
def test_bad_input_clear_error(tmp_path, args, message):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not hdf5" * 10)
    args = [a.format(bad=tmp_path / "none.toml", missing=tmp_path / "x.h5", garbage=garbage) for a in args]
    r = hil(*args, check=False)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_malformed_params_file(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[set]\nv_ref = 'high'\n")
    r = hil("read", "--pe", "0", "--params", bad, check=False)
    assert r.returncode == 2 and "set.v_ref" in r.stderr and "Traceback" not in r.stderr


def test_info_json():
    d = json.loads(hil("info", "--json").stdout)
    assert d["backends"]["sim"] is True
    assert d["params"]["adc"]["bits"] == 8


def test_read_json():
    d = json.loads(hil("read", "--pe", "1", "--json").stdout)
    assert d["cells"] == 2048 and d["pes"][0]["pe"] == 1
    assert 1.0 < d["pes"][0]["mean_us"] < 40.0


# ---- the package: entry points, every command's help, the registry entries ----------------------
COMMANDS = {"hil", "hil program", "hil read", "hil experiment", "hil experiment read-disturb",
            "hil experiment drift", "hil demo", "hil train", "hil transfer", "hil hybrid", "hil wang",
            "hil wang yield", "hil wang train", "hil wang evaluate", "hil wang demo", "hil station",
            "hil station check", "hil sim-station", "hil sim-station serve", "hil gui", "hil info", "hil runs",
            "hil runs show", "hil runs recover"}


def _commands(parser, path=("hil",)):
    yield " ".join(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))


def test_console_script_and_python_m_hil_run_the_same_main():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"] == {"hil": "hil.cli:main"}
    script = Path(sys.executable).with_name("hil")
    r = subprocess.run([str(script), "--help"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == hil("--help").stdout
    listed = r.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert r.stdout.startswith("usage: hil ") and listed == [c.split()[1] for c in _commands(build_parser())
                                                             if len(c.split()) == 2]
    assert {c.split()[1] for c in COMMANDS if len(c.split()) == 2} <= set(listed)


def test_every_command_has_its_help(capsys):
    commands = set(_commands(build_parser()))
    assert COMMANDS <= commands           # newer command families add to these
    for command in sorted(commands):
        with pytest.raises(SystemExit) as e:
            main([*command.split()[1:], "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and out.startswith(f"usage: {command} "), command


def test_registry_entries_name_the_gui_and_the_emulator():
    import gui.app
    import sim_backend.params
    import sim_backend.serve
    assert resolve("gui") is gui.app.main
    assert resolve("sim-station-server") is sim_backend.serve.serve_station
    assert resolve("sim-params") is sim_backend.params.DeviceParams
    with pytest.raises(ConfigError, match=r"unknown entry 'nope'; known: \[.*'gui'.*'sim-station-server'.*\]"):
        resolve("nope")


def test_hil_gui_starts_the_registered_entry(monkeypatch):
    seen = []
    monkeypatch.setattr("gui.app.main", lambda args: seen.append(args) or 7)
    assert main(["gui", "--seed", "3", "--geometry", "small"]) == 7
    assert len(seen) == 1 and seen[0].seed == 3 and seen[0].geometry == "small"


def test_hil_gui_without_the_gui_package_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(registry._ENTRIES, "gui", "no_such_gui_package.app:main")
    assert main(["gui"]) == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hil: error: entry 'gui' is not available in this installation") \
        and "no_such_gui_package" in line
