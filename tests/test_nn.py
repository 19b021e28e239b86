"""numpy NN core (gradients against finite differences, quantization) and the mCNN."""
import numpy as np
import pytest

from hil.yao2020 import mcnn as M
from hil.nn import core as nn
from hil.nn.datasets import Dataset, load_embedded
from hil.errors import Cancelled, DataError
from hil.progress import CancelToken


def _numgrad(f, x, eps=1e-6, n=25, seed=0):
    """Central finite differences of scalar f at n random coordinates of x (in place)."""
    rng = np.random.default_rng(seed)
    idx = [tuple(int(rng.integers(s)) for s in x.shape) for _ in range(n)]
    out = []
    for i in idx:
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        out.append((fp - fm) / (2 * eps))
    return idx, np.array(out)


def _naive_conv(x, w, pad):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = xp.shape
    k, _, kh, kw = w.shape
    out = np.zeros((n, k, h - kh + 1, wd - kw + 1))
    for a in range(out.shape[2]):
        for b in range(out.shape[3]):
            out[:, :, a, b] = np.einsum("ncij,kcij->nk", xp[:, :, a:a + kh, b:b + kw], w)
    return out


# ---------------------------------------------------------------------------- conv
@pytest.mark.parametrize("pad", [0, 1])
def test_im2col_order_and_conv_match_naive(pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    cols = nn.im2col(x, 3, 3, pad)
    oh, ow = nn.conv_output_size(6, 5, 3, 3, pad)
    assert cols.shape == (2 * oh * ow, 27)
    # first row, column (c, i, j) is x_padded[0, c, i, j]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    np.testing.assert_array_equal(cols[0], xp[0, :, :3, :3].ravel())
    out, _ = nn.conv2d_forward(x, w, pad)
    np.testing.assert_allclose(out, _naive_conv(x, w, pad), atol=1e-12)


@pytest.mark.parametrize("pad,stride", [((1, 0, 2, 1), 1), ((0, 2, 1, 0), 2), (1, 3)])
def test_im2col_with_stride_and_asymmetric_padding_and_its_adjoint(pad, stride):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 6))
    cols = nn.im2col(x, 3, 2, pad, stride)
    t, b, l, r = nn.conv_padding(pad)
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    oh, ow = nn.conv_output_size(7, 6, 3, 2, pad, stride)
    assert cols.shape == (2 * oh * ow, 3 * 6)
    np.testing.assert_array_equal(cols[oh * ow + ow + 1], xp[1, :, stride:stride + 3, stride:stride + 2].ravel())
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * nn.col2im(c, x.shape, 3, 2, pad, stride)))
    with pytest.raises(ValueError, match="padding"):
        nn.im2col(x, 3, 3, (1, 1))


def test_col2im_is_adjoint_of_im2col():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 5, 5))
    c = rng.standard_normal((2 * 25, 18))
    lhs = np.sum(nn.im2col(x, 3, 3, 1) * c)
    rhs = np.sum(x * nn.col2im(c, x.shape, 3, 3, 1))
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize("pad", [0, 1])
def test_conv_backward_matches_finite_differences(pad):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((2, 4, *nn.conv_output_size(5, 5, 3, 3, pad)))
    f = lambda: float(np.sum(nn.conv2d_forward(x, w, pad)[0] * g))  # noqa: E731
    _, cache = nn.conv2d_forward(x, w, pad)
    dx, dw = nn.conv2d_backward(g, cache)
    for arr, grad in ((x, dx), (w, dw)):
        idx, num = _numgrad(f, arr)
        np.testing.assert_allclose([grad[i] for i in idx], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("k", [2, 3])
def test_maxpool_forward_backward(k):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6))       # continuous values: no ties
    out, cache = nn.maxpool2d_forward(x, k)
    ref = x.reshape(2, 3, 6 // k, k, 6 // k, k).max(axis=(3, 5))
    np.testing.assert_array_equal(out, ref)
    g = rng.standard_normal(out.shape)
    dx = nn.maxpool2d_backward(g, cache)
    f = lambda: float(np.sum(nn.maxpool2d_forward(x, k)[0] * g))  # noqa: E731
    idx, num = _numgrad(f, x, n=40)
    np.testing.assert_allclose([dx[i] for i in idx], num, atol=1e-8)
    assert np.count_nonzero(dx) == out.size
    with pytest.raises(ValueError):
        nn.maxpool2d_forward(np.zeros((1, 1, 5, 5)), 2)


def test_fc_relu_softmax_gradients():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 7))
    w = rng.standard_normal((3, 7))
    y = np.array([0, 2, 1, 1, 0])

    def loss():
        h, _ = nn.relu_forward(x)
        return nn.softmax_cross_entropy(nn.fc_forward(h, w)[0], y)[0]

    h, mask = nn.relu_forward(x)
    logits, cache = nn.fc_forward(h, w)
    val, dlogits = nn.softmax_cross_entropy(logits, y)
    p = nn.softmax(logits)
    assert val == pytest.approx(-np.mean(np.log(p[np.arange(5), y])))
    dh, dw = nn.fc_backward(dlogits, cache)
    dx = nn.relu_backward(dh, mask)
    for arr, grad in ((x, dx), (w, dw)):
        idx, num = _numgrad(loss, arr)
        np.testing.assert_allclose([grad[i] for i in idx], num, rtol=1e-5, atol=1e-8)


def test_full_mcnn_backward_matches_finite_differences():
    rng = np.random.default_rng(5)
    params = {k: v.astype(np.float64) for k, v in M.init_params(0).items()}
    x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    y = np.array([1, 7, 3])
    loss = lambda: nn.softmax_cross_entropy(M._forward_train(params, x, None)[0], y)[0]  # noqa
    logits, cache = M._forward_train(params, x, None)
    grads = M._backward_train(nn.softmax_cross_entropy(logits, y)[1], cache)
    for name in ("c1", "c3", "fc"):
        idx, num = _numgrad(loss, params[name], n=12, seed=len(name))
        np.testing.assert_allclose([grads[name][i] for i in idx], num, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------- optimizer, batches
def test_adam_minimizes_and_is_deterministic():
    def run():
        p = {"w": np.array([3.0, -2.0])}
        opt = nn.Adam(p, lr=0.1)
        for _ in range(300):
            opt.step({"w": 2 * (p["w"] - np.array([1.0, 0.5]))})
        return p["w"]
    a, b = run(), run()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, [1.0, 0.5], atol=1e-2)


def test_minibatches_cover_and_are_seeded():
    got = list(nn.minibatches(10, 4, seed=7))
    assert [len(b) for b in got] == [4, 4, 2]
    assert sorted(np.concatenate(got).tolist()) == list(range(10))
    np.testing.assert_array_equal(np.concatenate(got),
                                  np.concatenate(list(nn.minibatches(10, 4, seed=7))))
    assert not np.array_equal(np.concatenate(got),
                              np.concatenate(list(nn.minibatches(10, 4, seed=8))))


# ---------------------------------------------------------------------------- quantization
def test_quantize_weights_15_levels():
    w = np.array([-0.7, -0.33, 0.0, 0.049, 0.051, 0.2, 0.36])
    q, s = nn.quantize_weights(w)
    assert s == pytest.approx(0.1)
    np.testing.assert_array_equal(q, [-7, -3, 0, 0, 1, 2, 4])
    assert q.min() >= -7 and q.max() <= 7
    rng = np.random.default_rng(0)
    w = rng.standard_normal(1000)
    q, s = nn.quantize_weights(w)
    assert set(np.unique(q)) <= set(range(-7, 8)) and abs(q).max() == 7
    assert np.max(np.abs(q * s - w)) <= s / 2 + 1e-12
    np.testing.assert_allclose(nn.fake_quant_weights(w.astype(np.float32)), q * s, rtol=1e-6)
    q0, s0 = nn.quantize_weights(np.zeros(4))
    assert s0 == 1.0 and not q0.any()


def test_quantize_act_rounds_and_clips():
    a = np.array([-1.0, 0.0, 0.24, 0.26, 10.0, 25.5, 99.0])
    codes = nn.quantize_act(a, 0.1)
    np.testing.assert_array_equal(codes, [0, 0, 2, 3, 100, 255, 255])
    # exact ties round up whatever the float summation order
    np.testing.assert_array_equal(nn.quantize_act(np.array([2.5, 2.5 - 4e-16, 3.5]), 1.0),
                                  [3, 3, 4])
    fq, mask = nn.fake_quant_act(a.astype(np.float32), 0.1)
    np.testing.assert_allclose(fq, codes * 0.1, rtol=1e-6)
    np.testing.assert_array_equal(mask, [False, True, True, True, True, True, False])


# ---------------------------------------------------------------------------- MCNN
def test_mcnn_shapes_and_weight_counts():
    m = M.MCNN(seed=0)
    assert m.params["c1"].size + m.params["c3"].size == 936 and m.params["fc"].size == 1920
    assert all(v.dtype == np.float32 for v in m.params.values())
    lv = m.weight_levels("c3")
    assert lv.shape == (12, 8, 3, 3) and lv.min() >= -7 and lv.max() <= 7
    np.testing.assert_allclose(m.quantized_weights("fc"), m.weight_levels("fc")
                               * m.weight_scale("fc"))


def test_mcnn_validation_names_layer():
    good = M.init_params(0)
    with pytest.raises(DataError, match="'c3'.*shape"):
        M.MCNN({**good, "c3": np.zeros((12, 8, 2, 2))})
    bad = {k: v.copy() for k, v in good.items()}
    bad["fc"][3, 4] = np.nan
    with pytest.raises(DataError, match="'fc'.*NaN"):
        M.MCNN.from_arrays(bad, {"act_scale_c1": 0.01, "act_scale_c3": 0.01})
    bad["fc"][3, 4] = np.inf
    with pytest.raises(DataError, match="'fc'"):
        M.MCNN(bad)
    with pytest.raises(DataError, match="lack"):
        M.MCNN({"c1": good["c1"]})
    with pytest.raises(DataError, match="activation scale"):
        M.MCNN(good, {"c1": 0.01, "c3": float("nan")})
    with pytest.raises(DataError, match="calibrate"):
        M.MCNN(good).forward(np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError, match="28, 28"):
        M.MCNN(good, {"c1": 0.01, "c3": 0.01}).forward(np.zeros((1, 28, 27), np.uint8))


@pytest.fixture(scope="module")
def trained():
    """A small, quick model on 1,500 embedded digits (shared by the tests below)."""
    ds = load_embedded(seed=0)
    small = ds.subset(1500 / 4000, seed=0)
    small = Dataset(small.x_train, small.y_train, ds.x_test[:500], ds.y_test[:500], "small")
    model, hist = M.train_mcnn(small, epochs=3, qat_epochs=1, seed=0, calib_images=500,
                               eval_images=500)
    return small, model, hist


def test_training_small_subset_well_above_chance(trained):
    ds, model, hist = trained
    assert [h["phase"] for h in hist] == ["float", "float", "qat"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert hist[-1]["test_acc_quant"] > 0.8 and hist[-1]["test_acc"] > 0.8
    assert model.accuracy(ds.x_test, ds.y_test) == pytest.approx(hist[-1]["test_acc_quant"])
    assert set(hist[-1]) >= {"loss", "train_acc", "train_acc_quant", "test_acc",
                             "test_acc_quant", "epoch", "seconds"}


def test_features_and_hardware_helpers_reproduce_forward(trained):
    ds, model, _ = trained
    x = ds.x_test[:40]
    f1 = model.features(x, upto="c1")
    f3 = model.features(x, upto="c3")
    assert f1.shape == (40, 8, 14, 14) and f3.shape == (40, 192)
    assert f1.min() >= 0 and f1.max() <= 255 and f3.max() <= 255 and f3.max() > 50
    # the same layers by hand: patches x real weights -> ReLU, pool, requantize -> next layer -> FC
    p1 = nn.im2col(x[:, None].astype(np.int64), 3, 3, 1)
    assert p1.shape == (40 * 784, 9) and p1.dtype == np.int64
    real1 = (p1 @ model.quantized_weights("c1").reshape(8, -1).T) * M.INPUT_CODE_SCALE
    maps1 = real1.reshape(40, 28, 28, 8).transpose(0, 3, 1, 2)
    c1 = nn.quantize_act(nn.maxpool2d_forward(np.maximum(maps1, 0), 2)[0], model.act_scale["c1"])
    np.testing.assert_array_equal(c1, f1)
    p3 = nn.im2col(c1, 3, 3, 0)
    assert p3.shape == (40 * 144, 72)
    real3 = (p3 @ model.quantized_weights("c3").reshape(12, -1).T) * model.act_scale["c1"]
    maps3 = real3.reshape(40, 12, 12, 12).transpose(0, 3, 1, 2)
    c3 = nn.quantize_act(nn.maxpool2d_forward(np.maximum(maps3, 0), 3)[0], model.act_scale["c3"])
    np.testing.assert_array_equal(c3.reshape(40, -1), f3)
    logits = (c3.reshape(40, -1) * model.act_scale["c3"]) @ model.quantized_weights("fc").T
    np.testing.assert_allclose(logits, model.forward(x), rtol=1e-12)
    # the network's stages compose to the whole
    net = model.network()
    np.testing.assert_array_equal(net.forward(f3, start="fc"), model.forward(x))
    # the QAT training forward computes the same function as the integer path
    qat_logits, _ = M._forward_train(model.params, x, model.act_scale)
    agree = np.mean(qat_logits.argmax(1) == logits.argmax(1))
    assert agree >= 0.95
    with pytest.raises(DataError, match="convolution 'c3' takes"):
        net.forward(np.zeros((1, 8, 13, 14), np.int64), start="c3")


def test_quantized_differs_from_float_but_agrees_mostly(trained):
    ds, model, _ = trained
    qf = model.forward(ds.x_test, quantized=False)
    qq = model.forward(ds.x_test, quantized=True)
    assert not np.allclose(qf, qq)
    assert np.mean(qf.argmax(1) == qq.argmax(1)) > 0.9


def test_round_trip_through_arrays(trained):
    _, model, _ = trained
    arrays, attrs = model.to_arrays(), model.attrs()
    assert set(arrays) == {"c1", "c3", "fc"} and attrs["model"] == "mcnn-yao2020"
    assert all(isinstance(v, (int, float, str)) for v in attrs.values())
    back = M.MCNN.from_arrays(arrays, attrs)
    x = load_embedded(seed=0).x_test[:30]
    np.testing.assert_array_equal(back.forward(x), model.forward(x))
    arrays["c1"][0, 0, 0, 0] += 1.0                    # a copy: model unchanged
    assert not np.array_equal(arrays["c1"], model.params["c1"])
    with pytest.raises(DataError, match="not 'mcnn-yao2020'"):
        M.MCNN.from_arrays(arrays, {"model": "resnet"})


def test_training_is_deterministic_and_cancellable():
    full = load_embedded(seed=0).subset(0.05, seed=0)         # 200 training images
    ds = Dataset(full.x_train, full.y_train, full.x_test[:50], full.y_test[:50], "tiny")
    kw = dict(epochs=1, batch=50, seed=4, calib_images=100, eval_images=50)
    (m1, h1), (m2, h2) = M.train_mcnn(ds, **kw), M.train_mcnn(ds, **kw)
    for k in m1.params:
        np.testing.assert_array_equal(m1.params[k], m2.params[k])
    assert h1[0]["loss"] == h2[0]["loss"] and m1.act_scale == m2.act_scale
    m3, _ = M.train_mcnn(ds, **{**kw, "seed": 5})
    assert not np.array_equal(m3.params["fc"], m1.params["fc"])
    token = CancelToken()
    seen = []

    def progress(p):
        seen.append(p)
        if p.done == 2:
            token.cancel("test stop")
    with pytest.raises(Cancelled, match="test stop"):
        M.train_mcnn(ds, **kw, progress=progress, cancel=token)
    assert len(seen) == 2 and seen[0].unit == "batches"


def _tiny():
    full = load_embedded(seed=0).subset(0.05, seed=0)         # 200 training images
    return Dataset(full.x_train, full.y_train, full.x_test[:60], full.y_test[:60], "tiny")


def test_eval_subset_size_does_not_change_the_trained_model():
    ds = _tiny()
    kw = dict(epochs=2, qat_epochs=1, batch=50, seed=3, calib_images=100)
    (m1, h1), (m2, h2) = M.train_mcnn(ds, eval_images=20, **kw), M.train_mcnn(ds, eval_images=150, **kw)
    for k in m1.params:
        np.testing.assert_array_equal(m1.params[k], m2.params[k])
    assert m1.act_scale == m2.act_scale and h1[-1]["loss"] == h2[-1]["loss"]
    # the subsets differ, so their scores may; each is a fraction of its own size
    tr20, te20 = M.eval_subsets(ds, 20, 3)
    tr150, te150 = M.eval_subsets(ds, 150, 3)
    assert (tr20.size, te20.size, tr150.size, te150.size) == (20, 20, 150, 60)
    assert all(round(h["train_acc_quant"] * 20) == h["train_acc_quant"] * 20 for h in h1)
    m3, h3 = M.train_mcnn(ds, eval_images=20, **{**kw, "calib_images": 150})  # calibration is not eval
    assert h3[0]["loss"] == h1[0]["loss"] and m3.act_scale != m1.act_scale


def test_shift_augmentation_stays_within_two_pixels_and_keeps_labels():
    rng = np.random.default_rng(0)
    x = np.zeros((400, 28, 28), np.uint8)
    x[:, 13, 14] = 255                                  # one marked pixel per image
    y = rng.integers(0, 10, 400)
    out = M.shift_images(x, 2, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.uint8
    pos = np.argwhere(out == 255)
    assert len(pos) == 400 and np.array_equal(pos[:, 0], np.arange(400))  # moved, never lost
    dy, dx = pos[:, 1] - 13, pos[:, 2] - 14
    assert dy.min() == dx.min() == -2 and dy.max() == dx.max() == 2       # every offset in -2..2 used
    assert M.shift_images(x, 0, rng) is x
    # the training loop shifts images only: the labels it trains on are the dataset's
    ds = _tiny()
    seen = []
    orig = M.nn.softmax_cross_entropy
    try:
        M.nn.softmax_cross_entropy = lambda logits, t: (seen.append(t.copy()), orig(logits, t))[1]
        M.train_mcnn(ds, epochs=1, batch=50, seed=0, calib_images=50, eval_images=10)
    finally:
        M.nn.softmax_cross_entropy = orig
    assert np.array_equal(np.sort(np.concatenate(seen)), np.sort(ds.y_train))
    assert y.shape == (400,)


def test_qat_weights_take_exactly_15_levels(trained):
    _, model, hist = trained
    assert hist[-1]["phase"] == "qat"
    for name in ("c1", "c3", "fc"):
        q = model.weight_levels(name)
        assert set(np.unique(q)) <= set(range(-7, 8)) and np.abs(q).max() == 7   # full range, no other level
        np.testing.assert_allclose(model.quantized_weights(name), q * model.weight_scale(name))
    assert len(np.unique(model.weight_levels("fc"))) >= 14    # the grid is used (one end may stay empty)
    # what QAT trained through is what the chip gets: the fake-quantized weights are those levels
    np.testing.assert_allclose(nn.fake_quant_weights(model.params["fc"]), model.quantized_weights("fc"), rtol=1e-6)


def test_maxpool_routes_ties_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 4))
    x[0, 0] = [[1, 3, 5, 5], [3, 2, 5, 5]]
    out, cache = nn.maxpool2d_forward(x, 2)
    assert out.tolist() == [[[[3, 5]]]]
    dx = nn.maxpool2d_backward(np.array([[[[1.0, 2.0]]]]), cache)
    assert dx.tolist() == [[[[0, 1, 2, 0], [0, 0, 0, 0]]]]
