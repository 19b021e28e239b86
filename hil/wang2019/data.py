"""Data for Wang 2019: MNIST reduced to 8x8 and the 3-frame MNIST-sequence task.

8x8 reduction (the paper's method is not public; this one is ours and fixed):
  1. crop rows and columns 4..23 of the 28x28 image, the 20x20 box MNIST normalizes every
     digit into (the digit's bounding box, centred by centre of mass in 28x28);
  2. area-average the 20x20 crop to 8x8: output pixel (i, j) is the mean over the square
     [2.5 i, 2.5 (i+1)) x [2.5 j, 2.5 (j+1)) of the crop, pixels cut by a bin edge counting
     with their covered fraction (weights 1, 1, 0.5 / 0.5, 1, 1 along each axis), so total
     intensity is preserved: sum(8x8) * 6.25 == sum(crop);
  3. scale 0..255 to 0..1, then to input voltages v = 0.4 x - 0.2, i.e. -0.2 V (background)
     to +0.2 V (ink), the READ amplitude; the authors map their sequence frames the same way.

MNIST-sequence (the authors' data files and generator are not public; our definition): a
fixed triple of distinct digit classes (default 0, 1, 2, the lowest three, not selected for
ease); a sequence shows the three digits one per frame, in one of the 3! = 6 orderings; the
class is the ordering's index in `itertools.permutations(digits)`. Each frame is a random image
of its digit from the pool (train sequences from training images, test sequences from test
images, drawn with replacement). Why accuracy can rise with the frames seen: one frame leaves
two orderings possible (at most 1/2 correct, chance 1/6); two frames determine the ordering;
the third is redundant, so any two correctly read frames of the three identify the class and
the last step can correct a misread digit. (With the authors' loss on the last step only, the
head is not trained for the earlier steps, so their accuracy is not bounded below by chance.)
Classes are balanced:
labels are 0..5 repeated (counts differ by at most one, equal when n is a multiple of 6),
then shuffled by the seed.
"""
from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hil.nn import datasets
from hil.errors import DataError

SIDE = 8
CROP = (4, 24)                 # rows/columns kept of the 28x28 image (20x20)
V_READ = 0.2                   # V: inputs span -V_READ..+V_READ
N_FRAMES = 3
N_SEQ_CLASSES = 6
_TOL = 1e-9


def _area_matrix(n_in: int = CROP[1] - CROP[0], n_out: int = SIDE) -> np.ndarray:
    """(n_out, n_in) row-stochastic matrix: fractional overlap of pixel j with bin i."""
    step = n_in / n_out
    lo = np.arange(n_out)[:, None] * step
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(j + 1, lo + step) - np.maximum(j, lo), 0.0, None)
    return overlap / step


_R = _area_matrix()


def reduce_8x8(images: np.ndarray, where: str = "images") -> np.ndarray:
    """(N, 28, 28) pixels 0..255 -> (N, 8, 8) float64 in 0..1 (crop + area average)."""
    x = np.asarray(images)
    if x.ndim != 3 or x.shape[1:] != (datasets.IMAGE_SIDE, datasets.IMAGE_SIDE):
        raise DataError(f"{where}: need (N, 28, 28) images to reduce to 8x8, got {x.shape}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)) or (x.size and (x.min() < 0 or x.max() > 255)):
        raise DataError(f"{where}: pixels must be finite values in 0..255")
    crop = x[:, CROP[0]:CROP[1], CROP[0]:CROP[1]] / 255.0
    return _R @ crop @ _R.T


def to_volts(x01: np.ndarray) -> np.ndarray:
    """Pixels in 0..1 -> input voltages 0.4 x - 0.2 (V)."""
    return 2 * V_READ * np.asarray(x01, dtype=np.float64) - V_READ


def check_split(x, y, frame_shape: tuple, n_classes: int, where: str):
    """Validate one split: x (N, *frame_shape) finite volts within +-0.2 V, y (N,) labels."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 1 + len(frame_shape) or x.shape[1:] != frame_shape:
        raise DataError(f"{where}: inputs must have shape (N, {', '.join(map(str, frame_shape))})"
                        f", got {x.shape}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{where}: {x.shape[0]} inputs but labels of shape {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise DataError(f"{where}: inputs contain NaN, inf or non-numbers; give finite volts")
    if x.size and np.abs(x).max() > V_READ + _TOL:
        raise DataError(f"{where}: inputs reach {np.abs(x).max():.3g} V, beyond +-{V_READ} V; "
                        "scale 0..1 pixels with 0.4*x - 0.2")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise DataError(f"{where}: labels must be integers")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{where}: labels must be 0..{n_classes - 1}, found "
                        f"{int(y.min())}..{int(y.max())}")
    return x.astype(np.float64), y.astype(np.int64)


@dataclass
class WangData:
    """Inputs in volts (float64) and integer labels, train and test.

    Digits: frames (8, 8), 10 classes. Sequences: frames (3, 8, 8), 6 classes."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    source: str

    def __post_init__(self) -> None:
        shape = tuple(np.shape(self.x_train)[1:])
        if shape not in ((SIDE, SIDE), (N_FRAMES, SIDE, SIDE)):
            raise DataError(f"{self.source}: inputs must be (N, 8, 8) digits or (N, 3, 8, 8) "
                            f"sequences, got {np.shape(self.x_train)}")
        for part in ("train", "test"):
            x, y = check_split(getattr(self, f"x_{part}"), getattr(self, f"y_{part}"), shape,
                               self.n_classes, f"{self.source} ({part})")
            setattr(self, f"x_{part}", x)
            setattr(self, f"y_{part}", y)

    @property
    def is_sequence(self) -> bool:
        return self.x_train.ndim == 4

    def describe(self) -> dict:
        """Counts and source, JSON-friendly."""
        return {"source": self.source, "n_train": int(self.y_train.size),
                "n_test": int(self.y_test.size),
                "train_per_class": np.bincount(self.y_train, minlength=self.n_classes).tolist(),
                "test_per_class": np.bincount(self.y_test, minlength=self.n_classes).tolist()}


def from_dataset(ds: datasets.Dataset) -> WangData:
    """A 28x28 `hil.nn.datasets.Dataset` reduced to 8x8 volts, order kept."""
    return WangData(to_volts(reduce_8x8(ds.x_train, f"{ds.source} (train)")), ds.y_train,
                    to_volts(reduce_8x8(ds.x_test, f"{ds.source} (test)")), ds.y_test,
                    datasets.N_CLASSES, f"{ds.source} -> 8x8")


def load_mnist8(data=None, seed: int = 0) -> WangData:
    """8x8 digits: from the MNIST IDX directory `data` (60,000 / 10,000), else the embedded
    5,000 digits split 4,000 / 1,000 by `seed` (see `hil.nn.datasets.load_dataset`)."""
    return from_dataset(datasets.load_dataset(data, seed=seed))


def make_sequences(x: np.ndarray, y: np.ndarray, n: int, seed, digits: Sequence[int] = (0, 1, 2)):
    """`n` 3-frame sequences from frames `x` (N, 8, 8) with digit labels `y` (module docstring).

    Returns (sequences (n, 3, 8, 8) in the units of x, labels (n,) in 0..5)."""
    digits = tuple(int(d) for d in digits)
    if len(digits) != N_FRAMES or len(set(digits)) != N_FRAMES or min(digits) < 0 \
            or max(digits) > 9:
        raise DataError(f"sequence digits must be 3 distinct classes 0..9, got {digits}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"number of sequences must be a positive integer, got {n!r}")
    x, y = np.asarray(x), np.asarray(y)
    pools = {d: np.flatnonzero(y == d) for d in digits}
    empty = [d for d, p in pools.items() if p.size == 0]
    if empty:
        raise DataError(f"no images of digit(s) {empty} to build sequences from")
    orders = np.array(list(itertools.permutations(digits)))          # (6, 3)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % N_SEQ_CLASSES)
    wanted = orders[labels]                                           # (n, 3) digit per frame
    idx = np.empty(wanted.shape, dtype=np.int64)
    for d, pool in pools.items():
        sel = wanted == d
        idx[sel] = pool[rng.integers(0, pool.size, int(sel.sum()))]
    return x[idx], labels


def sequences_from(digits8: WangData, n_train: int = 6000, n_test: int = 1200, seed: int = 0,
                   digits: Sequence[int] = (0, 1, 2)) -> WangData:
    """MNIST-sequence data from 8x8 digits: train sequences from the training digits, test
    sequences from the test digits, by independent streams of `seed`."""
    if digits8.is_sequence:
        raise DataError(f"{digits8.source}: need 8x8 digits to build sequences, got sequences")
    xtr, ytr = make_sequences(digits8.x_train, digits8.y_train, n_train, [seed, 0], digits)
    xte, yte = make_sequences(digits8.x_test, digits8.y_test, n_test, [seed, 1], digits)
    return WangData(xtr, ytr, xte, yte, N_SEQ_CLASSES,
                    f"mnist-sequence {tuple(digits)} seed {seed} from {digits8.source}")


def load_sequences(data=None, seed: int = 0, n_train: int = 6000, n_test: int = 1200,
                   digits: Sequence[int] = (0, 1, 2)) -> WangData:
    """MNIST-sequence from `load_mnist8(data, seed)`."""
    return sequences_from(load_mnist8(data, seed), n_train, n_test, seed, digits)


# ---------------------------------------------------------------------------- 8x8 data files
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def save_npz(path, d: WangData) -> Path:
    """Write `d` as an .npz file (keys x_train, y_train, x_test, y_test, n_classes)."""
    path = Path(path)
    np.savez_compressed(path, n_classes=d.n_classes, **{k: getattr(d, k) for k in _KEYS})
    return path


def load_npz(path, n_classes: Optional[int] = None) -> WangData:
    """Read an 8x8 data file written by `save_npz` (or by hand with the same keys; inputs in
    volts). Every problem is a one-line DataError naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)}; an 8x8 data "
                                f"file needs {', '.join(_KEYS)}")
            arrays = {k: f[k] for k in _KEYS}
            if n_classes is None:
                n_classes = int(f["n_classes"]) if "n_classes" in f.files else \
                    (N_SEQ_CLASSES if arrays["x_train"].ndim == 4 else datasets.N_CLASSES)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    return WangData(**arrays, n_classes=n_classes, source=str(path))
