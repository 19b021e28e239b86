"""Retention and forming modules, and the plugin contract: real jobs on the simulated chip."""
from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from hil.errors import ConfigError
from hil.modules import plugins
from hil.modules.base import LabModule, parse_cells, run_module
from hil.modules.forming import ALREADY, FAILED, FORMED
from hil.runstore import RunRecord
from hil.runstore.lifecycle import run_record
from sim_backend.chip import SimulatedCrossbar
from sim_backend.params import DeviceParams, InitialParams

DAY = 86400.0


def _fresh_chip(seed=5):
    return SimulatedCrossbar(seed=seed, params=DeviceParams(initial=InitialParams(state="fresh")))


def test_retention_is_found_only_through_its_entry_point():
    assert "retention" not in plugins.BUILTIN
    eps = {ep.name: ep.value for ep in metadata.entry_points(group=plugins.GROUP)}
    assert eps["retention"] == "hil.modules.retention:Retention"
    found, broken = plugins.discover()
    assert {"pulse-train", "retention", "curve-tracer", "forming"} <= set(found) and not broken
    assert plugins.origin("retention") == "plugin" and isinstance(found["retention"], LabModule)


def test_plugin_loader_refuses_what_is_not_a_module():
    with pytest.raises(ConfigError, match="not a hil.modules.base.LabModule"):
        plugins._load("x", "hil.modules.base:parse_cells")
    with pytest.raises(ConfigError, match="calls itself 'forming'"):
        plugins._load("x", "hil.modules.forming:Forming")
    with pytest.raises(ConfigError, match="unknown lab module 'nope'; known: "):
        plugins.get_module("nope")


def test_retention_drifts_on_the_virtual_clock(tmp_path):
    xbar = SimulatedCrossbar(seed=2)
    cells = parse_cells("1:0-7:0-3", xbar.geometry)
    xbar.pulse(cells, "SET", 2.0, 1.6, 100e-9)               # fresh programming: relaxation and drift follow
    module = plugins.get_module("retention")
    cfg = module.config({"interval_s": 10.0, "duration_s": DAY, "schedule": "log", "points_per_decade": 2})
    t0 = xbar.now()
    with run_record(tmp_path / "ret.h5", "module") as writer:
        res = run_module(module, xbar, writer, cfg, cells)
    assert xbar.now() - t0 == pytest.approx(DAY, rel=1e-3)     # a day passed on the virtual clock
    assert res.t_s[0] == pytest.approx(0.0, abs=1e-3) and res.t_s[-1] == pytest.approx(DAY, rel=1e-3)
    assert np.all(np.diff(res.t_s) > 0) and res.virtual_clock
    change = np.abs(res.g_s[-1] - res.g_s[0])
    assert np.median(change) > 0.2e-6                        # the states moved over the day ...
    assert np.median(change / res.g_s[0]) < 0.3             # ... without losing the state
    rec = RunRecord.open(tmp_path / "ret.h5")
    assert rec.table_rows("modules/retention/series") == res.t_s.size * len(cells)


def test_retention_refuses_an_interval_longer_than_the_run():
    module = plugins.get_module("retention")
    with pytest.raises(ConfigError, match="interval_s 100 s exceeds duration_s 10 s"):
        module.check(None, None, module.config({"interval_s": 100, "duration_s": 10}))


def test_forming_forms_fresh_cells_and_skips_formed_ones(tmp_path):
    xbar = _fresh_chip()
    cells = parse_cells("0:0-7:0-3", xbar.geometry)
    module = plugins.get_module("forming")
    cfg = module.config({"v_start": 2.0, "v_stop": 4.0, "v_step": 0.1})
    with run_record(tmp_path / "form.h5", "module") as writer:
        first = run_module(module, xbar, writer, cfg, cells, group="form1")
        again = run_module(module, xbar, writer, cfg, cells, group="form2")
    assert np.all(first.g_initial_s < cfg.g_formed_s)        # the chip was fresh
    assert np.all(first.status == FORMED) and np.all(first.g_final_s >= cfg.g_formed_s)
    v = first.v_form
    assert 2.3 < np.median(v) < 3.3 and np.std(v) > 0      # spread around the model's ~3 V forming voltage
    assert np.all(again.status == ALREADY)                    # formed cells get no more pulses
    d = first.to_dict()
    assert d["formed"] == 32 and d["failed"] == 0 and sum(d["v_form_histogram"]["cells"]) == 32


def test_forming_reports_cells_that_do_not_form(tmp_path):
    xbar = _fresh_chip()
    module = plugins.get_module("forming")
    cfg = module.config({"v_start": 1.0, "v_stop": 1.5})      # far below the forming voltage
    with run_record(tmp_path / "f.h5", "module") as writer:
        res = run_module(module, xbar, writer, cfg, parse_cells("0:0:0-3", xbar.geometry))
    assert np.all(res.status == FAILED) and np.all(np.isnan(res.v_form))
