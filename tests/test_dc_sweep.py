"""DC sweep capability (Crossbar.dc_sweep) on the simulated chip, its limits, and the curve tracer."""
from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from hil.errors import BackendError, ConfigError, SafetyViolation
from hil.geometry import Cells
from hil.modules.base import parse_cells, run_module
from hil.modules.curve_tracer import switching_voltages
from hil.modules.plugins import get_module
from hil.ops.iv import sweep_voltages
from hil.runstore import RunRecord
from hil.runstore.lifecycle import run_record
from sim_backend import iv_physics
from sim_backend.chip import SimulatedCrossbar
from sim_backend.params import DeviceParams, IVParams

CELLS = Cells.block(0, range(2), range(2))


def test_dc_sweep_is_nonlinear_and_switches():
    x = SimulatedCrossbar(seed=4)
    v = sweep_voltages(1.5, 1.5, 0.05)
    gate = np.where(v >= 0, 1.6, 5.0)
    x.dc_sweep(CELLS, v, v_gate=gate, compliance_a=100e-6)         # first cycle: leave every cell in HRS
    res = x.dc_sweep(CELLS, v, v_gate=gate, compliance_a=100e-6)
    top = int(np.argmax(v))
    k_up, k_down = 6, 2 * top - 6                                  # +0.3 V on the way up and on the way down
    assert v[k_up] == v[k_down] == pytest.approx(0.3)
    assert np.all(res.i_a[k_down] > 10 * res.i_a[k_up])           # hysteresis: LRS after SET, HRS before
    assert np.all(np.abs(res.i_a[-1]) < 1e-9) and np.all(np.abs(res.i_a[0]) < 1e-9)   # the loop ends at 0 V, 0 A
    # not I = G·V: on the LRS branch V/I falls as |V| rises (cubic conduction term)
    g_lo = res.i_a[2 * top - 2] / v[2 * top - 2]                   # 0.1 V
    g_hi = res.i_a[2 * top - 12] / v[2 * top - 12]                 # 0.6 V
    assert np.all(g_hi > 1.05 * g_lo)
    # the transistor's gate-limited compliance caps the SET current well below the SMU compliance
    assert np.all(res.i_a[top] < 30e-6)
    assert res.i_a.shape == (v.size, 4) and x.now() > 0


def test_iv_parameters_are_part_of_the_documented_device_parameter_set(tmp_path):
    """The DC I–V model's parameters are the `iv` section of DeviceParams: each documented with a
    source tag, saved and loaded, listed, range-checked, and the ones the sweep uses."""
    p = DeviceParams()
    for f in fields(IVParams):
        assert "[est]" in f.metadata["doc"] or "§" in f.metadata["doc"], f.name
    assert "[iv]" in p.describe() and "v_set_per_ln_strength" in p.describe()
    q = replace(p, iv=replace(p.iv, v_set=1.2))
    assert DeviceParams.load(q.save(tmp_path / "p.toml")).iv.v_set == 1.2
    with pytest.raises(ConfigError, match=r"iv\.beta_per_v2"):
        DeviceParams.from_dict({"iv": {"beta_per_v2": -1.0}})
    idx = CELLS.flat(SimulatedCrossbar().geometry)
    v0 = iv_physics.set_voltage(SimulatedCrossbar(seed=4).device, idx)
    x = SimulatedCrossbar(params=q, seed=4)
    assert np.allclose(iv_physics.set_voltage(x.device, idx), v0 + 0.3)
    # a sweep to 1.1 V sets the default cells (threshold about 0.9 V) but none of these
    v = np.array([0.0, 0.5, 1.1, 0.5, 0.3, 0.0])
    for xb, sets in ((SimulatedCrossbar(seed=4), True), (x, False)):
        xb.dc_sweep(CELLS, [0.0, -1.5, 0.0], v_gate=5.0, compliance_a=100e-6)      # HRS first
        i = xb.dc_sweep(CELLS, v, v_gate=1.6, compliance_a=100e-6).i_a
        ratio = (i[4] / 0.3) / (i[1] / 0.5)                     # G after the 1.1 V point over G before
        assert np.all(ratio > 10) if sets else np.all(ratio < 2)


def test_dc_sweep_checks_every_point_before_anything():
    x = SimulatedCrossbar(seed=4)
    before, t = x.true_conductance().copy(), x.now()
    v = np.array([0.0, 0.5, 3.2, 0.0])
    with pytest.raises(SafetyViolation, match="SET rejected: .*3.2 V.*sweep point 2"):
        x.dc_sweep(CELLS, v, v_gate=1.5, compliance_a=100e-6)
    with pytest.raises(SafetyViolation, match="RESET rejected: gate voltage 6"):
        x.dc_sweep(CELLS, [0.0, -0.5], v_gate=6.0, compliance_a=100e-6)
    with pytest.raises(SafetyViolation, match="compliance"):
        x.dc_sweep(CELLS, [0.5], v_gate=1.5, compliance_a=1e-2)
    with pytest.raises(SafetyViolation, match="width"):
        x.dc_sweep(CELLS, [0.5], v_gate=1.5, compliance_a=1e-4, dwell_s=0.5)
    with pytest.raises(SafetyViolation, match="not a finite"):
        x.dc_sweep(CELLS, [0.5, np.nan], v_gate=1.5, compliance_a=1e-4)
    with pytest.raises(ValueError, match="terminal"):
        x.dc_sweep(CELLS, [0.5], v_gate=1.5, compliance_a=1e-4, terminal="WL")
    # on the SL a positive level is the RESET polarity: a SET-only gate of 5 V passes, 6 V does not
    with pytest.raises(SafetyViolation, match="RESET rejected"):
        x.dc_sweep(CELLS, [3.5], v_gate=5.0, compliance_a=1e-4, terminal="SL")
    assert np.array_equal(before, x.true_conductance()) and x.now() == t


def test_curve_tracer_loop_closes_and_sets_at_the_model_threshold(tmp_path):
    x = SimulatedCrossbar(seed=6)
    cells = parse_cells("2:0-3:0-1", x.geometry)
    module = get_module("curve-tracer")
    cfg = module.config({"cycles": 3, "v_step": 0.05})
    with run_record(tmp_path / "iv.h5", "module") as writer:
        res = run_module(module, x, writer, cfg, cells)
    # cycles 2 and 3 start from the HRS the previous RESET left: SET seen in every cell, at the
    # model's SET voltage (the first sweep point at or above it)
    v_model = iv_physics.set_voltage(x.device, cells.flat(x.geometry))
    for c in (1, 2):
        assert np.all(res.v_set[c] >= v_model - 1e-9) and np.all(res.v_set[c] < v_model + cfg.v_step + 1e-9)
        assert np.all(res.v_reset[c] < -0.7) and np.all(res.v_reset[c] > -1.5)
    # the loop closes: cycle 3 retraces cycle 2 (same HRS and LRS currents at +0.3 V)
    k = [int(i) for i in np.flatnonzero(np.isclose(res.v, 0.3))]
    for kk in k:
        assert np.allclose(res.i_a[2, kk], res.i_a[1, kk], rtol=0.35)
    d = res.to_dict()
    assert d["r_off_median_ohm"] > 10 * d["r_on_median_ohm"]
    rec = RunRecord.open(tmp_path / "iv.h5")
    assert rec.table_rows("modules/curve-tracer/series") == 3 * res.v.size * len(cells)
    assert rec.dataset("modules/curve-tracer/result/i_a")[0].shape == res.i_a.shape


def test_switching_voltages_of_a_gradual_set():
    """Pulsed mode: G rising a little per pulse has no 2x jump between points, yet its SET voltage
    is where G has covered half its rise; a cell that barely changes or starts high has none."""
    v = np.array([0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 1.0, 0.0, -0.4, -0.8, -1.2, -1.6, -2.0, -1.0, 0.0])
    g_us = np.array([[0, 1.0, 1.2, 1.6, 1.5, 1.6, 1.6, 0, 1.6, 1.5, 1.6, 1.4, 1.4, 1.5, 0],      # no switching
                     [0, 1.0, 1.8, 3.2, 5.6, 9.5, 9.5, 0, 9.5, 8.0, 6.0, 4.5, 3.0, 3.0, 0],      # gradual SET, RESET
                     [0, 20., 21., 22., 21., 21., 21., 0, 21., 21., 21., 21., 21., 21., 0]]).T  # stays high
    i_a = g_us * 1e-6 * v[:, None]
    v_set, v_reset = switching_voltages(v, i_a, gradual=True)
    assert np.array_equal(v_set, [np.nan, 1.6, np.nan], equal_nan=True)     # 5.6 µS ≥ 1 + (9.5 − 1) / 2
    assert np.array_equal(v_reset, [np.nan, -1.2, np.nan], equal_nan=True)  # 6.0 µS ≤ 9.5 − (9.5 − 3) / 2
    dc_set, dc_reset = switching_voltages(v, i_a)                   # the abrupt criterion sees no 2x step
    assert np.isnan(dc_set).all() and np.isnan(dc_reset).all()


def test_curve_tracer_pulsed_mode_and_refusals(tmp_path):
    x = SimulatedCrossbar(seed=6)
    module = get_module("curve-tracer")
    cfg = module.config({"mode": "pulsed", "cycles": 2, "v_step": 0.1, "v_set_max": 2.0, "v_reset_max": 2.0})
    with run_record(tmp_path / "p.h5", "module") as writer:
        res = run_module(module, x, writer, cfg, parse_cells("0:0-1:0-1", x.geometry))
    assert np.all(np.isfinite(res.v_reset))                        # the RESET half lowers G
    assert np.allclose(res.i_a[:, res.v == 0], 0.0)
    # cycle 2 starts in the HRS the first RESET left: the gradual pulsed SET is found in every cell,
    # at the first amplitude where the read G has covered half its rise on the way up
    top = int(np.argmax(res.v))
    g = res.i_a[1, 1:top + 1] / res.v[1:top + 1, None]
    half = g[0] + 0.5 * (g.max(axis=0) - g[0])
    for i, vs in enumerate(res.v_set[1]):
        k = int(np.flatnonzero(np.isclose(res.v[1:top + 1], vs))[0])
        assert g[k, i] >= half[i] > g[:k, i].max() and 1.0 < vs < 2.0
    assert res.to_dict()["set_seen_fraction"] >= 0.5
    with pytest.raises(SafetyViolation, match="SET rejected"):
        module.check(x.limits, x.geometry, module.config({"v_set_max": 3.5}))
    with pytest.raises(ConfigError, match="too fine"):
        module.check(x.limits, x.geometry, module.config({"v_step": 1e-5}))


def test_a_backend_without_the_capability_refuses_dc_sweep():
    class NoSweep(SimulatedCrossbar):
        capabilities = frozenset({"advance"})
    with pytest.raises(BackendError, match="no 'dc_sweep' capability"):
        NoSweep(seed=0).dc_sweep(CELLS, [0.1], v_gate=1.0, compliance_a=1e-4)


def test_dc_sweep_through_the_emulated_smu_station():
    """The driver path: per cell, routed on the bus, compliance before output on, a level and a
    measurement per point, the output off after (at read levels the emulated SMU measures the cell
    ohmically; above 0.3 V the switching I–V physics applies)."""
    from pathlib import Path
    from hil.registry import open_station
    station = Path(__file__).resolve().parents[1] / "stations" / "sim-instruments.toml"
    with open_station(str(station)) as x:
        assert x.has("dc_sweep")
        cells = Cells.block(0, 0, range(2))
        g = x.read_smu(cells)
        v = np.array([0.0, 0.1, 0.2, -0.1, 0.0])
        res = x.dc_sweep(cells, v, v_gate=np.where(v >= 0, 1.6, 5.0), compliance_a=1e-4, dwell_s=1e-5)
        assert np.allclose(res.i_a, v[:, None] * g[None, :], rtol=0.05, atol=2e-9)
        assert (x.spec.smu_of("bl").instrument, x.spec.smu_of("bl").channel) not in x._armed
        with pytest.raises(SafetyViolation, match="SET rejected"):
            x.dc_sweep(cells, [3.5], v_gate=1.0, compliance_a=1e-4)


def test_the_emulated_smu_station_traces_a_hysteresis_loop():
    """Through the drivers and the emulated SMUs, a DC loop switches the cells as on the simulated chip."""
    from pathlib import Path
    from hil.registry import open_station
    station = Path(__file__).resolve().parents[1] / "stations" / "sim-instruments.toml"
    v = sweep_voltages(1.5, 1.5, 0.05)
    gate = np.where(v >= 0, 1.6, 5.0)
    with open_station(str(station), seed=4) as x:
        cells = Cells.block(0, 0, range(2))
        x.dc_sweep(cells, v, v_gate=gate, compliance_a=100e-6)          # leave the cells in HRS
        res = x.dc_sweep(cells, v, v_gate=gate, compliance_a=100e-6)
    top = int(np.argmax(v))
    k_up, k_down = 6, 2 * top - 6                                       # +0.3 V up and down
    assert np.all(res.i_a[k_down] > 10 * res.i_a[k_up])
    assert np.all(res.i_a[top] < 30e-6)                                  # gate-limited SET current


def test_a_dry_run_answers_a_dc_sweep_and_tallies_its_levels():
    from hil.ops.dryrun import open_dry_run
    x = open_dry_run("sim", seed=4)
    v = np.array([0.0, 0.5, 1.2, 0.0, -0.8, 0.0])
    res = x.dc_sweep(CELLS, v, v_gate=np.where(v >= 0, 1.6, 5.0), compliance_a=100e-6)
    rep = x.report()
    assert res.i_a.shape == (6, 4)
    assert rep["pulses"]["SET"]["max_v"] == pytest.approx(1.2) and rep["pulses"]["SET"]["pulses"] == 8
    assert rep["pulses"]["RESET"]["max_v"] == pytest.approx(0.8) and rep["pulses"]["RESET"]["max_v_gate"] == 5.0
    with pytest.raises(SafetyViolation):
        x.dc_sweep(CELLS, [3.5], v_gate=1.0, compliance_a=1e-4)
