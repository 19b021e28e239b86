"""The Python API: `import hil` (light, lazy, documented), `hil.open_station`, the recorded
`hil.Session` (every operation in the record, crash-safe), the README's API quick start and the
`examples/` scripts, run as a user would; and the hardware opt-in of tests/conftest.py."""
from __future__ import annotations

import os
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hil
from hil.limits import OP_CODES
from hil.programming import IN_BAND
from hil.runstore import RunRecord, read_content

ROOT = Path(__file__).resolve().parents[1]
HIL = str(Path(sys.executable).with_name("hil"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(args, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600, **kw)


def content(path):
    """(root attrs, RunContent) of a finished or recovered record."""
    with RunRecord.open(path) as rec:
        return {"kind": rec.kind, "status": rec.status}, rec.content()


# ---- import hil ------------------------------------------------------------------------------
def test_import_hil_is_light_and_loads_each_name_on_first_use():
    code = ("import sys, hil; heavy = ('h5py', 'matplotlib', 'PySide6', 'scipy', 'hil.session', 'hil.registry');"
            "print(sorted(m for m in heavy if m in sys.modules)); hil.Cells; print('h5py' in sys.modules);"
            "hil.Session; print('h5py' in sys.modules)")
    r = run(["-c", code], ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["[]", "False", "True"]


def test_every_public_name_resolves_to_its_defining_object():
    from hil import crossbar, errors, geometry, limits, programming, session
    from hil.ops import write_verify
    expected = {"Cells": geometry.Cells, "Geometry": geometry.Geometry, "Op": limits.Op,
                "Crossbar": crossbar.Crossbar, "VmmResult": crossbar.VmmResult,
                "write_verify": write_verify.write_verify, "WriteVerifyPolicy": programming.WriteVerifyPolicy,
                "ProgramReport": programming.ProgramReport, "Session": session.Session,
                "HilError": errors.HilError, "ConfigError": errors.ConfigError,
                "SafetyViolation": errors.SafetyViolation, "AddressError": errors.AddressError,
                "BackendError": errors.BackendError, "InstrumentTimeout": errors.InstrumentTimeout,
                "DataError": errors.DataError, "Cancelled": errors.Cancelled}
    assert set(hil.__all__) == {"__version__", "open_station", *expected}
    for name, obj in expected.items():
        assert getattr(hil, name) is obj and name in dir(hil)
    assert isinstance(hil.__version__, str)
    with pytest.raises(AttributeError, match="'hil' has no attribute 'Sesion'"):
        hil.Sesion


def test_help_is_a_short_guide_and_public_docstrings_say_units():
    guide = hil.__doc__
    assert len(guide.splitlines()) < 40
    for name in ("open_station", "Session", "Cells", "write_verify", "hil runs recover", "S, V, s, A"):
        assert name in guide
    assert "open_station" in pydoc.render_doc(hil, renderer=pydoc.plaintext)
    units = {hil.open_station: ["TOML file", "seed"], hil.write_verify: ["siemens"],
             hil.Session.read: ["(S)", "(V"], hil.Session.pulse: ["(V", "(s)"], hil.Session.vmm: ["in A"],
             hil.Session.write_verify: ["(S;"]}
    for fn, words in units.items():
        for w in words:
            assert w in fn.__doc__, (fn.__qualname__, w)


# ---- open_station -------------------------------------------------------------------------------
def test_open_station_options_seed_geometry_and_params(tmp_path):
    cells = hil.Cells.block(0, rows=[0, 1], cols=[0, 1, 2])
    reads = {}
    for seed, run_ in ((4, 0), (4, 1), (5, 0)):
        with hil.open_station("sim", seed=seed, geometry="wang") as xbar:
            assert xbar.geometry == hil.Geometry(1, 128, 64, "wang")
            reads[seed, run_] = xbar.read(cells)
    np.testing.assert_array_equal(reads[4, 0], reads[4, 1])
    assert not np.array_equal(reads[4, 0], reads[5, 0])
    good = tmp_path / "quiet.toml"
    good.write_text("[read_noise]\nrel = 0.0\nabs_us = 0.0\n")
    with hil.open_station("sim", seed=4, geometry="wang", params=good) as xbar:
        assert (xbar.params.read_noise.rel, xbar.params.read_noise.abs_us) == (0.0, 0.0)
    with hil.open_station("sim") as xbar:
        assert xbar.params.read_noise.rel > 0
    bad = tmp_path / "params.toml"
    bad.write_text("[read_noise]\nrel = -1\n")
    with pytest.raises(hil.ConfigError, match="params.toml") as e:
        hil.open_station("sim", params=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(hil.ConfigError, match="nope.toml"):
        hil.open_station("nope.toml")
    with pytest.raises(hil.ConfigError, match="geometry"):
        hil.open_station("sim", geometry="huge")


# ---- Session ------------------------------------------------------------------------------------
def test_session_records_every_read_pulse_vmm_and_write_verify(small_station, runs_dir):
    xbar = small_station
    cells = hil.Cells.block(1, rows=[2, 3], cols=[0, 1, 2])
    targets = np.linspace(5e-6, 15e-6, len(cells))
    x = np.array([[3, 250], [0, 17], [255, 255]])
    with hil.Session(xbar, runs_dir / "s.h5", label="bench 3", meta={"operator": "ada"}) as s:
        rep = s.write_verify(cells, targets, 0.5e-6)
        g = s.read(cells, n_avg=2)
        s.pulse(cells[:2], "SET", v=1.6, v_gate=[1.0, 1.2], width_s=50e-9)
        r = s.vmm(1, x, rows=[2, 3], cols=[0, 2], adc_full_scale_a=20e-6)
        s.put("notes", np.arange(3.0), unit="none")
        s.mark("done", step=1)
    root, c = content(runs_dir / "s.h5")
    assert root == {"kind": "session", "status": "complete"}
    assert c.station["client"] == "api" and c.station["label"] == "bench 3"
    assert c.attrs["/"]["operator"] == "ada"
    ops = c.tables["session/ops"]
    np.testing.assert_array_equal(ops["op"], [OP_CODES[hil.Op.READ]] * 6 + [OP_CODES[hil.Op.SET]] * 2)
    np.testing.assert_array_equal(ops["g_s"][:6], g)
    assert np.isnan(ops["g_s"][6:]).all()
    np.testing.assert_array_equal(ops["v_gate"][6:], [1.0, 1.2])
    np.testing.assert_array_equal(np.c_[ops["pe"], ops["row"], ops["col"]][:6], np.c_[cells.pe, cells.row, cells.col])
    # write-verify: plan, every pulse and verify read, the outcome per cell
    wv = "session/write_verify/1"
    flat = cells.flat(xbar.geometry)
    np.testing.assert_array_equal(c.datasets[f"{wv}/targets"][0][2], targets)
    done = c.tables[f"{wv}/cells"]
    order = np.argsort(done["cell"])
    np.testing.assert_array_equal(done["cell"][order], np.sort(flat))
    pos = np.searchsorted(flat, done["cell"])
    np.testing.assert_array_equal(done["final_g_s"], rep.final_s[pos])
    np.testing.assert_array_equal(done["status"], rep.status[pos])
    pulses_per_cell = np.bincount(np.searchsorted(flat, c.tables[f"{wv}/pulses"]["cell"]), minlength=len(cells))
    np.testing.assert_array_equal(pulses_per_cell, rep.pulses)
    assert c.attrs["/" + wv]["summary"]["in_band_fraction"] == rep.in_band.mean() > 0.8
    # VMM: inputs and codes
    np.testing.assert_array_equal(c.datasets["session/vmm/1/inputs"][0], x)
    codes, attrs = c.datasets["session/vmm/1/codes"]
    np.testing.assert_array_equal(codes, r.codes)
    assert attrs["pe"] == 1 and attrs["rows"] == [2, 3] and attrs["cols"] == [0, 2] and attrs["lsb_a"] == r.lsb_a
    assert c.datasets["session/data/notes"][1] == {"unit": "none"}
    assert [m["event"] for m in c.marks] == ["done"]


def test_session_refuses_bad_input_before_recording_anything(small_station, runs_dir):
    with pytest.raises(TypeError, match="Session needs a Crossbar, got str"):
        hil.Session("sim", runs_dir / "x.h5")
    (runs_dir / "taken.h5").write_bytes(b"")
    with pytest.raises(hil.DataError, match="taken.h5 exists"):
        hil.Session(small_station, runs_dir / "taken.h5")
    cells = hil.Cells.block(0, rows=[0], cols=[0, 1])
    with hil.Session(small_station, runs_dir / "s.h5") as s:
        with pytest.raises(hil.ConfigError, match="targets"):
            s.write_verify(cells, [5e-6, 6e-6, 7e-6], 0.5e-6)
        with pytest.raises(hil.SafetyViolation):
            s.pulse(cells, "SET", v=50.0, v_gate=1.0, width_s=50e-9)
        s.write_verify(cells, 8e-6, 0.5e-6)
    _, c = content(runs_dir / "s.h5")
    assert "session/ops" not in c.tables                       # the refused pulse left no row
    assert {n.split("/")[2] for n in c.tables if n.startswith("session/write_verify/")} == {"1"}
    np.testing.assert_array_equal(c.datasets["session/write_verify/1/targets"][0][2], [8e-6, 8e-6])


@pytest.mark.parametrize("exc, status", [(RuntimeError, "failed"), (KeyboardInterrupt, "stopped"),
                                         (hil.Cancelled, "stopped")])
def test_session_status_after_an_error_or_a_stop(small_station, runs_dir, exc, status):
    cells = hil.Cells.block(0, rows=[0], cols=[0])
    with pytest.raises(exc):
        with hil.Session(small_station, runs_dir / "s.h5") as s:
            s.read(cells)
            raise exc("stop")
    root, c = content(runs_dir / "s.h5")
    assert root["status"] == status and c.table_rows("session/ops") == 1


def test_a_killed_session_script_is_recovered_with_everything_it_did(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, numpy as np, hil\n"
        "cells = hil.Cells.block(0, rows=[0, 1], cols=[0, 1])\n"
        "with hil.open_station('sim', seed=2) as xbar:\n"
        "    s = hil.Session(xbar, 'runs/killed.h5')\n"
        "    s.write_verify(cells, 9e-6, 0.5e-6)\n"
        "    for k in range(3):\n"
        "        s.pulse(cells, 'RESET', v=1.2, v_gate=4.0, width_s=50e-9)\n"
        "        print(*s.read(cells), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = run([str(script)], tmp_path)
    assert r.returncode == -9
    printed = np.array([line.split() for line in r.stdout.splitlines()], float).ravel()
    rec = tmp_path / "runs" / "killed.h5"
    assert not rec.exists() and Path(str(rec) + ".journal").exists()
    rc = subprocess.run([HIL, "runs", "recover", str(rec)], capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr
    root, c = content(rec)
    assert root == {"kind": "session", "status": "recovered"}
    ops = c.tables["session/ops"]
    reads = ops["op"] == OP_CODES[hil.Op.READ]
    np.testing.assert_array_equal(ops["g_s"][reads], printed)
    assert np.count_nonzero(ops["op"] == OP_CODES[hil.Op.RESET]) == 12
    assert c.table_rows("session/write_verify/1/cells") == 4


# ---- README and examples ------------------------------------------------------------------------
def readme_quick_start() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"API quick start.*?```python\n(.*?)```", text, re.S)
    assert m, "README.md has no ```python block after 'API quick start'"
    return m.group(1)


def test_readme_api_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    code = readme_quick_start()
    assert 15 <= len(code.splitlines()) <= 25
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__main__"}
    exec(compile(code, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "in band: [ True  True  True  True]" in out
    report, g_s, x, r = ns["report"], ns["g_s"], ns["x"], ns["r"]
    np.testing.assert_allclose(g_s.ravel(), ns["targets_s"].ravel(), atol=0.6e-6)
    ideal = r.v_read * x @ g_s
    assert np.all(np.abs(r.currents - ideal) <= r.quantization_bound_a + 0.01 * ideal)
    root, c = content(tmp_path / "runs" / "quickstart.h5")
    assert root == {"kind": "session", "status": "complete"}
    assert c.table_rows("session/ops") == 4 + 1 + 1 and c.table_rows("session/write_verify/1/cells") == 4
    assert c.datasets["session/vmm/1/codes"][0].shape == (2, 2)


def example(name: str, tmp_path, *args) -> str:
    r = run([str(ROOT / "examples" / name), *args], tmp_path)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_example_program_block(tmp_path):
    out = example("program_block.py", tmp_path, "--out", "block.h5")
    m = re.search(r"in band at the last verify: (\d+)%, on read-back: (\d+)%; mean pulses ([\d.]+)", out)
    assert m and int(m[1]) >= 90 and int(m[2]) >= 75 and float(m[3]) > 1
    root, c = content(tmp_path / "block.h5")
    assert root == {"kind": "session", "status": "complete"}
    cells = c.tables["session/write_verify/1/cells"]
    assert cells["cell"].size == 16 and round(100 * np.mean(cells["status"] == IN_BAND)) == int(m[1])
    np.testing.assert_allclose(c.datasets["session/write_verify/1/targets"][0][2], np.linspace(4e-6, 19e-6, 16))


def test_example_pulse_train(tmp_path):
    out = example("pulse_train.py", tmp_path, "--cycles", "3", "--out", "train.h5", "--plot", "train.png")
    m = re.search(r"after SET: ([\d.]+) µS, after RESET: ([\d.]+) µS \(mean over 3 cycles and 4 cells\)", out)
    assert m and float(m[1]) > float(m[2]) > 0
    assert (tmp_path / "train.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    _, c = content(tmp_path / "train.h5")
    ops = c.tables["session/ops"]
    per_step = [OP_CODES[hil.Op.SET], OP_CODES[hil.Op.READ], OP_CODES[hil.Op.RESET], OP_CODES[hil.Op.READ]]
    np.testing.assert_array_equal(ops["op"], np.repeat(per_step * 3, 4))
    after_set = ops["g_s"].reshape(12, 4)[1::4]
    assert float(m[1]) == pytest.approx(after_set.mean() * 1e6, abs=0.006)


def test_example_vmm_vs_ideal(tmp_path):
    out = example("vmm_vs_ideal.py", tmp_path, "--batch", "4", "--out", "vmm.h5")
    m = re.search(r"on 128x16: median \|error\| ([\d.]+)% .* (\d+) saturated", out)
    assert m and float(m[1]) < 1.0 and m[2] == "0"
    _, c = content(tmp_path / "vmm.h5")
    assert c.datasets["session/vmm/1/inputs"][0].shape == (4, 128)
    assert c.datasets["session/vmm/1/codes"][0].shape == (4, 16)
    assert c.table_rows("session/write_verify/1/cells") == 128 * 16


# ---- hardware opt-in (tests/conftest.py) -------------------------------------------------------------
@pytest.mark.hardware
def test_station_connects_identifies_and_reads_within_limits(station_file):
    """Against a named station: `pytest -m hardware --station stations/sim-instruments.toml` (the
    emulated instruments) or your probe station's file. Reads four cells at 0.2 V only."""
    with hil.open_station(station_file) as xbar:
        desc = xbar.describe()
        assert desc["geometry"] == xbar.geometry.to_dict() and desc["backend"]
        cells = hil.Cells.block(0, rows=[0, 1], cols=[0, 1])
        g = xbar.read(cells, v_read=0.2)
    read = xbar.limits.per_op[hil.Op.READ]
    assert g.shape == (4,) and np.isfinite(g).all()
    assert np.all((g >= 0) & (g * 0.2 <= read.max_compliance_a))


def test_hardware_tests_run_only_with_a_station_file(tmp_path):
    args = ["-m", "pytest", "-p", "no:cacheprovider", str(Path(__file__)), "-m", "hardware", "-rs"]
    skipped = run(args, ROOT)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout and "needs a station" in skipped.stdout
    missing = run([*args, "--station", str(tmp_path / "none.toml")], ROOT)
    assert missing.returncode != 0 and "none.toml: no such station file" in missing.stderr
    ran = run([*args, "--station", str(ROOT / "stations" / "sim-yao.toml")], ROOT)
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout
