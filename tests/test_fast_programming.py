"""Statistical fast programming (sim_backend.statistical): a model fitted once from a pulse-level
write-verify run reproduces its per-level distributions, goes through the checked `program`,
leaves the chip in the drawn state, and refuses what it does not describe."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import ks_2samp

import hil
from hil.errors import ConfigError, DataError, SafetyViolation
from hil.geometry import Cells
from hil.levels import LevelTable
from hil.ops.write_verify import write_verify
from hil.programming import IN_BAND, UNRESPONSIVE, WriteVerifyPolicy
from hil.registry import resolve
from sim_backend.params import DeviceParams
from sim_backend.statistical import ProgrammingModel, StatisticalCrossbar

LEVELS = 8
TABLE = LevelTable.linear(2e-6, 20e-6, LEVELS)
N = 4096
FLAT = np.arange(N, 2 * N)                 # other cells than the fit run's
LI = np.arange(N) % LEVELS


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    """Two-sample KS critical D at level alpha (asymptotic)."""
    return float(np.sqrt(-np.log(alpha / 2) / 2) * np.sqrt((n + m) / (n * m)))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    fit = resolve("sim.fit_programming_model")
    return fit(seed=0, n_cells=N, levels=LEVELS, out=tmp_path_factory.mktemp("model") / "m.npz")


def program(seed, **opts):
    with hil.open_station("sim", seed=seed, **opts) as x:
        cells = Cells.from_flat(FLAT, x.geometry)
        rep = write_verify(x, cells, TABLE.levels_s[LI], TABLE.tolerance_s)
        return rep, x.read(cells, n_avg=4), x.counters["pulses"]


@pytest.fixture(scope="module")
def pulse_level():
    return program(3)


def worst_ks(a, b):
    """Largest D over levels and both outcomes (pulses, final conductance) and its critical value."""
    d = max(max(ks_2samp(a.pulses[LI == k], b.pulses[LI == k])[0], ks_2samp(a.final_s[LI == k], b.final_s[LI == k])[0])
            for k in range(LEVELS))
    n = int(np.sum(LI == 0))
    return d, ks_critical(n, n)


def test_fast_mode_matches_pulse_level_per_level(model_path, pulse_level):
    fast, read_back, _ = program(3, programming_model=model_path)
    ref, ref_read, _ = pulse_level
    d, crit = worst_ks(ref, fast)
    assert d < crit, f"KS D {d:.3f} >= {crit:.3f}"
    # reads after programming see the drawn state (relaxation and read noise as usual)
    for k in range(LEVELS):
        assert ks_2samp(ref_read[LI == k], read_back[LI == k])[0] < crit


def test_a_wrong_model_fails_the_same_test(tmp_path, pulse_level):
    p = DeviceParams()
    wrong = replace(p, compliance=replace(p.compliance, g_per_v_us=14.0))     # a flatter compliance curve
    path = resolve("sim.fit_programming_model")(params=wrong, seed=0, n_cells=N, levels=LEVELS, out=tmp_path / "w.npz")
    fast, _, _ = program(3, programming_model=path)
    d, crit = worst_ks(pulse_level[0], fast)
    assert d > crit


def test_state_clock_and_counters_follow_the_drawn_outcome(model_path):
    with hil.open_station("sim", seed=4, programming_model=model_path) as x:
        assert isinstance(x, StatisticalCrossbar) and x.has("program")
        cells = Cells.from_flat(FLAT[:512], x.geometry)
        t0, p0 = x.now(), x.counters["pulses"]
        rep = write_verify(x, cells, TABLE.levels_s[LI[:512]], TABLE.tolerance_s)
        ok = rep.status == IN_BAND
        assert np.allclose(x.true_conductance(cells)[ok], rep.final_s[ok], atol=0.2e-6)
        assert x.counters["pulses"] - p0 == rep.pulses.sum()
        assert rep.backend_seconds == pytest.approx(x.now() - t0) and rep.backend_seconds > 0
        g_now = x.true_conductance(cells)
        x.advance(30 * 86400.0)
        assert np.std(x.true_conductance(cells) - g_now) > 0.1e-6            # drift acts on the drawn state


def test_stuck_cells_are_programmed_pulse_by_pulse(model_path, tmp_path):
    p = DeviceParams()
    stuck = replace(p, defects=replace(p.defects, stuck_on_rate=0.05))
    pf = stuck.save(tmp_path / "stuck.toml")
    with hil.open_station("sim", seed=5, params=str(pf), programming_model=model_path) as x:
        cells = Cells.from_flat(FLAT[:1024], x.geometry)
        bad = x.stuck_mask().ravel()[FLAT[:1024]]
        assert bad.sum() > 20
        rep = write_verify(x, cells, TABLE.levels_s[LI[:1024]], TABLE.tolerance_s)
    assert np.all(rep.status[bad] == UNRESPONSIVE)          # found out by the pulse-level loop
    real = (rep.final_s[bad] > 30e-6) | (rep.final_s[bad] < 0.5e-6)     # stuck on or off: their real reading
    assert np.all(real)
    assert np.mean(rep.status[~bad] == IN_BAND) > 0.99


def test_program_stays_checked_and_refuses_what_the_model_does_not_describe(model_path):
    with hil.open_station("sim", seed=6, programming_model=model_path) as x:
        cells = Cells.from_flat(FLAT[:64], x.geometry)
        targets = TABLE.levels_s[LI[:64]]
        g = x.true_conductance(cells)
        with pytest.raises(SafetyViolation):
            write_verify(x, cells, targets, TABLE.tolerance_s, WriteVerifyPolicy(set_gate_max=9.0))
        with pytest.raises(ConfigError, match="policy"):
            write_verify(x, cells, targets, TABLE.tolerance_s, WriteVerifyPolicy(max_pulses=40))
        with pytest.raises(ConfigError, match="tolerance"):
            write_verify(x, cells, targets, TABLE.tolerance_s / 2)
        with pytest.raises(ConfigError, match="outside"):
            write_verify(x, cells, np.full(64, 60e-6), TABLE.tolerance_s)
        assert np.array_equal(x.true_conductance(cells), g)          # nothing was applied


def test_model_file_round_trip_cache_and_bad_files(model_path, tmp_path):
    m = ProgrammingModel.load(model_path)
    assert m.params_digest == DeviceParams().digest() and m.levels_s.size == LEVELS
    assert resolve("sim.fit_programming_model")(seed=0, n_cells=N, levels=LEVELS, out=model_path) == model_path
    rng = np.random.default_rng(0)
    f, p, s = m.draw(TABLE.levels_s[LI[:100]], rng)
    assert f.shape == p.shape == s.shape == (100,)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match="unreadable"):
        ProgrammingModel.load(bad)
    with pytest.raises(ConfigError, match="programming_model"):
        hil.open_station("sim", programming_model=tmp_path / "missing.npz")


def test_station_file_option(model_path, tmp_path):
    (tmp_path / "m.npz").write_bytes(model_path.read_bytes())
    st = tmp_path / "fast.toml"
    st.write_text('[station]\nbackend = "sim"\n[sim]\nseed = 2\nprogramming_model = "m.npz"\n')
    with hil.open_station(str(st)) as x:
        assert isinstance(x, StatisticalCrossbar)
        assert x.describe()["programming_model"]["params_digest"] == DeviceParams().digest()
