"""Yield scan and placement around defects (Wang 2019, PAPERS.md §B) on the simulated `sim-wang`
station, whose dead rows and columns are drawn from the seed, and on the emulated instruments."""
from pathlib import Path

import numpy as np
import pytest

from hil.errors import Cancelled, ConfigError
from hil.geometry import WANG, YAO
from hil.progress import CancelToken
from hil.registry import open_station
from hil.runstore.hdf5 import RunRecord
from hil.runstore.writer import RunWriter
from hil.wang2019.nets import WangCNN, WangConvLSTM
from hil.wang2019.placement import CELLS_PER_WEIGHT, MINUS, PLUS, place
from hil.wang2019.yield_scan import YieldMap, YieldScanConfig, good_lines, yield_scan

STATIONS = Path(__file__).resolve().parents[1] / "stations"


def sim_wang(seed):
    return open_station(str(STATIONS / "sim-wang.toml"), seed=seed)


def dead_lines(xbar):
    """Oracle: the open rows and columns of PE 0 (every cell on them stuck)."""
    stuck = xbar.stuck_mask()[0]
    return np.flatnonzero(stuck.all(axis=1)), np.flatnonzero(stuck.all(axis=0))


# ---- yield scan ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_yield_scan_finds_exactly_the_dead_lines(seed):
    x = sim_wang(seed)
    rows, cols = dead_lines(x)
    assert rows.size + cols.size > 0                  # the seed put some dead lines on this chip
    m = yield_scan(x, None, YieldScanConfig())
    np.testing.assert_array_equal(np.flatnonzero(~m.rows), rows)
    np.testing.assert_array_equal(np.flatnonzero(~m.cols), cols)
    good = m.passed[np.ix_(m.rows, m.cols)]
    assert good.mean() > 0.98                          # isolated stuck cells (~0.7%) and noise tails only
    assert np.all(m.g_reset_s[np.ix_(m.rows, m.cols)][good] < 30e-6)


def test_good_lines_count_over_the_other_directions_good_lines():
    passed = np.ones((10, 8), bool)
    passed[:, 3] = False                               # a dead column: 1/8 of every row fails
    passed[6, :5] = False                              # a bad row
    rows, cols = good_lines(passed, 0.9)
    assert list(np.flatnonzero(~rows)) == [6] and list(np.flatnonzero(~cols)) == [3]
    assert not good_lines(np.zeros((4, 4), bool), 0.5)[0].any()


def test_yield_map_is_stored_in_the_record(tmp_path):
    x = sim_wang(1)
    cfg = YieldScanConfig(set_gate_v=1.2, set_min_s=120e-6, set_max_s=320e-6)
    path = tmp_path / "yield.h5"
    with RunWriter.create(path, "wang-yield", {"spec": "sim-wang"}) as w:
        m = yield_scan(x, w, cfg)
        w.finalize()
    with RunRecord.open(path) as rec:
        assert {"yield/rows", "yield/cols", "yield/cells/passed", "yield/cells/g_set_s",
                "yield/cells/g_reset_s"} <= set(rec.datasets())
        attrs = rec.group_attrs("yield")
        assert YieldScanConfig.from_dict(attrs["config"]) == cfg
        assert attrs["good_rows"] == m.rows.sum() and attrs["good_cols"] == m.cols.sum()
        back = YieldMap.from_record(rec)
    for k in ("rows", "cols", "passed", "g_set_s", "g_reset_s"):
        np.testing.assert_array_equal(getattr(back, k), getattr(m, k))


def test_progress_and_cancel():
    x = sim_wang(2)
    seen = []
    yield_scan(x, None, YieldScanConfig(chunk_rows=32), progress=seen.append)
    assert [p.done for p in seen] == list(range(1, 13)) and all(p.total == 12 for p in seen)
    assert seen[-1].fraction == 1.0 and seen[0].unit == "steps"

    x = sim_wang(2)
    token = CancelToken()

    def stop_after_two(p):
        if p.done == 2:
            token.cancel("stop")

    with pytest.raises(Cancelled):
        yield_scan(x, None, YieldScanConfig(chunk_rows=32), progress=stop_after_two, cancel=token)
    assert x.counters["pulses"] == 2 * 32 * 64            # nothing after the cancel


@pytest.mark.parametrize("kwargs, match", [
    ({"v_set": float("nan")}, r"YieldScanConfig\.v_set must be finite"),
    ({"width_s": 0.0}, r"YieldScanConfig\.width_s must be in \(0\.0, 0\.01\]"),
    ({"chunk_rows": 2.5}, r"YieldScanConfig\.chunk_rows must be a whole number"),
    ({"min_good_fraction": 1.5}, r"YieldScanConfig\.min_good_fraction must be in"),
    ({"set_min_s": 500e-6}, r"reset_max_s < set_min_s < set_max_s"),
    ({"pe": True}, r"YieldScanConfig\.pe must be a whole number"),
])
def test_bad_config_is_a_one_line_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as e:
        YieldScanConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_stage_refuses_a_pe_the_chip_lacks_and_unknown_stored_keys():
    x = sim_wang(0)
    with pytest.raises(ConfigError, match=r"YieldScanConfig\.pe = 1 is not a PE of this chip \(0\.\.0\)"):
        yield_scan(x, None, YieldScanConfig(pe=1))
    assert x.counters["pulses"] == 0
    with pytest.raises(ConfigError, match=r"unknown YieldScanConfig setting\(s\) v_sett"):
        YieldScanConfig.from_dict({"v_sett": 2.5})
    with pytest.raises(ConfigError, match="needs a YieldScanConfig"):
        yield_scan(x, None, {"pe": 0})


def test_yield_scan_on_the_emulated_station_through_the_drivers():
    from sim_backend.world import get_world
    with open_station(str(STATIONS / "sim-wang-instruments.toml")) as x:
        m = yield_scan(x, None, YieldScanConfig())
        stuck = get_world("sim-wang-instruments").chip.stuck_mask()[0]
    np.testing.assert_array_equal(~m.rows, stuck.all(axis=1))
    np.testing.assert_array_equal(~m.cols, stuck.all(axis=0))
    assert (~m.rows).sum() + (~m.cols).sum() > 0


# ---- placement ------------------------------------------------------------------------------------
@pytest.mark.parametrize("net, n_cells", [(WangCNN(), 4060), (WangConvLSTM(), 3400)])
def test_placement_uses_good_lines_only_with_two_adjacent_pairs_per_weight(net, n_cells):
    x = sim_wang(1)
    m = yield_scan(x, None, YieldScanConfig())
    p = place(m.good_rows, m.good_cols, net.weight_specs(), pe=m.pe)
    assert p.n_cells == n_cells == CELLS_PER_WEIGHT * net.n_weights
    cells = p.all_cells()
    assert len(np.unique(cells.row * WANG.cols + cells.col)) == n_cells     # no cell used twice
    dead_rows, dead_cols = dead_lines(x)
    assert dead_rows.size and not np.isin(cells.row, dead_rows).any()
    assert dead_cols.size and not np.isin(cells.col, dead_cols).any()
    rank = {r: i for i, r in enumerate(m.good_rows)}                         # position among good rows
    for name, shape in net.weight_specs():
        lp = p.layers[name]
        assert lp.shape == shape and lp.rows.shape == (*shape, 2, 2)
        assert np.all(lp.cols == lp.cols[:, :, :1, :1])                      # 4 cells of a weight: one column
        r = np.vectorize(rank.get)(lp.rows)
        assert np.all(r[:, :, MINUS, :] == r[:, :, PLUS, :] + 1)              # a pair on adjacent good rows
        assert np.all(r[:, :, PLUS, 1] == r[:, :, PLUS, 0] + 2)               # copy 2 right below copy 1
        c = lp.cells(PLUS, 1)
        assert len(c) == shape[0] * shape[1]
        np.testing.assert_array_equal(c.row, lp.rows[:, :, PLUS, 1].ravel())


def test_placement_record_round_trip(tmp_path):
    p = place(np.arange(128), np.arange(64), WangCNN().weight_specs())
    path = tmp_path / "p.h5"
    with RunWriter.create(path, "placement", {}) as w:
        p.save(w)
        w.finalize()
    with RunRecord.open(path) as rec:
        assert rec.group_attrs("placement")["n_cells"] == 4060
        np.testing.assert_array_equal(rec.dataset("placement/conv2/rows")[0], p.layers["conv2"].rows)


@pytest.mark.parametrize("rows, cols, match", [
    (np.arange(124), np.arange(30), r"needs 43 good columns with 124 good rows; found 30 good columns"),
    (np.arange(3), np.arange(64), r"needs at least 4 good rows .*; found 3"),
    (np.arange(YAO.rows), np.arange(YAO.cols), r"needs 43 good columns with 128 good rows; found 16"),
])
def test_too_few_good_lines_is_a_one_line_error(rows, cols, match):
    with pytest.raises(ConfigError, match=match) as e:
        place(rows, cols, WangCNN().weight_specs())
    assert "\n" not in str(e.value)


def test_bad_layer_specs():
    with pytest.raises(ConfigError, match="shape must be two positive integers"):
        place(np.arange(128), np.arange(64), [("fc", (0, 3))])
    with pytest.raises(ConfigError, match="unique"):
        place(np.arange(128), np.arange(64), [("fc", (2, 3)), ("fc", (1, 1))])
