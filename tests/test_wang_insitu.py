"""Wang 2019 networks on the simulated 128 x 64 array (hil.wang2019.insitu): forward through the
amplitude VMM, in-situ learning, the open-loop pulse rule, ex-situ transfer and bad input."""
from pathlib import Path

import numpy as np
import pytest

from hil.errors import ConfigError, DataError
from hil.limits import Op
from hil.registry import open_station
from hil.wang2019 import stages
from hil.wang2019.data import load_mnist8, save_npz, sequences_from
from hil.wang2019.insitu import STEP_S, ArrayNetwork, open_loop_policy, transfer_open_loop
from hil.wang2019.nets import WangCNN, WangConvLSTM
from hil.wang2019.optim import RMSprop
from hil.wang2019.placement import MINUS, PLUS, place
from hil.wang2019.yield_scan import YieldMap, YieldScanConfig, yield_scan

STATIONS = Path(__file__).resolve().parents[1] / "stations"


def chip(seed=0):
    return open_station(str(STATIONS / "sim-wang.toml"), seed=seed)


@pytest.fixture(scope="module")
def digits():
    return load_mnist8(seed=0)


def on_array(net, seed=0):
    x = chip(seed)
    m = yield_scan(x, None, YieldScanConfig())
    return x, stages.placement_for(x, m, net)


def test_forward_on_the_array_equals_the_twin_with_the_read_back_weights(digits):
    sw = WangCNN(seed=1)
    x, pl = on_array(sw)
    an = transfer_open_loop(x, WangCNN(seed=1), pl)
    w = an.weights()
    rng = np.random.default_rng(0)
    for name, (n_in, _) in sw.weight_specs():
        per = 1 if name == "dense" else 64
        v = rng.uniform(-0.2, 0.2, (20 * per, n_in)) * rng.uniform(0.1, 1.0, (20, 1)).repeat(per, 0)
        hw, ref = an.matmul(name, v), v @ w[name]
        # 1% read noise on cells near 290 µS (both of a pair at the 1.6 V gate) and one 8-bit
        # conversion: the array's x @ W scatters around the read-back weights' with slope 1
        assert np.polyfit(ref.ravel(), hw.ravel(), 1)[0] == pytest.approx(1.0, abs=0.05), name
        assert np.corrcoef(hw.ravel(), ref.ravel())[0, 1] > 0.98, name
    twin = WangCNN()
    twin.weights = w
    hw, _ = an.forward(digits.x_test[:40])
    ref, _ = twin.forward(digits.x_test[:40])
    assert np.corrcoef(hw.ravel(), ref.ravel())[0, 1] > 0.95
    assert an.saturated == 0 and an.conversions > 0


def test_ex_situ_transfer_realizes_the_weights(digits):
    sw = WangCNN(seed=2)
    x, pl = on_array(sw)
    want = {k: v.copy() for k, v in sw.weights.items()}
    got = transfer_open_loop(x, sw, pl).weights()
    w, g = np.concatenate([want[k].ravel() for k in want]), np.concatenate([got[k].ravel() for k in want])
    slope = np.polyfit(w, g, 1)[0]
    assert 0.85 < slope < 1.15                        # the nominal compliance slope maps W to G+ - G-
    # write noise (8 µS per switching), compliance-curve variation and read noise: ~20 µS per weight
    assert np.std(g - slope * w) < 0.3 and np.corrcoef(w, g)[0, 1] > 0.5


@pytest.mark.parametrize("name, batches, chance", [("cnn", 30, 0.1), ("convlstm", 24, 1 / 6)])
def test_in_situ_training_learns(digits, name, batches, chance):
    net = stages.make_net(name)
    x, pl = on_array(net, seed=3)
    an = ArrayNetwork(x, net, pl, open_loop_policy(net))
    an.initialize()
    assert np.abs(np.concatenate([w.ravel() for w in an.weights().values()])).mean() < 0.15   # ~0 at start
    d = stages.load_data(stages.DataConfig(train_sequences=600, test_sequences=300), name)
    bs = stages.DEFAULT_BATCH[name]
    opt = RMSprop()
    for b in range(batches):
        s = (b * bs) % len(d.y_train)
        _, grads, _ = an.loss_and_grads(d.x_train[s:s + bs], d.y_train[s:s + bs])
        an.update(opt.deltas(grads))
    acc = an.accuracy(d.x_test[:300], d.y_test[:300])
    last = acc[-1] if isinstance(acc, list) else acc
    assert last > chance + 0.4, acc


def test_pulses_follow_the_open_loop_rule_exactly():
    net = WangCNN()
    x, pl = on_array(net, seed=4)
    calls = []
    real = x._pulse

    def recording(cells, op, v, v_gate, width):
        calls.append((op, cells.row.copy(), cells.col.copy(), v.copy(), v_gate.copy(), width.copy()))
        real(cells, op, v, v_gate, width)
    x._pulse = recording
    policy = open_loop_policy(net)
    an = ArrayNetwork(x, net, pl, policy)
    an.initialize()
    # every used cell: RESET (1.7 V, gate 5 V), then SET (2.5 V) at the 1.6 V gate
    cells = {(r, c) for lp in pl.layers.values() for r, c in zip(lp.rows.ravel(), lp.cols.ravel())}
    assert [c[0] for c in calls] == [Op.RESET, Op.SET]
    for op, rows, cols, v, vg, _ in calls:
        assert set(zip(rows, cols)) == cells and len(rows) == len(cells) == 4060
        assert np.all(v == (1.7 if op is Op.RESET else 2.5)) and np.all(vg == (5.0 if op is Op.RESET else 1.6))

    # independent model of the rule: per cell V_g, +gain*dW on the + cells, -gain*dW on the - cells
    vg = {cell: 1.6 for cell in cells}
    rng = np.random.default_rng(0)
    for step in range(2):
        calls.clear()
        deltas = {name: rng.normal(0, 0.3, shape) for name, shape in net.weight_specs()}
        deltas["conv1"][0, 0] = 0.0                           # an unchanged weight gets no pulse
        n = an.update(deltas)
        want_reset, want_set = set(), {}
        for name, lp in pl.layers.items():
            for sign, k in ((PLUS, 1.0), (MINUS, -1.0)):
                dv = k * policy.gain_v * np.repeat(deltas[name][:, :, None], 2, axis=2)
                for r, c, d in zip(lp.rows[:, :, sign].ravel(), lp.cols[:, :, sign].ravel(), dv.ravel()):
                    if d < 0:
                        want_reset.add((r, c))
                    if d != 0:
                        want_set[(r, c)] = min(max(vg[(r, c)] + d, 0.5), 2.5)
        assert [c[0] for c in calls] == [Op.RESET, Op.SET]
        (_, rr, rc, rv, rg, rw), (_, sr, sc, sv, sg, sw) = calls
        assert set(zip(rr, rc)) == want_reset and len(rr) == len(want_reset)
        assert np.all(rv == 1.7) and np.all(rg == 5.0) and np.all(rw == 1e-6)
        assert dict(zip(zip(sr, sc), sg)) == pytest.approx(want_set, abs=1e-12) and len(sr) == len(want_set)
        assert np.all(sv == 2.5) and len(want_set) == 4060 - 4         # both copies of both cells of w[0, 0]
        assert n == len(rr) + len(sr)
        vg.update(want_set)
    assert np.max(list(vg.values())) <= 2.5 and np.min(list(vg.values())) >= 0.5


# ---- bad input ----------------------------------------------------------------------------------
def test_wang_network_on_the_yao_geometry_is_one_line():
    x = open_station("sim", seed=0)
    m = YieldMap(0, np.ones(128, bool), np.ones(16, bool), np.ones((128, 16), bool), np.zeros((128, 16)),
                 np.zeros((128, 16)))
    for net in (WangCNN(), WangConvLSTM()):
        with pytest.raises(ConfigError, match=r"does not fit a 128 x 16 PE \(yao geometry\)") as e:
            stages.placement_for(x, m, net)
        assert "\n" not in str(e.value)


def test_too_few_good_lines_is_one_line():
    x = chip(0)
    rows, cols = np.ones(128, bool), np.zeros(64, bool)
    cols[:30] = True
    m = YieldMap(0, rows, cols, np.ones((128, 64), bool), np.zeros((128, 64)), np.zeros((128, 64)))
    with pytest.raises(ConfigError, match=r"does not fit the good lines of PE 0 \(128 rows, 30 columns\).*"
                                          r"needs 43 good columns.*found 30") as e:
        stages.placement_for(x, m, WangCNN())
    assert "\n" not in str(e.value)


def test_nan_inputs_are_refused_before_the_array_is_read():
    net = WangCNN()
    x, pl = on_array(net)
    an = ArrayNetwork(x, net, pl, open_loop_policy(net))
    before = x.counters["vmm_calls"]
    bad = np.zeros((2, 8, 8))
    bad[1, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN") as e:
        an.forward(bad)
    assert "\n" not in str(e.value) and x.counters["vmm_calls"] == before
    with pytest.raises(DataError, match="NaN"):
        an.update({name: np.full(shape, np.nan) for name, shape in net.weight_specs()})


def test_data_file_of_the_wrong_shape_is_one_line(tmp_path, digits):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((5, 7, 7)), y_train=np.zeros(5, int), x_test=np.zeros((2, 7, 7)),
             y_test=np.zeros(2, int))
    with pytest.raises(DataError, match=r"bad.npz.*\(N, 8, 8\) digits or \(N, 3, 8, 8\) sequences") as e:
        stages.load_data(stages.DataConfig(source=str(bad)), "cnn")
    assert "\n" not in str(e.value)
    seq = tmp_path / "seq.npz"
    save_npz(seq, sequences_from(digits, 12, 6))
    with pytest.raises(ConfigError, match=r"cnn network needs inputs \(8, 8\) with 10 classes") as e:
        stages.load_data(stages.DataConfig(source=str(seq)), "cnn")
    assert "\n" not in str(e.value)


def test_step_is_the_papers_weight_unit():
    assert STEP_S == 100e-6
    assert place(range(128), range(64), WangConvLSTM().weight_specs()).n_cells == 3400
