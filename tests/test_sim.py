"""Tests of the simulated backend: parameters, physics, VMM, safety, persistence, registry."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hil.crossbar import VmmResult
from hil.errors import AddressError, ConfigError, DataError, SafetyViolation
from hil.geometry import WANG, YAO, Cells, Geometry
from hil.levels import LevelTable
from hil.limits import Op
from hil.ops.write_verify import write_verify
from hil.registry import open_station
from hil.ops.vmm import differential
from sim_backend.chip import SimulatedCrossbar
from sim_backend.device import S_PER_US
from sim_backend.params import DefectParams, DeviceParams, InitialParams, ReadNoiseParams

ROOT = Path(__file__).resolve().parents[1]
SMALL = Geometry(1, 32, 32, "small")
DAY = 86400.0


def block(n, pe=0, geometry=YAO):
    return Cells.from_flat(np.arange(pe * geometry.rows * geometry.cols,
                                     pe * geometry.rows * geometry.cols + n), geometry)


def set_state(xbar, cells, g_s):
    """Oracle: put cells into a fully relaxed state of conductance g_s (test setup only)."""
    idx = cells.flat(xbar.geometry)
    xbar.device.g0[idx] = g_s
    xbar.device.t_prog[idx] = xbar.now()
    xbar.device.dose[idx] = 0.0


# ---- DeviceParams ----------------------------------------------------------------------------
def test_params_defaults_validate():
    p = DeviceParams()
    assert p.validate() is p


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_params_round_trip(tmp_path, suffix):
    p = DeviceParams(read_noise=ReadNoiseParams(rel=0.01, abs_us=0.05))
    path = p.save(tmp_path / f"p{suffix}")
    q = DeviceParams.load(path)
    assert q == p
    assert q.to_dict() == p.to_dict()
    assert q != DeviceParams()


def test_params_malformed_toml(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[read_noise\nrel = ")
    with pytest.raises(ConfigError, match="bad.toml"):
        DeviceParams.load(f)


@pytest.mark.parametrize("data, name", [
    ({"nosuchgroup": {"x": 1}}, "nosuchgroup"),
    ({"read_noise": {"nosuchkey": 1}}, "read_noise.nosuchkey"),
    ({"read_noise": {"rel": 5.0}}, "read_noise.rel"),
    ({"adc": {"full_scale_a": float("nan")}}, "adc.full_scale_a"),
])
def test_params_errors_name_the_parameter(tmp_path, data, name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        DeviceParams.from_dict(data)
    f = tmp_path / "p.json"
    f.write_text(json.dumps(data))          # json writes NaN as a bare NaN, which json reads back
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        DeviceParams.load(f)


# ---- physics ---------------------------------------------------------------------------------
def test_set_gate_limits_compliance():
    xbar = SimulatedCrossbar(SMALL, seed=3)
    n = SMALL.n_cells
    lo, hi = Cells.from_flat(np.arange(0, n, 2), SMALL), Cells.from_flat(np.arange(1, n, 2), SMALL)
    for c in (lo, hi):
        set_state(xbar, c, 3e-6)
    for _ in range(15):
        xbar.pulse(lo, Op.SET, 1.5, 1.0, 50e-9)
        xbar.pulse(hi, Op.SET, 1.5, 1.6, 50e-9)
    g_lo, g_hi = xbar.true_conductance(lo), xbar.true_conductance(hi)
    assert np.mean(g_hi) > np.mean(g_lo) + 3e-6
    ok = ~xbar.stuck_mask().ravel()[lo.flat(SMALL)]
    # gate 1.0 V: ceiling 20 µS/V * (1.0 - 0.7 V) = 6 µS (plus soft headroom and landing spread)
    assert np.median(g_lo[ok]) < 7e-6


def test_reset_steps_grow_with_conductance():
    xbar = SimulatedCrossbar(SMALL, seed=4)
    n = SMALL.n_cells
    a, b = Cells.from_flat(np.arange(0, n, 2), SMALL), Cells.from_flat(np.arange(1, n, 2), SMALL)
    set_state(xbar, a, 5e-6)
    set_state(xbar, b, 18e-6)
    ga0, gb0 = xbar.true_conductance(a), xbar.true_conductance(b)
    xbar.pulse(a, Op.RESET, 1.2, 4.0, 50e-9)
    xbar.pulse(b, Op.RESET, 1.2, 4.0, 50e-9)
    da = np.mean(xbar.true_conductance(a) - ga0)
    db = np.mean(xbar.true_conductance(b) - gb0)
    assert da < 0 and db < 0
    assert abs(db) > 2 * abs(da)


def test_stuck_cells_do_not_change():
    p = DeviceParams(defects=DefectParams(stuck_off_rate=0.05, stuck_on_rate=0.05))
    xbar = SimulatedCrossbar(SMALL, params=p, seed=5)
    stuck = np.flatnonzero(xbar.device.stuck != 0)
    assert stuck.size > 20
    cells = Cells.from_flat(stuck, SMALL)
    g0 = xbar.true_conductance(cells)
    for op, v, vg in ((Op.SET, 2.0, 2.5), (Op.RESET, 2.0, 5.0), (Op.FORM, 3.5, 1.5)):
        xbar.pulse(cells, op, v, vg, 1e-6)
    np.testing.assert_array_equal(xbar.true_conductance(cells), g0)


def test_fresh_chip_reads_low_and_forms():
    p = DeviceParams(initial=InitialParams(state="fresh"),
                     defects=DefectParams(stuck_off_rate=0.0, stuck_on_rate=0.0))
    xbar = SimulatedCrossbar(SMALL, params=p, seed=6)
    cells = Cells.all(SMALL)
    assert np.all(xbar.read(cells) < 0.5e-6)
    xbar.pulse(cells, Op.FORM, 3.3, 1.2, 50e-9)
    assert np.mean(xbar.read(cells) > 0.5e-6) > 0.9


def test_read_noise_matches_params():
    xbar = SimulatedCrossbar(SMALL, seed=7)
    cells = Cells.all(SMALL)
    ok = ~xbar.stuck_mask().ravel()
    set_state(xbar, cells, 10e-6)
    diff = (xbar.read(cells) - xbar.read(cells))[ok]
    measured = np.std(diff) / math.sqrt(2)
    rn = xbar.params.read_noise
    expected = math.hypot(rn.rel * 10e-6, rn.abs_us * S_PER_US)
    assert abs(measured / expected - 1) < 0.2


def test_drift_spreads_levels():
    xbar = SimulatedCrossbar(SMALL, seed=8)
    cells = Cells.all(SMALL)
    rep = write_verify(xbar, cells, 10e-6, 0.2e-6)
    ok = rep.in_band & ~xbar.stuck_mask().ravel()
    assert ok.mean() > 0.9
    s0 = np.std(xbar.true_conductance(cells)[ok])
    xbar.advance(30 * DAY)
    s30 = np.std(xbar.true_conductance(cells)[ok])
    assert s30 > 2 * s0


def test_read_stress_disturb_is_small():
    xbar = SimulatedCrossbar(SMALL, seed=9)
    cells = Cells.all(SMALL)
    g0 = xbar.true_conductance(cells)
    xbar.read_stress(cells, 1_000_000)
    g1 = xbar.true_conductance(cells)
    shift = np.mean(g1 - g0)
    assert 0 < shift < 0.2e-6         # the disturb is real (SET direction) but small


# ---- VMM -------------------------------------------------------------------------------------
def quiet_params():
    return DeviceParams(read_noise=ReadNoiseParams(rel=0.0, abs_us=0.0))


def test_vmm_noise_free_matches_ideal_within_quantization():
    xbar = SimulatedCrossbar(YAO, params=quiet_params(), seed=10)
    assert xbar.params.lines.r_segment_ohm == 0
    x = np.random.default_rng(0).integers(0, 256, (300, YAO.rows))
    G = xbar.true_conductance()[2]
    v = xbar.v_read_default
    fs = 1.05 * v * G.sum(axis=0).max()
    res = xbar.vmm(2, x, adc_full_scale_a=fs)
    assert res.codes.shape == (300, YAO.cols) and res.codes.dtype == np.int64
    assert not res.saturated.any()
    ideal = v * x @ G
    err = np.abs(res.currents - ideal)
    assert err.max() <= res.quantization_bound_a * (1 + 1e-5)
    assert err.max() > 0                     # quantization is actually applied


def test_vmm_row_col_subset_noise_free():
    xbar = SimulatedCrossbar(YAO, params=quiet_params(), seed=11)
    rows, cols = np.array([3, 7, 50, 100]), np.array([1, 5])
    x = np.random.default_rng(1).integers(0, 256, (40, rows.size))
    G = xbar.true_conductance()[0][np.ix_(rows, cols)]
    res = xbar.vmm(0, x, rows, cols)
    assert np.abs(res.currents - 0.2 * x @ G).max() <= res.quantization_bound_a * (1 + 1e-5)


def test_vmm_noise_is_deterministic_and_realistic():
    x = np.random.default_rng(2).integers(0, 256, (2000, YAO.rows))
    a, b = SimulatedCrossbar(YAO, seed=12), SimulatedCrossbar(YAO, seed=12)
    fs = 1.05 * 0.2 * a.true_conductance()[1].sum(axis=0).max()
    ra, rb = a.vmm(1, x, adc_full_scale_a=fs), b.vmm(1, x, adc_full_scale_a=fs)
    np.testing.assert_array_equal(ra.codes, rb.codes)
    assert a.now() == b.now() and a.counters == b.counters
    assert a.counters["vmm_calls"] == 1 and a.counters["vmm_slots"] == 8 * 2000
    err = ra.currents - 0.2 * x @ a.true_conductance()[1]
    # noise is present but far smaller than the signal
    assert np.std(err) > ra.quantization_bound_a / 10
    assert np.std(err) < 0.01 * np.mean(np.abs(ra.currents))


def test_vmm_adds_read_disturb_dose():
    xbar = SimulatedCrossbar(YAO, seed=13)
    x = np.zeros((10, YAO.rows), dtype=np.int64)
    x[:, 0] = 255                  # row 0: 8 slots x 10 = 80 pulses; other rows none
    xbar.vmm(0, x)
    dose = xbar.device.dose.reshape(YAO.shape)[0]
    assert np.all(dose[0] > 0) and np.all(dose[1:] == 0)
    np.testing.assert_allclose(dose[0], 80.0)     # v_read 0.2 V, 50 ns: reference reads


def test_vmm_saturation():
    xbar = SimulatedCrossbar(YAO, seed=14)
    x = np.full((5, YAO.rows), 255)
    res = xbar.vmm(0, x)
    assert res.saturated.all()
    assert np.all(res.codes == sum(255 * 2 ** k for k in range(8)))


@pytest.mark.parametrize("bad", [
    np.full((2, 128), np.nan), np.full((2, 128), 256), np.full((2, 128), -1),
    np.zeros((2, 127), dtype=int), np.zeros((2, 2, 128), dtype=int), np.full((2, 128), 1.5),
])
def test_vmm_invalid_inputs(bad):
    xbar = SimulatedCrossbar(YAO, seed=15)
    with pytest.raises(ValueError):
        xbar.vmm(0, bad)
    assert xbar.counters["vmm_calls"] == 0


def test_differential_subtracts_pairs():
    codes = np.array([[10, 3, 7, 7]], dtype=np.int64)
    r = VmmResult(codes=codes, lsb_a=2e-7, v_read=0.2, saturated=np.zeros_like(codes, bool))
    np.testing.assert_allclose(differential(r, [0, 2], [1, 3]), [[7 * 2e-7, 0.0]])


# ---- safety ----------------------------------------------------------------------------------
class RecordingSim(SimulatedCrossbar):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pulse_calls = []

    def _pulse(self, cells, op, v, v_gate, width):
        self.pulse_calls.append((op, cells))
        super()._pulse(cells, op, v, v_gate, width)


@pytest.mark.parametrize("op, v, vg, w", [
    (Op.SET, 3.5, 1.5, 50e-9),
    (Op.RESET, 1.0, 6.0, 50e-9),
    (Op.SET, 1.5, float("nan"), 50e-9),
    (Op.SET, 1.5, 1.5, 1e-12),
    (Op.RESET, 1.5, 4.0, 1.0),
    (Op.FORM, [3.0, 5.0], 1.2, 50e-9),
])
def test_safety_violation_applies_nothing(op, v, vg, w):
    xbar = RecordingSim(SMALL, seed=16)
    before = xbar.true_conductance().copy()
    cells = Cells.from_flat([0, 1], SMALL)
    with pytest.raises(SafetyViolation):
        xbar.pulse(cells, op, v, vg, w)
    assert xbar.pulse_calls == []
    np.testing.assert_array_equal(xbar.true_conductance(), before)
    xbar.pulse(cells, Op.SET, 1.5, 1.5, 50e-9)     # the recorder does record valid pulses
    assert len(xbar.pulse_calls) == 1


@pytest.mark.parametrize("pe, row, col", [(1, 0, 0), (0, 32, 0), (0, 0, -1)])
def test_address_error_applies_nothing(pe, row, col):
    xbar = RecordingSim(SMALL, seed=17)
    with pytest.raises(AddressError):
        xbar.pulse(Cells(pe, row, col), Op.SET, 1.5, 1.5, 50e-9)
    assert xbar.pulse_calls == []


# ---- persistence -----------------------------------------------------------------------------
def test_state_persists_across_reopen(tmp_path):
    p = tmp_path / "chip.npz"
    xbar = SimulatedCrossbar(SMALL, seed=18, state_path=p)
    cells = Cells.from_flat(np.arange(40), SMALL)
    xbar.pulse(cells, Op.RESET, 1.5, 4.0, 50e-9)
    xbar.pulse(cells, Op.SET, 1.5, 1.3, 50e-9)
    xbar.advance(3600)
    g, t = xbar.true_conductance(), xbar.now()
    xbar.close()
    again = SimulatedCrossbar(SMALL, seed=18, state_path=p)
    assert again.now() == t
    np.testing.assert_array_equal(again.true_conductance(), g)
    fresh = SimulatedCrossbar(SMALL, seed=18)
    assert not np.array_equal(fresh.true_conductance(), g)


def test_corrupt_state_file(tmp_path):
    p = tmp_path / "chip.npz"
    p.write_bytes(b"this is not a chip state")
    with pytest.raises(DataError):
        SimulatedCrossbar(SMALL, seed=0, state_path=p)


# ---- registry --------------------------------------------------------------------------------
def test_open_station_sim():
    xbar = open_station("sim", seed=1)
    assert xbar.geometry.shape == (8, 128, 16) == YAO.shape
    assert isinstance(xbar, SimulatedCrossbar) and xbar.seed == 1


def test_open_station_wang_file(monkeypatch):
    monkeypatch.chdir(ROOT)
    xbar = open_station("stations/sim-wang.toml")
    assert xbar.geometry.shape == (1, 128, 64) == WANG.shape


def test_unknown_station():
    with pytest.raises(ConfigError, match="neither 'sim' nor an existing"):
        open_station("no-such-station-xyz")


def test_malformed_station_file(tmp_path):
    f = tmp_path / "broken-station.toml"
    f.write_text("[station\nbackend = sim\n")
    with pytest.raises(ConfigError, match="broken-station.toml"):
        open_station(str(f))
