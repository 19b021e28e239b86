"""Datasets: IDX files, MNIST directories, the embedded digits, download and selection."""
import fnmatch
import gzip
import hashlib
import io
import tomllib
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from hil.nn import datasets as dsm
from hil.nn.datasets import (Dataset, load_dataset, load_embedded, load_mnist_dir, read_idx,
                          write_idx)
from hil.errors import DataError


@pytest.fixture(scope="module")
def embedded():
    return load_embedded(seed=0)


def _write_mnist_dir(d, ds: Dataset, n_train: int, n_test: int, gz: bool = True,
                     dotted: bool = False):
    names = {k: v[0] for k, v in dsm.MNIST_FILES.items()}
    if dotted:
        names = {k: v.replace("-idx", ".idx") for k, v in names.items()}
    ext = ".gz" if gz else ""
    write_idx(d / (names["train_images"] + ext), ds.x_train[:n_train], gz=gz)
    write_idx(d / (names["train_labels"] + ext), ds.y_train[:n_train].astype(np.uint8), gz=gz)
    write_idx(d / (names["test_images"] + ext), ds.x_test[:n_test], gz=gz)
    write_idx(d / (names["test_labels"] + ext), ds.y_test[:n_test].astype(np.uint8), gz=gz)
    return d


# ---------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    floats = rng.standard_normal((3, 4)).astype(np.float32)
    for name, a in (("img", images), ("lab", labels), ("flt", floats)):
        back = read_idx(write_idx(tmp_path / name, a, gz=gz))
        assert back.dtype == a.dtype and back.shape == a.shape
        np.testing.assert_array_equal(back, a)
    raw = (tmp_path / "img").read_bytes()
    head = raw if not gz else gzip.decompress(raw)
    assert head[:4] == b"\x00\x00\x08\x03"
    assert (raw[:2] == b"\x1f\x8b") == gz


def test_gzip_detected_by_magic_not_extension(tmp_path):
    a = np.arange(20, dtype=np.uint8)
    write_idx(tmp_path / "plain.gz", a, gz=False)         # raw despite the name
    write_idx(tmp_path / "packed-ubyte", a, gz=True)      # gzip despite the name
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed-ubyte"), a)


def _idx_bytes(a):
    buf = io.BytesIO()
    buf.write(bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:-7], "truncated"),
    (lambda b: b + b"\x00\x01", "trailing"),
    (lambda b: b"\x00\x00\x07\x03" + b[4:], "magic"),
    (lambda b: b"\x12\x34" + b[2:], "magic"),
    (lambda b: b[:10], "truncated IDX header"),
    (lambda b: b[:2], "too short"),
    (lambda b: gzip.compress(b)[:-20], "gzip"),
])
def test_corrupt_idx_raises_dataerror_naming_file(tmp_path, corrupt, message):
    good = _idx_bytes(np.zeros((3, 28, 28), np.uint8))
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(corrupt(good))
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------------------- MNIST directory
def test_load_mnist_dir_and_dotted_raw_variants(tmp_path, embedded):
    for d in (tmp_path / "a", tmp_path / "b"):
        d.mkdir()
    _write_mnist_dir(tmp_path / "a", embedded, 30, 12)
    _write_mnist_dir(tmp_path / "b", embedded, 30, 12, gz=False, dotted=True)
    for d in (tmp_path / "a", tmp_path / "b"):
        ds = load_mnist_dir(d)
        assert (ds.n_train, ds.n_test) == (30, 12)
        np.testing.assert_array_equal(ds.x_train, embedded.x_train[:30])
        np.testing.assert_array_equal(ds.y_test, embedded.y_test[:12])
        assert ds.y_train.dtype == np.int64 and "mnist-dir" in ds.source


def test_missing_files_are_listed(tmp_path, embedded):
    _write_mnist_dir(tmp_path, embedded, 10, 5)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        load_mnist_dir(tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_mnist_dir(tmp_path / "nowhere")


def test_mismatched_counts_bad_labels_and_sizes(tmp_path, embedded):
    _write_mnist_dir(tmp_path, embedded, 10, 5)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(9, np.uint8), gz=True)
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        load_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(10, 11, np.uint8), gz=True)
    with pytest.raises(DataError, match="labels must be 0..9"):
        load_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(10, np.uint8), gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 27, 27), np.uint8), gz=True)
    with pytest.raises(DataError, match="28x28"):
        load_mnist_dir(tmp_path)


# ---------------------------------------------------------------------------- embedded data
def test_embedded_split_sizes_stratified_disjoint(embedded):
    d = embedded.describe()
    assert (d["n_train"], d["n_test"]) == (4000, 1000)
    assert d["train_per_class"] == [400] * 10 and d["test_per_class"] == [100] * 10
    assert embedded.x_train.dtype == np.uint8 and embedded.x_train.shape == (4000, 28, 28)
    assert embedded.x_train.max() == 255 and "embedded" in d["source"]
    train_rows = {r.tobytes() for r in embedded.x_train}
    assert not any(r.tobytes() in train_rows for r in embedded.x_test)
    assert len(set(embedded.y_train[:50].tolist())) > 5          # shuffled, not class-sorted


def test_embedded_deterministic_per_seed(embedded):
    again = load_embedded(seed=0)
    np.testing.assert_array_equal(again.x_train, embedded.x_train)
    np.testing.assert_array_equal(again.y_test, embedded.y_test)
    other = load_embedded(seed=1, test_per_class=50)
    assert other.n_test == 500 and other.n_train == 4500
    assert not np.array_equal(other.y_train[:4000], embedded.y_train)


def test_embedded_file_is_packaged_and_checked():
    path = dsm.embedded_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == dsm.EMBEDDED_SHA256
    root = Path(dsm.__file__).parents[2]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    rel = path.relative_to(Path(dsm.__file__).parent).as_posix()
    assert any(fnmatch.fnmatch(rel, pat) for pat in package_data["hil.nn"])   # in a wheel too


@pytest.mark.parametrize("content", [None, b"not the digits"])
def test_embedded_missing_or_damaged_says_how_to_fix(monkeypatch, tmp_path, content):
    bad = tmp_path / "mnist_5k.csv.gz"
    if content is not None:
        bad.write_bytes(content)
    monkeypatch.setattr(dsm, "EMBEDDED_PATH", bad)
    with pytest.raises(DataError) as e:
        load_embedded()
    msg = str(e.value)
    assert str(bad) in msg and "missing or damaged" in msg and "--data DIR" in msg and "\n" not in msg


def test_subset_stratified_deterministic(embedded):
    s = embedded.subset(0.1, seed=3)
    assert s.describe()["train_per_class"] == [40] * 10
    assert s.n_test == embedded.n_test and s.x_test is embedded.x_test
    np.testing.assert_array_equal(s.x_train, embedded.subset(0.1, seed=3).x_train)
    assert not np.array_equal(s.y_train, embedded.subset(0.1, seed=4).y_train) or \
        not np.array_equal(s.x_train, embedded.subset(0.1, seed=4).x_train)
    with pytest.raises(DataError):
        embedded.subset(0.0)


def test_dataset_validation():
    x = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(DataError, match="labels"):
        Dataset(x, np.zeros(2), x, np.zeros(3), "t")
    with pytest.raises(DataError, match="0..9"):
        Dataset(x, np.array([0, 1, 12]), x, np.zeros(3), "t")
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        Dataset(np.zeros((3, 28, 27)), np.zeros(3), x, np.zeros(3), "t")


# ---------------------------------------------------------------------------- load_dataset
def _no_network(*a, **k):
    raise AssertionError("the network must not be touched")


def test_load_dataset_default_is_embedded_and_offline(monkeypatch):
    monkeypatch.delenv(dsm.ENV_DIR, raising=False)
    monkeypatch.setattr(dsm.urllib.request, "urlopen", _no_network)
    ds = load_dataset(seed=2)
    assert (ds.n_train, ds.n_test) == (4000, 1000) and "seed 2" in ds.source


def test_load_dataset_from_dir_and_env_trains_on_those_counts(tmp_path, monkeypatch, embedded):
    from hil.yao2020.mcnn import train_mcnn
    monkeypatch.setattr(dsm.urllib.request, "urlopen", _no_network)
    _write_mnist_dir(tmp_path, embedded, 200, 50)
    monkeypatch.setenv(dsm.ENV_DIR, str(tmp_path))
    ds = load_dataset()
    assert (ds.n_train, ds.n_test) == (200, 50)
    batches = []
    model, hist = train_mcnn(ds, epochs=1, batch=50, progress=batches.append)
    assert batches[-1].total == 4 and batches[-1].done == 4           # 200 / 50 batches
    assert len(hist) == 1 and hist[0]["test_acc_quant"] * 50 == round(hist[0]["test_acc_quant"]
                                                                         * 50)
    assert model.predict(ds.x_test).shape == (50,)
    monkeypatch.delenv(dsm.ENV_DIR)
    assert load_dataset(tmp_path).n_train == 200


# ---------------------------------------------------------------------------- download
class _FakeResponse(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_download_verifies_checksums_and_writes_atomically(tmp_path, monkeypatch, embedded):
    src = tmp_path / "src"
    src.mkdir()
    _write_mnist_dir(src, embedded, 20, 10)
    files = {k: (b, n, hashlib.md5((src / (b + ".gz")).read_bytes()).hexdigest())
             for k, (b, n, _) in dsm.MNIST_FILES.items()}
    monkeypatch.setattr(dsm, "MNIST_FILES", files)
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return _FakeResponse((src / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(dsm.urllib.request, "urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    ds = load_dataset(download=True, cache_dir=cache)
    assert (ds.n_train, ds.n_test) == (20, 10) and len(urls) == 4
    assert sorted(p.name for p in cache.iterdir()) == sorted(b + ".gz" for b, _, _ in
                                                             files.values())
    dsm.download_mnist(cache)                     # verified files present: no new request
    assert len(urls) == 4


def test_download_checksum_mismatch_deletes_and_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(dsm.urllib.request, "urlopen",
                        lambda url, timeout: _FakeResponse(b"not mnist"))
    with pytest.raises(DataError, match="checksum mismatch"):
        dsm.download_mnist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_network_error_mentions_embedded(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(dsm.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="embedded"):
        dsm.download_mnist(tmp_path)
