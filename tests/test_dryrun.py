"""Dry run: the real station's limits, a shadow chip's answers, nothing applied to hardware."""
import numpy as np
import pytest

from hil.ops.dryrun import DryRunCrossbar, open_dry_run
from hil.errors import SafetyViolation
from hil.geometry import Cells
from hil.levels import LevelTable, make_pattern
from hil.programming import WriteVerifyPolicy
from hil.ops.write_verify import write_verify


def station_file(tmp_path, gate_max):
    p = tmp_path / "station.toml"
    p.write_text(f'[station]\nbackend = "sim"\n[geometry]\npreset = "wang"\n[limits.SET]\nmax_v_gate = {gate_max}\n')
    return p


def test_dry_run_uses_station_limits_and_tallies(tmp_path):
    xbar = open_dry_run(str(station_file(tmp_path, 2.5)))
    assert isinstance(xbar, DryRunCrossbar)
    assert xbar.geometry.shape == (1, 128, 64)
    assert xbar.limits["SET"].max_v_gate == 2.5
    cells = Cells.block(0, range(8), None, xbar.geometry)
    _, targets = make_pattern("levels", len(cells), LevelTable.linear())
    r = write_verify(xbar, cells, targets, LevelTable.linear().tolerance_s)
    rep = xbar.report()
    assert rep["pulses"]["SET"]["pulses"] + rep["pulses"]["RESET"]["pulses"] == r.pulses.sum() - rep["pulses"].get("FORM", {}).get("pulses", 0)
    assert rep["pulses"]["SET"]["max_v_gate"] <= 2.5
    assert rep["reads"] > 0


def test_dry_run_refuses_what_the_station_would_refuse(tmp_path):
    xbar = open_dry_run(str(station_file(tmp_path, 1.5)))
    cells = Cells.block(0, [0], [0, 1], xbar.geometry)
    before = xbar.shadow.counters["pulses"]
    with pytest.raises(SafetyViolation, match="gate voltage 2.2"):
        xbar.pulse(cells, "SET", 1.6, 2.2, 50e-9)
    assert xbar.shadow.counters["pulses"] == before
    with pytest.raises(SafetyViolation, match="set_gate_max"):
        write_verify(xbar, cells, [5e-6, 6e-6], 0.2e-6, WriteVerifyPolicy())
    assert xbar.report()["pulses"] == {}
