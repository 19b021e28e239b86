"""The "wang2019" device preset (PAPERS.md §B): abrupt gate-limited SET onto f(V_g), full RESET,
8 µS write noise, compliance-curve variation, dead lines; the Yao default stays bit-identical."""
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from hil.errors import ConfigError, SafetyViolation
from hil.geometry import WANG, Cells, Geometry
from hil.limits import Op
from hil.registry import open_station
from sim_backend.chip import SimulatedCrossbar
from sim_backend.device import DeviceArray
from sim_backend.params import PRESETS, WANG2019, DeviceParams

STATIONS = Path(__file__).resolve().parents[1] / "stations"
K_US = 200.0 / 1.1                 # the authors' compliance slope, µS per volt of gate
WIDTH = 1e-6


def wang(**over) -> DeviceParams:
    return DeviceParams.from_dict({"preset": "wang2019", **over})


def full(n, v):
    return np.full(n, float(v))


def reset(x, cells):
    n = len(cells)
    x.pulse(cells, Op.RESET, full(n, 1.7), full(n, 5.0), full(n, WIDTH))


def set_(x, cells, v_gate, v=2.5):
    n = len(cells)
    x.pulse(cells, Op.SET, full(n, v), np.broadcast_to(np.asarray(v_gate, float), (n,)).copy(), full(n, WIDTH))


def working(x, cells):
    return ~x.stuck_mask().ravel()[cells.flat(x.geometry)]


# ---- the Yao default is untouched --------------------------------------------------------------
def test_yao_default_draws_unchanged():
    """Golden values from the device model before the Wang regime existed (commit 72c4df0)."""
    d = DeviceArray(64, DeviceParams(), 7)
    idx = np.arange(0, 64, 3)
    n = idx.size
    v, vg, w = np.linspace(1.0, 2.0, n), np.linspace(0.9, 2.5, n), full(n, 1e-7)
    for k in range(3):
        d.set_pulse(idx, v, vg, w, 1.0 + k)
        d.reset_pulse(idx, v - 0.4, full(n, 4.0), w, 1.5 + k)
    d.form_pulse(idx, full(n, 3.2), full(n, 1.5), w, 5.0)
    np.testing.assert_allclose(d.read(idx[:6], 10.0), [
        1.9756703142499627e-05, 1.6448226873571662e-05, 1.8964708540565582e-05,
        2.0624950481402973e-05, 1.6445503760163683e-05, 1.5175659711535659e-05], rtol=1e-12)
    np.testing.assert_allclose(d.g0[idx[:4]], [
        1.9782027072481797e-05, 1.6367416197831547e-05, 1.9041317905310481e-05,
        2.0597323126043588e-05], rtol=1e-12)


def test_yao_preset_is_the_default():
    p = DeviceParams.preset("yao2020")
    assert p == DeviceParams()
    assert p.set.snap == p.reset.snap == p.write_noise.sigma_us == 0.0
    assert p.defects.dead_row_rate == p.defects.dead_col_rate == 0.0


# ---- SET, RESET, noise ---------------------------------------------------------------------------
def test_set_lands_on_the_compliance_curve():
    x = SimulatedCrossbar(WANG, wang(), seed=1)
    cells = Cells.all(WANG)
    ok = working(x, cells)
    gates = np.resize(np.linspace(0.5, 2.5, 9), len(cells))    # many gates at once, per cell
    reset(x, cells)
    set_(x, cells, gates)
    err_us = x.read(cells)[ok] * 1e6 - K_US * gates[ok]
    # σ ≈ sqrt(8² write + 5.5² curve variation + ~1% read) ≈ 10 µS, the same at every gate
    assert abs(err_us.mean()) < 0.5
    assert 9.0 < err_us.std() < 11.5
    assert np.mean(np.abs(err_us) < 40.0) > 0.999
    for g in (0.5, 1.5, 2.5):
        sel = gates[ok] == g
        assert abs(err_us[sel].mean()) < 1.5, g


def test_set_keeps_a_higher_state_and_weaker_pulses_land_lower():
    x = SimulatedCrossbar(WANG, wang(), seed=2)
    cells = Cells.block(0, range(0, 64), None, WANG)
    ok = working(x, cells)
    reset(x, cells)
    set_(x, cells, 2.0)
    idx = cells.flat(WANG)
    high = x.device.g0[idx].copy()               # state right after programming
    set_(x, cells, 1.0)                          # G = max(f(V_g), G): below the state, nothing happens
    np.testing.assert_array_equal(x.device.g0[idx], high)
    landed = []
    for v in (2.5, 2.3, 2.1):
        reset(x, cells)
        set_(x, cells, 2.0, v=v)
        landed.append(x.true_conductance(cells)[ok].mean() * 1e6)
    assert landed[0] > landed[1] > landed[2]
    assert abs(landed[0] - K_US * 2.0) < 2.0


def test_reset_takes_cells_near_zero():
    x = SimulatedCrossbar(WANG, wang(), seed=3)
    cells = Cells.all(WANG)
    ok = working(x, cells)
    set_(x, cells, 2.5)
    reset(x, cells)
    g_us = x.true_conductance(cells)[ok] * 1e6
    # G = max(0 + N(0, 8 µS), 0): mean 8 µS/sqrt(2π) = 3.2 µS, half the cells exactly at 0
    assert g_us.min() == 0.0
    assert abs(g_us.mean() - 8.0 / np.sqrt(2 * np.pi)) < 0.3
    assert np.percentile(g_us, 99) < 25.0
    weak = SimulatedCrossbar(WANG, wang(), seed=3)
    set_(weak, cells, 2.5)
    n = len(cells)
    weak.pulse(cells, Op.RESET, full(n, 1.7), full(n, 0.0), full(n, WIDTH))   # gate off: no current
    assert weak.true_conductance(cells)[ok].mean() * 1e6 > 400.0


def test_write_noise_is_8_uS_per_operation_and_the_curve_varies_per_device():
    x = SimulatedCrossbar(WANG, wang(read_noise={"rel": 0.0, "abs_us": 0.0}), seed=4)
    cells = Cells.all(WANG)
    ok = working(x, cells)
    cycles = []
    for _ in range(3):
        reset(x, cells)
        set_(x, cells, 1.5)
        cycles.append(x.read(cells)[ok] * 1e6 - K_US * 1.5)
    a, b, c = cycles
    # same device, two cycles: the device's own curve offset cancels, two write-noise draws remain
    assert 7.6 < np.std(a - b) / np.sqrt(2) < 8.4
    # the offset shared by the cycles of a device is the compliance-curve variation (0.03 V · 182 µS/V)
    shared_var = np.mean((a - a.mean()) * (c - c.mean()))
    assert 20.0 < shared_var < 40.0


def test_write_noise_off_lands_exactly_on_each_devices_curve():
    p = wang(write_noise={"sigma_us": 0.0}, read_noise={"rel": 0.0, "abs_us": 0.0})
    x = SimulatedCrossbar(WANG, p, seed=5)
    cells = Cells.all(WANG)
    ok = working(x, cells)
    reset(x, cells)
    set_(x, cells, 2.0)
    expect = K_US * np.maximum(2.0 - x.device.vth[cells.flat(WANG)], 0.0)
    np.testing.assert_allclose(x.device.g0[cells.flat(WANG)][ok] * 1e6, expect[ok], rtol=1e-9)


# ---- defects ---------------------------------------------------------------------------------------
def test_dead_lines_and_stuck_cells():
    geom = Geometry(2, 128, 64, "two")
    x = SimulatedCrossbar(geom, wang(defects={"dead_row_rate": 0.05, "dead_col_rate": 0.05}), seed=6)
    stuck = x.stuck_mask()
    dead_rows = stuck.all(axis=2)
    dead_cols = stuck.all(axis=1)
    assert 4 <= dead_rows.sum() <= 26 and 1 <= dead_cols.sum() <= 14      # 12.8 and 6.4 expected
    assert not np.array_equal(dead_rows[0], dead_rows[1])                  # drawn per PE
    cells = Cells.all(geom)
    set_(x, cells, 2.5)
    g = x.true_conductance() * 1e6
    line = dead_rows[:, :, None] | dead_cols[:, None, :]
    assert g[line].max() < 1.0                                             # open lines never switch
    isolated = stuck & ~line
    assert 0.003 < isolated.sum() / (~line).sum() < 0.012                  # 0.7% stuck cells
    assert np.all((g[isolated] < 1.0) | (g[isolated] >= 300.0))


def test_dead_lines_need_the_chip_shape():
    with pytest.raises(ValueError, match="chip shape"):
        DeviceArray(128, wang(), 0)


def test_wang_station_has_a_few_dead_lines_by_seed():
    counts = []
    for seed in range(6):
        s = open_station(str(STATIONS / "sim-wang.toml"), seed=seed).stuck_mask()[0]
        counts.append((int(s.all(axis=1).sum()), int(s.all(axis=0).sum())))
    assert all(r <= 8 and c <= 6 for r, c in counts)
    assert sum(r + c for r, c in counts) > 0


# ---- presets: validated, documented, round trip, station files ---------------------------------
def test_every_preset_value_names_its_source_and_an_existing_parameter():
    p = DeviceParams()
    for name, preset in PRESETS.items():
        for group, values in preset.items():
            known = {f.name for f in fields(getattr(p, group))}
            for key, (value, source) in values.items():
                assert key in known, f"{name}: {group}.{key}"
                assert isinstance(source, str) and ("§" in source or "[est]" in source), f"{group}.{key}"
    w = DeviceParams.preset("wang2019")
    assert w.set.snap == 1.0 and w.reset.snap == 1.0 and w.write_noise.sigma_us == 8.0
    assert w.compliance.g_per_v_us == pytest.approx(181.818, abs=1e-3)
    assert len(WANG2019) >= 5


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_preset_round_trips_through_a_file(tmp_path, suffix):
    p = DeviceParams.preset("wang2019")
    q = DeviceParams.load(p.save(tmp_path / f"w{suffix}"))
    assert q == p and q != DeviceParams()
    f = tmp_path / f"over{suffix}"
    data = {"preset": "wang2019", "write_noise": {"sigma_us": 4.0}}
    if suffix == ".json":
        f.write_text(json.dumps(data))
    else:
        f.write_text('preset = "wang2019"\n[write_noise]\nsigma_us = 4.0\n')
    r = DeviceParams.load(f)
    assert r.write_noise.sigma_us == 4.0 and r.set.snap == 1.0 and r.defects == p.defects


@pytest.mark.parametrize("data, match", [
    ({"preset": "wang"}, r"preset 'wang' is not a known device preset \(did you mean 'wang2019'\?\)"),
    ({"preset": 2019}, r"preset must be one of"),
    ({"preset": "wang2019", "set": {"snap": 1.5}}, r"set\.snap must be <= 1"),
    ({"write_noise": {"sigma_us": -1.0}}, r"write_noise\.sigma_us must be a number >= 0"),
    ({"defects": {"dead_row_rate": float("nan")}}, r"defects\.dead_row_rate must be a finite number"),
])
def test_bad_presets_and_values_are_one_line_errors(data, match):
    with pytest.raises(ConfigError, match=match) as e:
        DeviceParams.from_dict(data)
    assert "\n" not in str(e.value)


def test_station_file_selects_the_preset(tmp_path):
    x = open_station(str(STATIONS / "sim-wang.toml"))
    assert x.params == DeviceParams.preset("wang2019") and x.geometry == WANG
    assert open_station(str(STATIONS / "sim-yao.toml")).params == DeviceParams()
    text = (STATIONS / "sim-wang.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('preset = "wang2019"', 'preset = "wang2091"'))
    with pytest.raises(ConfigError, match=r"bad\.toml: sim\.preset 'wang2091' is not a known device preset"):
        open_station(str(bad))
    both = tmp_path / "both.toml"
    both.write_text(text.replace('preset = "wang2019"', 'preset = "wang2019"\nparams = "p.toml"'))
    with pytest.raises(ConfigError, match=r"both\.toml: sim\.preset: give sim\.preset or sim\.params, not both"):
        open_station(str(both))


def test_wang_station_limits_allow_the_wang_operations_only():
    x = open_station(str(STATIONS / "sim-wang.toml"))
    cells = Cells.block(0, range(4), range(4), WANG)
    n = len(cells)
    reset(x, cells)
    set_(x, cells, 2.5)
    assert x.read(cells, v_read=0.2).shape == (n,)
    for op, v, vg in ((Op.SET, 2.5, 2.6), (Op.SET, 2.6, 2.0), (Op.RESET, 1.7, 5.1), (Op.READ, 0.25, 1.0)):
        if op is Op.READ:
            with pytest.raises(SafetyViolation):
                x.read(cells, v_read=v)
        else:
            with pytest.raises(SafetyViolation):
                x.pulse(cells, op, full(n, v), full(n, vg), full(n, WIDTH))


def test_emulated_wang_station_through_the_drivers():
    with open_station(str(STATIONS / "sim-wang-instruments.toml")) as x:
        assert x.geometry == WANG
        cells = Cells.block(0, range(10, 14), range(20, 28), WANG)
        reset(x, cells)
        low = x.read(cells) * 1e6
        set_(x, cells, 1.6)
        high = x.read(cells) * 1e6
    good = high > 100.0                      # skip a stuck or dead cell, should the seed put one here
    assert good.sum() >= len(cells) - 2
    assert np.all(np.abs(high[good] - K_US * 1.6) < 45.0)
    assert np.median(low) < 10.0


@pytest.mark.parametrize("change, match", [
    ({"params": "p.toml"}, r"emulation\.preset: give emulation\.preset or emulation\.params, not both"),
    ({"preset": "wang19"}, r"emulation\.preset 'wang19' is not a known device preset \(did you mean 'wang2019'\?\)"),
])
def test_emulation_table_preset_errors(change, match):
    import tomllib
    from sim_backend.visa_backend import check_emulation
    path = STATIONS / "sim-wang-instruments.toml"
    cfg = {**tomllib.loads(path.read_text()), "_path": str(path)}
    with pytest.raises(ConfigError, match=match) as e:
        check_emulation({**cfg["emulation"], **change}, cfg)
    assert "\n" not in str(e.value) and "sim-wang-instruments.toml" in str(e.value)
