"""Generic mapped layers (hil.analog): forward on the chip against the ideal sums, read-back,
convolution against a naive loop, the update engine's closed and open loops."""
import numpy as np
import pytest

from hil.analog.energy import VmmLedger
from hil.analog.layer import MappedLayer
from hil.analog.mapping import SHARED, PairEncoding, Tile, plan_network
from hil.analog.network import Conv2d, Dense, MappedNetwork, Network
from hil.analog.update import ClosedLoop, OpenLoopGate, UpdateEngine
from hil.errors import ConfigError, DataError
from hil.geometry import Cells, Geometry
from hil.limits import Op
from hil.ops.write_verify import write_verify
from hil.programming import WriteVerifyPolicy
from sim_backend.chip import SimulatedCrossbar
from sim_backend.params import DeviceParams
from tests.fakes import ToyCrossbar

ENC = PairEncoding()
QUIET = {"read_noise": {"rel": 0.0, "abs_us": 0.0}, "relaxation": {"mean_rel": 0.0, "sigma_rel": 0.0,
         "sigma_abs_us": 0.0}, "disturb": {"a_us": 0.0}, "defects": {"stuck_on_rate": 0.0, "stuck_off_rate": 0.0}}


def programmed(seed: int, params=None, n_in: int = 200, n_out: int = 12):
    """A dense layer of random levels -7..7 written by write-verify on a simulated chip."""
    xbar = SimulatedCrossbar(seed=seed, params=DeviceParams.from_dict(params) if params else None)
    plan = plan_network(xbar.geometry, {"d": (n_in, n_out)}, [], ["d"])
    levels = np.random.default_rng(seed).integers(-7, 8, (n_in, n_out))
    cells, targets = plan.targets("d", SHARED, levels, ENC)
    rep = write_verify(xbar, cells, targets, ENC.tolerance_s)
    return xbar, plan, levels, rep


@pytest.fixture(scope="module")
def quiet_layer():
    xbar, plan, levels, rep = programmed(1, QUIET)
    return MappedNetwork(xbar, plan, ENC).layer("d"), levels, rep


def test_forward_without_noise_is_the_ideal_sum_within_adc_quantization(quiet_layer):
    layer, levels, _ = quiet_layer
    row_tiles = len({t.in0 for t in layer.tiles})
    assert row_tiles == 2 and len(layer.tiles) == 4                # 200 inputs x 12 outputs: partial sums digital
    w = layer.read_weights(n_avg=1)                                # exact: no read noise
    x = np.random.default_rng(2).integers(0, 256, (40, 200))
    v = layer.xbar.v_read_default
    g = [layer.xbar.read(Cells(np.full(t.n_in * 2 * t.n_out, t.pe), np.repeat(t.rows, 2 * t.n_out),
                                np.tile(t.cols, t.n_in)), n_avg=1).reshape(t.n_in, -1) for t in layer.tiles]
    layer.adc_full_scale_a = v * max(gt.sum(axis=0).max() for gt in g) * 1.001     # all rows on: top code
    y = layer.forward(x)
    assert layer.saturation.saturated == 0 and layer.saturation.total == 40 * 24 * 2
    # per tile and column: 8 slots, each rounded by <= 1/2 LSB, weighted 2**k -> 127.5 LSB; a pair is two columns
    lsb = layer.adc_full_scale_a / 255
    bound = row_tiles * 2 * 127.5 * lsb / (v * ENC.step_s)
    err = np.abs(y - x @ w)
    assert err.max() <= bound and err.max() > 0                    # quantized, and within the bound
    assert bound < 0.15 * np.abs(x @ w).mean()                     # and the bound is not vacuous
    # the software twin is exact integer arithmetic
    twin = Network([Dense("d", 200, 12)], {"d": levels}).forward(x)
    np.testing.assert_array_equal(twin, x @ levels)


def test_forward_without_noise_does_not_depend_on_vmm_chunking_or_column_selection(quiet_layer, monkeypatch):
    import hil.analog.layer as layer_mod
    layer = quiet_layer[0]
    x = np.random.default_rng(3).integers(0, 256, (40, 200))
    y = layer.forward(x)                                           # one vmm call per tile, pair columns as slices
    monkeypatch.setattr(layer_mod, "VMM_CHUNK", 7)                 # 6 calls per tile
    monkeypatch.setattr(layer_mod, "_column_selector", lambda idx: np.asarray(idx))   # gathers
    np.testing.assert_array_equal(layer.forward(x), y)
    assert np.abs(y).max() > 0


def test_column_selector_turns_progressions_into_slices():
    from hil.analog.layer import _column_selector
    cols = np.arange(10.0)[None, :]
    for idx in ([0, 2, 4, 6], [1, 3, 5], [4], [2, 3, 4]):
        sel = _column_selector(np.array(idx))
        assert isinstance(sel, slice)
        np.testing.assert_array_equal(cols[:, sel], cols[:, idx])
    for idx in ([0, 3, 4], [5, 3, 1], []):
        assert isinstance(_column_selector(np.array(idx, int)), np.ndarray)


def test_amplitude_forward_without_noise_is_the_ideal_sum_within_adc_quantization(quiet_layer):
    layer, _, _ = quiet_layer
    amp = MappedLayer(layer.xbar, "d", SHARED, layer.tiles, ENC.step_s, ledger=VmmLedger(), encoding="amplitude")
    w = amp.read_weights(n_avg=1)
    x = np.random.default_rng(6).uniform(-0.2, 0.2, (30, 200))       # signed row voltages, V
    pos, neg = (np.maximum(w, 0) * ENC.step_s + ENC.g_min_s, np.maximum(-w, 0) * ENC.step_s + ENC.g_min_s)
    amp.calibrate_adc(x, pos, neg, percentile=100.0, headroom=1.5)
    y = amp.forward(x)
    assert amp.saturation.saturated == 0 and amp.saturation.total == 30 * 24 * 2
    bound = 2 * 2 * 0.5 * (amp.adc_full_scale_a / 127) / ENC.step_s       # 2 row tiles x pair x 1/2 LSB
    err = np.abs(y - x @ w)
    assert 0 < err.max() <= bound < 0.1 * np.abs(x @ w).mean()
    assert not amp.ledger.entries                                   # the energy model is bit-serial
    with pytest.raises(ConfigError, match="encoding"):
        MappedLayer(layer.xbar, "d", SHARED, layer.tiles, ENC.step_s, encoding="pwm")


def test_read_weights_returns_the_programmed_levels(quiet_layer):
    layer, levels, rep = quiet_layer
    w = layer.read_weights(n_avg=1)
    assert rep.summary()["in_band_fraction"] > 0.97
    # every cell in band: ±tolerance per member, so a pair is within 2 × tolerance_frac levels
    _, i_in, i_out, sign = layer.cells()
    in_band = np.abs(rep.final_s - np.where(sign > 0, *ENC.encode(levels[i_in, i_out]))) <= ENC.tolerance_s
    bad = np.zeros(levels.shape, bool)
    np.logical_or.at(bad, (i_in, i_out), ~in_band)
    ok = ~bad
    assert ok.mean() > 0.95
    assert np.abs(w - levels)[ok].max() <= 2 * ENC.tolerance_frac + 1e-9


@pytest.mark.parametrize("pad,stride", [(0, 1), (1, 1), ((1, 0, 2, 1), 1), ((0, 2, 1, 0), 2)])
def test_conv_layer_equals_a_naive_convolution(pad, stride):
    rng = np.random.default_rng(3)
    conv = Conv2d("c", (2, 7, 6), 3, (3, 2), pad=pad, stride=stride)
    x = rng.integers(0, 256, (2, 2, 7, 6))
    w = rng.integers(-7, 8, conv.weight_shape)
    t, b, l, r = (pad,) * 4 if isinstance(pad, int) else pad
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    oh, ow = conv.out_hw
    ref = np.zeros((2, 3, oh, ow), np.int64)
    for n in range(2):
        for k in range(3):
            for i in range(oh):
                for j in range(ow):
                    ref[n, k, i, j] = np.sum(xp[n, :, i * stride:i * stride + 3, j * stride:j * stride + 2] * w[k])
    out = Network([conv], {"c": conv.matrix(w)}).forward(x)
    assert out.shape == (2, *conv.out_shape)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(DataError, match="convolution 'c' takes"):
        Network([conv], {"c": conv.matrix(w)}).forward(x[:, :1])


def old_fc_updater_apply(xbar, layer, g_pos, g_neg, delta, max_pulses):
    """The closed loop of the former hybrid.FcUpdater.apply, kept here as the reference."""
    pos, neg = layer.pair_grids()
    i, o = np.nonzero(delta)
    d = delta[i, o]
    gp, gn = g_pos[i, o], g_neg[i, o]
    lower_neg = (d > 0) & (gn > ENC.g_min_s + 0.5 * ENC.step_s)
    lower_pos = (d < 0) & (gp > ENC.g_min_s + 0.5 * ENC.step_s)
    on_pos = ((d > 0) & ~lower_neg) | lower_pos
    g_now = np.where(on_pos, gp, gn)
    target = np.clip(g_now + np.where(on_pos, d, -d) * ENC.step_s, ENC.g_min_s, ENC.g_max_s)
    sel = np.abs(target - g_now) > 0.25 * ENC.tolerance_s
    i, o, on_pos, target, g_now = i[sel], o[sel], on_pos[sel], target[sel], g_now[sel]
    flat = np.ravel_multi_index((i, o), delta.shape)
    cells = Cells(*(np.where(on_pos, a[flat], b[flat]) for a, b in
                    ((pos.pe, neg.pe), (pos.row, neg.row), (pos.col, neg.col))))
    rep = write_verify(xbar, cells, target, ENC.tolerance_s, WriteVerifyPolicy(max_pulses=max_pulses))
    g_new = np.where(np.isfinite(rep.final_s), rep.final_s, g_now)
    reached = np.zeros_like(delta)
    dg = (g_new - g_now) / ENC.step_s
    reached[i, o] = np.where(on_pos, dg, -dg)
    return reached, int(rep.pulses.sum())


def test_closed_loop_moves_weights_toward_the_update_like_the_former_fc_updater():
    delta = np.where(np.random.default_rng(4).random((40, 6)) < 0.5,
                     np.random.default_rng(5).uniform(-2, 2, (40, 6)), 0.0)
    results = []
    for use_engine in (True, False):
        xbar, plan, levels, _ = programmed(7, n_in=40, n_out=6)
        layer = MappedNetwork(xbar, plan, ENC).layer("d")
        policy = ClosedLoop(ENC.g_min_s, ENC.g_max_s, ENC.tolerance_s, max_pulses=12)
        eng = UpdateEngine(layer, policy)
        if use_engine:
            before = eng.weights()
            reached = eng.apply(delta)
            results.append((reached, eng.pulses))
            after = eng.read_back()
        else:
            results.append(old_fc_updater_apply(xbar, layer, eng.g_pos, eng.g_neg, delta, 12))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1] > 0
    # well beyond the verify band, and room for the move within the level range
    moved = (np.abs(delta) >= 0.5) & (np.abs(before + delta) <= ENC.max_level - 1)
    changed = moved & (np.abs(reached) > 0.25)     # the rest ran out of pulses this time (12 at most)
    assert changed.sum() > 0.5 * moved.sum()
    assert np.all(np.sign(reached[changed]) == np.sign(delta[changed]))
    # closer to the requested weights than before the update
    goal = before + delta
    assert np.abs(after - goal)[moved].mean() < 0.5 * np.abs(before - goal)[moved].mean()
    assert not reached[delta == 0].any()


def toy_layer():
    xbar = ToyCrossbar(Geometry(1, 4, 4, "toy"))
    return xbar, MappedLayer(xbar, "w", SHARED, [Tile("w", SHARED, 0, 0, 0, 0, 4, 0, 2)], ENC.step_s)


def test_open_loop_issues_exactly_the_documented_pulses():
    xbar, layer = toy_layer()
    p = OpenLoopGate()
    eng = UpdateEngine(layer, p)
    v_pos = np.array([[1.0, 2.4], [1.6, 0.6], [2.0, 1.2], [0.9, 1.6]])
    v_neg = np.full((4, 2), 1.5)
    eng.load_state({**eng.state(), "v_gate_pos": v_pos, "v_gate_neg": v_neg})
    delta = np.array([[0.2, 0.1], [0.0, -0.1], [-0.4, 0.0], [0.3, 0.0]])
    n_calls = len(xbar.calls)
    eng.apply(delta)
    pulses = [c for c in xbar.calls[n_calls:] if c[0] == "pulse"]
    assert [c[1] for c in pulses] == [Op.RESET, Op.SET]
    dv = np.concatenate([(p.gain_v * delta).ravel(), (-p.gain_v * delta).ravel()])
    v_last = np.concatenate([v_pos.ravel(), v_neg.ravel()])
    flat = np.concatenate([layer.pair_grids()[0].flat(xbar.geometry), layer.pair_grids()[1].flat(xbar.geometry)])
    _, reset_cells, reset_v, reset_gate, reset_w = pulses[0][1:]
    np.testing.assert_array_equal(reset_cells, flat[dv < 0])
    assert np.all(reset_v == p.v_reset) and np.all(reset_gate == p.reset_gate) and np.all(reset_w == p.width_s)
    _, set_cells, set_v, set_gate, _ = pulses[1][1:]
    np.testing.assert_array_equal(set_cells, flat[dv != 0])
    np.testing.assert_allclose(set_gate, np.clip(v_last + dv, p.gate_min, p.gate_max)[dv != 0])
    assert np.all(set_v == p.v_set) and set_gate.max() == p.gate_max     # 2.4 + 0.15 clipped to 2.5
    assert eng.pulses == (dv < 0).sum() + (dv != 0).sum() and eng.updates == np.count_nonzero(delta)
    # state restores without touching the chip
    n_read = xbar.n_read
    again = UpdateEngine(layer, p, eng.state())
    assert xbar.n_read == n_read
    np.testing.assert_array_equal(again.v_gate_pos, eng.v_gate_pos)
    with pytest.raises(DataError, match="lacks v_gate_neg"):
        UpdateEngine(layer, p, {"g_pos": eng.g_pos, "g_neg": eng.g_neg, "v_gate_pos": v_pos, "pulses": 0,
                                "updates": 0})
