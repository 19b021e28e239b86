"""Wang 2019 software twins: weight counts, a naive loop reference for both forward passes
(asymmetric 'same' padding, gate order), finite-difference gradients of every weight (BPTT
over 3 steps), the matmul hook, backward with given weights, RMSprop and a short training."""
import numpy as np
import pytest

from hil.errors import ConfigError, DataError
from hil.wang2019 import data as wd
from hil.wang2019.nets import CELLS_PER_WEIGHT, WangCNN, WangConvLSTM, softmax_xent_sum
from hil.wang2019.optim import RMSprop
from hil.wang2019.train import train_software


# ---------------------------------------------------------------------------- naive references
def _conv_ref(x, k, pad_before, pad_after):
    """x (C, H, W), k (K, C, kh, kw): stride-1 correlation with explicit zero padding."""
    c, h, w = x.shape
    kk, _, kh, kw = k.shape
    xp = np.zeros((c, h + pad_before + pad_after, w + pad_before + pad_after))
    xp[:, pad_before:pad_before + h, pad_before:pad_before + w] = x
    oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = np.zeros((kk, oh, ow))
    for o in range(kk):
        for r in range(oh):
            for s in range(ow):
                out[o, r, s] = np.sum(xp[:, r:r + kh, s:s + kw] * k[o])
    return out


def _pool_ref(a):
    c, h, w = a.shape
    return a.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))


def _kernels(wmat, c, kh, kw):
    """Matrix (C*kh*kw, K) with rows in (c, i, j) order -> kernels (K, C, kh, kw)."""
    return wmat.T.reshape(-1, c, kh, kw)


def _cnn_ref(net, x):
    w = net.weights
    a1 = np.maximum(_conv_ref(x[None], _kernels(w["conv1"], 1, 3, 3), 1, 1), 0)
    z2 = _conv_ref(a1, _kernels(w["conv2"], 15, 2, 2), 0, 1)       # 'same': 0 before, 1 after
    assert z2.shape == (4, 8, 8)
    return _pool_ref(z2).reshape(-1) @ w["dense"]


def _sig(z):
    return 1 / (1 + np.exp(-z))


def _lstm_ref(net, xs):
    w = net.weights["lstm"]
    kx, kh = _kernels(w[:9], 1, 3, 3), _kernels(w[9:], 5, 2, 2)    # (20, 1, 3, 3), (20, 5, 2, 2)
    h = np.zeros((5, 6, 6))
    c = np.zeros((5, 6, 6))
    out = []
    for t in range(3):
        z = _conv_ref(xs[t][None], kx, 0, 0) + _conv_ref(h, kh, 0, 1)
        a, i, f, o = np.tanh(z[0:5]), _sig(z[5:10]), _sig(z[10:15]), _sig(z[15:20])
        c = i * a + f * c
        h = o * np.tanh(c)
        out.append(_pool_ref(h).reshape(-1) @ net.weights["dense"])
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_weight_counts_and_cells():
    cnn, lstm = WangCNN(), WangConvLSTM()
    assert cnn.weight_specs() == [("conv1", (9, 15)), ("conv2", (60, 4)), ("dense", (64, 10))]
    assert lstm.weight_specs() == [("lstm", (29, 20)), ("dense", (45, 6))]
    assert cnn.n_weights == 1015 and lstm.n_weights == 850
    assert [w.shape for _, w in cnn.weight_matrices()] == [s for _, s in cnn.weight_specs()]
    assert CELLS_PER_WEIGHT == 4 and lstm.n_cells == 3400 and cnn.n_cells == 4060
    # The authors' placed blocks: 4,080 and 3,400 cells, each at least 4 cells per weight.
    for net, total in ((cnn, 4080), (lstm, 3400)):
        assert sum(r * c for r, c in net.PAPER_BLOCKS.values()) == total
        for name, (rows, cols) in net.weight_specs():
            br, bc = net.PAPER_BLOCKS[name]
            assert br * bc >= CELLS_PER_WEIGHT * rows * cols


def test_cnn_forward_matches_naive_loops(rng):
    net = WangCNN(seed=3)
    x = rng.uniform(-0.2, 0.2, (4, 8, 8))
    logits, _ = net.forward(x)
    ref = np.stack([_cnn_ref(net, xi) for xi in x])
    np.testing.assert_allclose(logits, ref, rtol=1e-12, atol=1e-12)


def test_convlstm_forward_matches_naive_loops(rng):
    net = WangConvLSTM(seed=3)
    net.weights = {k: 3 * v for k, v in net.weights.items()}   # saturate gates a little
    xs = rng.uniform(-0.2, 0.2, (3, 3, 8, 8))
    step_logits, _ = net.forward(xs, all_steps=True)
    assert len(step_logits) == 3
    for t in range(3):
        ref = np.stack([_lstm_ref(net, s)[t] for s in xs])
        np.testing.assert_allclose(step_logits[t], ref, rtol=1e-12, atol=1e-12)
    last, _ = net.forward(xs)
    assert len(last) == 1 and np.array_equal(last[0], step_logits[2])


def _fd_check(net, x, y, eps=1e-6):
    """Central differences of the summed loss for every weight against backward."""
    _, grads, _ = net.loss_and_grads(x, y)
    for name, w in net.weights.items():
        num = np.empty_like(w)
        flat, nflat = w.reshape(-1), num.reshape(-1)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + eps
            lp = net.loss_and_grads(x, y)[0]
            flat[k] = old - eps
            lm = net.loss_and_grads(x, y)[0]
            flat[k] = old
            nflat[k] = (lp - lm) / (2 * eps)
        scale = np.abs(num).max()
        assert scale > 1e-3, name
        np.testing.assert_allclose(grads[name], num, rtol=0, atol=1e-6 * scale, err_msg=name)


def test_cnn_gradient_every_weight(rng):
    net = WangCNN(seed=1)
    x = rng.uniform(-0.2, 0.2, (3, 8, 8))
    _fd_check(net, x, np.array([0, 4, 9]))


@pytest.mark.parametrize("loss_steps", ["last", "all"])
def test_convlstm_gradient_every_weight_bptt(rng, loss_steps):
    net = WangConvLSTM(seed=1, loss_steps=loss_steps)
    net.weights = {k: 2 * v for k, v in net.weights.items()}
    xs = rng.uniform(-0.2, 0.2, (3, 3, 8, 8))
    y = np.array([0, 3, 5])
    _fd_check(net, xs, y)
    # BPTT reaches the recurrent kernel: frame 1 alone changes the last-step output
    xs2 = xs.copy()
    xs2[:, 0] = 0.0
    assert not np.allclose(net.forward(xs2)[0][-1], net.forward(xs)[0][-1])
    assert np.abs(net.loss_and_grads(xs, y)[1]["lstm"][9:]).max() > 1e-4


def test_summed_loss_is_sum_of_samples(rng):
    net = WangCNN(seed=2)
    x = rng.uniform(-0.2, 0.2, (5, 8, 8))
    y = np.array([1, 2, 3, 4, 5])
    total, grads, _ = net.loss_and_grads(x, y)
    parts = [net.loss_and_grads(x[i:i + 1], y[i:i + 1]) for i in range(5)]
    assert total == pytest.approx(sum(p[0] for p in parts), rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], sum(p[1][name] for p in parts), atol=1e-12)
    loss, d = softmax_xent_sum(np.zeros((2, 10)), np.array([0, 1]))
    assert loss == pytest.approx(2 * np.log(10))
    np.testing.assert_allclose(d.sum(axis=1), 0, atol=1e-15)


def test_matmul_hook_and_backward_with_given_weights(rng):
    net = WangCNN(seed=4)
    x = rng.uniform(-0.2, 0.2, (2, 8, 8))
    calls = []

    def mm(name, X, W):
        calls.append((name, X.shape, W.shape))
        return X @ W * (0.5 if name == "dense" else 1.0)

    logits, cache = net.forward(x, matmul=mm)
    assert calls == [("conv1", (128, 9), (9, 15)), ("conv2", (128, 60), (60, 4)),
                     ("dense", (2, 64), (64, 10))]
    np.testing.assert_allclose(logits, 0.5 * net.forward(x)[0], rtol=1e-12)
    d = rng.standard_normal((2, 10))
    g1 = net.backward(d, cache)
    doubled = {k: 2 * v for k, v in net.weights.items()}
    g2 = net.backward(d, cache, weights=doubled)          # e.g. the last read-back weights
    np.testing.assert_allclose(g2["dense"], g1["dense"], rtol=1e-12)
    np.testing.assert_allclose(g2["conv2"], 2 * g1["conv2"], rtol=1e-12)
    np.testing.assert_allclose(g2["conv1"], 4 * g1["conv1"], rtol=1e-12)
    lstm = WangConvLSTM()
    names = []
    lstm.forward(rng.uniform(-0.2, 0.2, (2, 3, 8, 8)),
                 matmul=lambda n, X, W: names.append((n, X.shape)) or X @ W, all_steps=True)
    assert names == [("lstm", (72, 29)), ("dense", (2, 45))] * 3


def test_bad_inputs_are_one_line_errors():
    net = WangCNN()
    with pytest.raises(DataError, match=r"input must be \(N, 8, 8\)"):
        net.forward(np.zeros((2, 28, 28)))
    bad = np.zeros((2, 8, 8))
    bad[1, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        net.forward(bad)
    with pytest.raises(DataError, match=r"labels must be 2 integers in 0\.\.9"):
        net.loss_and_grads(np.zeros((2, 8, 8)), np.array([0, 10]))
    with pytest.raises(DataError, match="layer 'dense'"):
        net.backward(np.zeros((1, 10)), net.forward(np.zeros((1, 8, 8)))[1],
                     weights={"conv1": np.zeros((9, 15)), "conv2": np.zeros((60, 4))})
    with pytest.raises(ConfigError, match="loss_steps"):
        WangConvLSTM(loss_steps="first")
    with pytest.raises(ConfigError, match="lr"):
        RMSprop(lr=float("nan"))
    with pytest.raises(ConfigError, match="needs inputs"):
        train_software(WangConvLSTM(), wd.WangData(np.zeros((2, 8, 8)), np.zeros(2, int),
                                                   np.zeros((1, 8, 8)), np.zeros(1, int), 10,
                                                   "t"), epochs=1)


def test_rmsprop_matches_the_authors_formula():
    opt = RMSprop()
    p = {"w": np.array([1.0, -2.0])}
    g1, g2 = np.array([0.5, -1.0]), np.array([0.1, 0.0])
    opt.step(p, {"w": g1})
    ms = 0.1 * g1 ** 2
    expect = np.array([1.0, -2.0]) - 0.01 * g1 / (np.sqrt(ms) + 1e-8)
    np.testing.assert_allclose(p["w"], expect, rtol=1e-14)
    d = opt.deltas({"w": g2})
    ms = 0.9 * ms + 0.1 * g2 ** 2
    np.testing.assert_allclose(d["w"], -0.01 * g2 / (np.sqrt(ms) + 1e-8), rtol=1e-14)
    assert set(opt.state()) == {"w"}


@pytest.fixture(scope="module")
def digits8():
    mp = pytest.MonkeyPatch()
    mp.delenv("HIL_MNIST_DIR", raising=False)
    try:
        yield wd.load_mnist8(seed=0)
    finally:
        mp.undo()


def test_short_software_training_beats_chance(digits8):
    small = wd.WangData(digits8.x_train[:600], digits8.y_train[:600], digits8.x_test,
                        digits8.y_test, 10, "first 600")
    net = WangCNN()
    res = train_software(net, small, epochs=1, batch=20, seed=0)
    assert res.updates == 30 and len(res.losses) == 30 and len(res.test_acc) == 1
    assert res.test_acc[0] > 0.5                          # chance is 0.1
    assert np.mean(res.losses[-5:]) < 0.7 * np.mean(res.losses[:5])
    again = train_software(WangCNN(), small, epochs=1, batch=20, seed=0)
    assert again.losses == res.losses                     # seeded, no shuffling

    seqs = wd.sequences_from(digits8, n_train=600, n_test=300, seed=0)
    lstm = WangConvLSTM()
    r = train_software(lstm, seqs, epochs=1, batch=20, seed=0)
    assert len(r.test_acc[0]) == 3
    assert r.test_acc[0][2] > 0.5                         # chance is 1/6
