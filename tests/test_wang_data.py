"""Wang 2019 data: the 8x8 reduction of known images, volts, the embedded and IDX-directory
loaders, the MNIST-sequence generator (shapes, seeds, class balance, frame content) and
one-line errors for wrong shapes and NaN."""
import numpy as np
import pytest

from hil.nn import datasets
from hil.errors import DataError
from hil.wang2019 import data as wd


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch):
    monkeypatch.delenv(datasets.ENV_DIR, raising=False)


@pytest.fixture(scope="module")
def digits8():
    mp = pytest.MonkeyPatch()
    mp.delenv(datasets.ENV_DIR, raising=False)
    try:
        yield wd.load_mnist8(seed=0)
    finally:
        mp.undo()


# ---------------------------------------------------------------------------- 8x8 reduction
def test_reduction_of_known_images():
    img = np.zeros((3, 28, 28), dtype=np.uint8)
    img[0, 4:7, :] = 255              # crop rows 0..2: bin 0 = rows 0, 1 and half of row 2
    img[1, 4, 4] = 255                # one pixel in the first bin: 1 / 6.25
    img[2, 0:4, :] = 255              # outside the 20x20 crop
    img[2, 24:, :] = 255
    out = wd.reduce_8x8(img)
    assert out.shape == (3, 8, 8) and out.dtype == np.float64
    np.testing.assert_allclose(out[0, 0], 1.0)
    np.testing.assert_allclose(out[0, 1], 0.2)
    np.testing.assert_allclose(out[0, 2:], 0.0)
    expect = np.zeros((8, 8))
    expect[0, 0] = 0.16
    np.testing.assert_allclose(out[1], expect, atol=1e-15)
    np.testing.assert_allclose(out[2], 0.0)


def test_reduction_preserves_area_and_constants():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (4, 28, 28)).astype(np.uint8)
    out = wd.reduce_8x8(img)
    crop = img[:, 4:24, 4:24] / 255.0
    np.testing.assert_allclose(out.sum(axis=(1, 2)) * 6.25, crop.sum(axis=(1, 2)))
    np.testing.assert_allclose(wd.reduce_8x8(np.full((1, 28, 28), 255)), 1.0)
    np.testing.assert_allclose(wd.to_volts([0.0, 0.5, 1.0]), [-0.2, 0.0, 0.2])


def test_reduction_rejects_bad_images():
    with pytest.raises(DataError, match=r"need \(N, 28, 28\) images.*\(2, 27, 28\)"):
        wd.reduce_8x8(np.zeros((2, 27, 28)))
    bad = np.zeros((1, 28, 28))
    bad[0, 5, 5] = np.nan
    with pytest.raises(DataError, match="finite values in 0..255"):
        wd.reduce_8x8(bad)


# ---------------------------------------------------------------------------- loaders
def test_embedded_digits_8x8(digits8):
    d = digits8
    assert d.x_train.shape == (4000, 8, 8) and d.x_test.shape == (1000, 8, 8)
    assert d.n_classes == 10 and not d.is_sequence
    info = d.describe()
    assert info["train_per_class"] == [400] * 10 and info["test_per_class"] == [100] * 10
    assert d.x_train.min() >= -0.2 and d.x_train.max() <= 0.2
    assert d.x_train.min() == pytest.approx(-0.2) and d.x_train.max() > 0.15
    raw = datasets.load_embedded(seed=0)          # same order as the 28x28 source
    np.testing.assert_array_equal(d.y_train, raw.y_train)
    np.testing.assert_allclose(d.x_test[:5], wd.to_volts(wd.reduce_8x8(raw.x_test[:5])))


def test_mnist_directory_8x8(tmp_path):
    rng = np.random.default_rng(3)
    names = {k: v[0] for k, v in datasets.MNIST_FILES.items()}
    datasets.write_idx(tmp_path / names["train_images"],
                       rng.integers(0, 256, (12, 28, 28)).astype(np.uint8))
    datasets.write_idx(tmp_path / names["train_labels"], (np.arange(12) % 10).astype(np.uint8))
    datasets.write_idx(tmp_path / names["test_images"],
                       rng.integers(0, 256, (5, 28, 28)).astype(np.uint8))
    datasets.write_idx(tmp_path / names["test_labels"], np.arange(5).astype(np.uint8))
    d = wd.load_mnist8(tmp_path)
    assert d.x_train.shape == (12, 8, 8) and d.x_test.shape == (5, 8, 8)
    assert d.source.startswith("mnist-dir:")
    np.testing.assert_array_equal(d.y_test, np.arange(5))


def test_wrong_shapes_and_nan_are_one_line_errors(tmp_path):
    x, y = np.zeros((4, 8, 8)), np.zeros(4, dtype=np.int64)
    cases = [
        (dict(x_train=np.zeros((4, 8, 7))), r"inputs must be \(N, 8, 8\) digits or \(N, 3, 8, 8\)"),
        (dict(x_test=np.zeros((4, 3, 8, 8))), r"\(test\): inputs must have shape \(N, 8, 8\)"),
        (dict(y_train=np.zeros(3, dtype=np.int64)), r"4 inputs but labels of shape \(3,\)"),
        (dict(x_train=np.where(np.eye(8)[None] > 0, np.nan, x)), "NaN"),
        (dict(x_train=x + 0.5), r"beyond \+-0.2 V; scale 0..1 pixels with 0.4\*x - 0.2"),
        (dict(y_test=np.full(4, 10)), r"labels must be 0..9"),
    ]
    for change, msg in cases:
        args = dict(x_train=x, y_train=y, x_test=x, y_test=y)
        args.update(change)
        with pytest.raises(DataError, match=msg) as e:
            wd.WangData(**args, n_classes=10, source="unit")
        assert "\n" not in str(e.value)
    # an 8x8 data file: round trip, then a file of the wrong shape names the file
    good = wd.WangData(x, y, x[:2], y[:2], 10, "unit")
    back = wd.load_npz(wd.save_npz(tmp_path / "ok.npz", good))
    np.testing.assert_array_equal(back.x_test, good.x_test)
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((4, 28, 28)), y_train=y, x_test=x, y_test=y)
    with pytest.raises(DataError, match=r"bad\.npz.*\(4, 28, 28\)"):
        wd.load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "part.npz", x_train=x, y_train=y)
    with pytest.raises(DataError, match=r"part\.npz: missing array\(s\) x_test, y_test"):
        wd.load_npz(tmp_path / "part.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        wd.load_npz(tmp_path / "junk.npz")


# ---------------------------------------------------------------------------- MNIST-sequence
def _coded_frames():
    """Frames whose pixels encode (digit, image index): decodable after sequencing."""
    y = np.repeat(np.arange(10), 7)
    x = np.zeros((y.size, 8, 8))
    x[:, 0, 0] = y
    x[:, 0, 1] = np.arange(y.size)
    return x, y


def test_sequences_follow_their_ordering_and_are_balanced():
    x, y = _coded_frames()
    seqs, labels = wd.make_sequences(x, y, 600, seed=5, digits=(3, 7, 1))
    assert seqs.shape == (600, 3, 8, 8) and labels.shape == (600,)
    assert np.bincount(labels, minlength=6).tolist() == [100] * 6
    orders = [(3, 7, 1), (3, 1, 7), (7, 3, 1), (7, 1, 3), (1, 3, 7), (1, 7, 3)]
    np.testing.assert_array_equal(seqs[:, :, 0, 0], np.array(orders)[labels])
    idx = seqs[:, :, 0, 1].astype(int)
    np.testing.assert_array_equal(y[idx], seqs[:, :, 0, 0])      # frames are real images
    assert len(np.unique(idx)) == 21                             # every image of 3, 7, 1 used
    _, odd = wd.make_sequences(x, y, 13, seed=5)
    counts = np.bincount(odd, minlength=6)
    assert counts.sum() == 13 and counts.max() - counts.min() <= 1


def test_sequences_are_seeded(digits8):
    a = wd.sequences_from(digits8, n_train=120, n_test=60, seed=1)
    b = wd.sequences_from(digits8, n_train=120, n_test=60, seed=1)
    c = wd.sequences_from(digits8, n_train=120, n_test=60, seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.is_sequence and a.n_classes == 6 and a.x_test.shape == (60, 3, 8, 8)
    assert a.describe()["train_per_class"] == [20] * 6
    train_frames = {f.tobytes() for f in digits8.x_train}
    assert all(f.tobytes() in train_frames for f in a.x_train.reshape(-1, 8, 8))
    test_frames = {f.tobytes() for f in digits8.x_test}
    assert all(f.tobytes() in test_frames for f in a.x_test.reshape(-1, 8, 8))


def test_sequence_bad_arguments():
    x, y = _coded_frames()
    with pytest.raises(DataError, match="3 distinct classes"):
        wd.make_sequences(x, y, 6, 0, digits=(1, 1, 2))
    with pytest.raises(DataError, match="positive integer"):
        wd.make_sequences(x, y, 0, 0)
    with pytest.raises(DataError, match=r"no images of digit\(s\) \[9\]"):
        wd.make_sequences(x[y < 9], y[y < 9], 6, 0, digits=(0, 1, 9))
