"""Pulse train / endurance module: a real job on the simulated chip at small size."""
from __future__ import annotations

import numpy as np
import pytest

from hil.errors import ConfigError, SafetyViolation
from hil.limits import SafetyLimits
from hil.modules.base import ModuleProgress, parse_cells, run_module
from hil.modules.plugins import get_module
from hil.modules.pulse_train import read_cycles
from hil.runstore import RunRecord
from hil.runstore.lifecycle import run_record
from sim_backend.chip import SimulatedCrossbar


def _run(tmp_path, settings, spec="0:0-3:0-1"):
    xbar = SimulatedCrossbar(seed=3)
    module = get_module("pulse-train")
    seen = []
    with run_record(tmp_path / "run.h5", "module") as writer:
        res = run_module(module, xbar, writer, module.config(settings), parse_cells(spec, xbar.geometry),
                         progress=seen.append)
    return res, seen, RunRecord.open(tmp_path / "run.h5")


def test_endurance_alternates_between_set_and_reset_states(tmp_path):
    res, seen, rec = _run(tmp_path, {"cycles": 50, "read_every": 10})
    on, off = res.g_s[res.v > 0], res.g_s[res.v < 0]
    assert on.shape == off.shape == (6, 8)              # cycles 1, 10, 20, ..., 50
    assert np.all(on > 5 * off)                         # every read pair of every cell switched
    assert np.median(on) > 10e-6 and np.median(off) < 2e-6
    d = res.to_dict()
    assert d["switching_fraction"] == 1.0 and d["pulses"] == 100
    # live data: each report carries the rows appended to the record table
    live = [p for p in seen if isinstance(p, ModuleProgress) and p.series == "series"]
    assert len(live) == 12 and live[-1].done == live[-1].total == 12
    table = rec.table("modules/pulse-train/series")
    assert np.array_equal(table["g_s"], np.concatenate([p.data["g_s"] for p in live]))
    assert rec.group_attrs("modules/pulse-train")["stage_config"]["cycles"] == 50


def test_log_read_schedule_for_long_runs():
    module = get_module("pulse-train")
    cyc = read_cycles(module.config({"cycles": 100_000, "read_schedule": "log", "reads_per_decade": 5}))
    assert cyc[0] == 1 and cyc[-1] == 100_000 and len(cyc) <= 26
    assert np.all(np.diff(np.log10(cyc[1:])) < 0.25)      # roughly even in log spacing


def test_ramp_raises_conductance_with_amplitude(tmp_path):
    res, _, _ = _run(tmp_path, {"mode": "ramp", "ramp_op": "RESET", "ramp_start_v": 0.6, "ramp_stop_v": 2.0,
                                "ramp_step_v": 0.2})
    assert np.allclose(-res.v, np.arange(0.6, 2.01, 0.2))
    g = res.g_s.mean(axis=1)
    assert g[-1] < 0.5 * g[0]                            # the RESET ramp lowered the cells


def test_bad_config_and_limits_are_refused_before_anything():
    module = get_module("pulse-train")
    with pytest.raises(ConfigError, match="cycles"):
        module.config({"cycles": 0})
    with pytest.raises(ConfigError, match="unknown PulseTrainConfig setting"):
        module.config({"cycels": 10})
    xbar = SimulatedCrossbar(seed=0)
    with pytest.raises(SafetyViolation, match="SET rejected"):
        module.check(SafetyLimits(), xbar.geometry, module.config({"v_set": 5.0}))
