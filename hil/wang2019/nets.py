"""Software twins of the Wang 2019 networks (numpy float64, vectorized over the batch).

Every weighted layer is one matrix W (inputs x outputs) applied to im2col patches, the shape
it has on the array (rows = inputs, columns = outputs). `forward(x, matmul=...)` routes every
product through `matmul(layer_name, X, W)` (default X @ W), so a mapped layer can replace it
by a crossbar VMM; `backward(dlogits, cache, weights=...)` uses the weights it is given (on
hardware the last read-back ones) with the activations stored by the forward pass.

Patch rows are in (channel, kernel row, kernel column) order (`hil.nn.core.im2col`); activations
are (N, C, H, W); the dense layers read the pooled map flattened in (C, H, W) order. No biases.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from hil.nn import core as nn
from hil.errors import ConfigError, DataError

MatMul = Callable[[str, np.ndarray, np.ndarray], np.ndarray]
CELLS_PER_WEIGHT = 4        # a differential pair (2 cells), stored twice


def _matmul(_name: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x @ w


def _pad_after(x: np.ndarray) -> np.ndarray:
    """'same' padding of a 2x2 kernel as in the authors' code: 0 before, 1 after (H and W)."""
    return np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))


def _rows(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N*H*W, C), the layout of a layer's matmul output."""
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def _maps(rows: np.ndarray, n: int, side: int) -> np.ndarray:
    """(N*H*W, C) -> (N, C, H, W); inverse of `_rows`."""
    return rows.reshape(n, side, side, -1).transpose(0, 3, 1, 2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def softmax_xent_sum(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy SUMMED over the batch; returns (loss, dloss/dlogits)."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    d = np.exp(logp)
    d[np.arange(n), y] -= 1.0
    return float(-logp[np.arange(n), y].sum()), d


class _Net:
    """Weights by layer name, their shapes and a seeded Glorot-uniform initialization."""

    LAYERS: tuple = ()
    IN_SHAPE: tuple = ()
    N_CLASSES = 0

    def __init__(self, seed: int = 0) -> None:
        self.weights: dict[str, np.ndarray] = {}
        self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        """W ~ U(+-sqrt(6 / (inputs + outputs))) from `seed`. (The array starts near 0
        instead; programming noise breaks the symmetry there.)"""
        rng = np.random.default_rng(seed)
        self.weights = {name: rng.uniform(-1, 1, shape) * np.sqrt(6.0 / sum(shape))
                        for name, shape in self.LAYERS}

    def weight_specs(self) -> list[tuple[str, tuple[int, int]]]:
        """[(layer name, (inputs, outputs))] in forward order."""
        return [(name, tuple(shape)) for name, shape in self.LAYERS]

    def weight_matrices(self) -> list[tuple[str, np.ndarray]]:
        """[(layer name, W)] in forward order (the arrays themselves, not copies)."""
        return [(name, self.weights[name]) for name, _ in self.LAYERS]

    @property
    def n_weights(self) -> int:
        return int(sum(r * c for _, (r, c) in self.LAYERS))

    @property
    def n_cells(self) -> int:
        """Cells on the array: each weight a differential pair, stored twice."""
        return CELLS_PER_WEIGHT * self.n_weights

    def _weights(self, weights: Optional[dict]) -> dict:
        if weights is None:
            return self.weights
        for name, shape in self.LAYERS:
            if name not in weights or np.shape(weights[name]) != shape:
                raise DataError(f"weights for layer {name!r} must have shape {shape}, got "
                                f"{np.shape(weights.get(name)) if name in weights else 'none'}")
        return weights

    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != self.IN_SHAPE:
            raise DataError(f"{type(self).__name__} input must be (N, "
                            f"{', '.join(map(str, self.IN_SHAPE))}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise DataError(f"{type(self).__name__} input contains NaN or inf")
        return x

    def _check_labels(self, y, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (
                y.size and (y.min() < 0 or y.max() >= self.N_CLASSES)):
            raise DataError(f"labels must be {n} integers in 0..{self.N_CLASSES - 1}, got "
                            f"shape {y.shape} dtype {y.dtype}")
        return y

    def loss_and_grads(self, x, y, matmul: Optional[MatMul] = None,
                       weights: Optional[dict] = None):
        """(summed loss, gradients by layer, logits) of one batch; the forward pass uses
        `matmul`, the backward pass `weights` (default: this net's)."""
        logits, cache = self.forward(x, matmul)
        loss, d = softmax_xent_sum(logits, self._check_labels(y, logits.shape[0]))
        return loss, self.backward(d, cache, weights), logits


class WangCNN(_Net):
    """8x8x1 -> conv 15x3x3 'same' + ReLU -> conv 4x2x2x15 'same' (pad 0 before, 1 after),
    linear -> max-pool 2x2 -> 64 -> dense 10 (softmax in the loss). 1,015 weights."""

    LAYERS = (("conv1", (9, 15)), ("conv2", (60, 4)), ("dense", (64, 10)))
    # The authors' blocks on their array, cell rows x columns (PAPERS.md B): 540 + 960 + 2,580
    # = 4,080 cells. The dense block, read in two chops, spans 20 cells more than its 2,560
    # weight cells, hence 4,080 and not 4 x 1,015 = 4,060.
    PAPER_BLOCKS = {"conv1": (36, 15), "conv2": (120, 8), "dense": (86, 30)}
    IN_SHAPE = (8, 8)
    N_CLASSES = 10

    def forward(self, x, matmul: Optional[MatMul] = None):
        """x (N, 8, 8) volts -> (logits (N, 10), cache for `backward`)."""
        mm = matmul or _matmul
        x = self._check_input(x)
        n, w = x.shape[0], self.weights
        x1 = nn.im2col(x[:, None], 3, 3, 1)                          # (N*64, 9)
        z1 = mm("conv1", x1, w["conv1"])                              # (N*64, 15)
        a1 = _maps(np.maximum(z1, 0.0), n, 8)                         # (N, 15, 8, 8)
        x2 = nn.im2col(_pad_after(a1), 2, 2, 0)                       # (N*64, 60)
        z2 = _maps(mm("conv2", x2, w["conv2"]), n, 8)                 # (N, 4, 8, 8)
        pooled, pool_cache = nn.maxpool2d_forward(z2, 2)              # (N, 4, 4, 4)
        x3 = pooled.reshape(n, 64)
        logits = mm("dense", x3, w["dense"])
        return logits, {"n": n, "x1": x1, "z1": z1, "x2": x2, "pool": pool_cache, "x3": x3}

    def backward(self, dlogits: np.ndarray, cache: dict, weights: Optional[dict] = None):
        """Gradients {layer: (inputs, outputs)} of the loss whose dlogits are given."""
        w = self._weights(weights)
        n = cache["n"]
        g = {"dense": cache["x3"].T @ dlogits}
        dpool = (dlogits @ w["dense"].T).reshape(n, 4, 4, 4)
        dz2 = _rows(nn.maxpool2d_backward(dpool, cache["pool"]))      # (N*64, 4)
        g["conv2"] = cache["x2"].T @ dz2
        da1 = nn.col2im(dz2 @ w["conv2"].T, (n, 15, 9, 9), 2, 2, 0)[:, :, :8, :8]
        dz1 = _rows(da1) * (cache["z1"] > 0)
        g["conv1"] = cache["x1"].T @ dz1
        return {name: g[name] for name, _ in self.LAYERS}

    def predict(self, x, matmul: Optional[MatMul] = None, batch: int = 500) -> np.ndarray:
        """Predicted classes (N,), evaluated `batch` inputs at a time."""
        x = np.asarray(x)
        out = [self.forward(x[s:s + batch], matmul)[0].argmax(1) for s in range(0, len(x), batch)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def accuracy(self, x, y, matmul: Optional[MatMul] = None) -> float:
        return float(np.mean(self.predict(x, matmul) == np.asarray(y)))


class WangConvLSTM(_Net):
    """3 frames of 8x8 -> conv-LSTM (5 hidden channels; input kernels 3x3x1 'valid' -> 6x6;
    recurrent kernels 2x2x5 on h(t-1) padded 0 before / 1 after; gates [a, i, f, o])
    -> max-pool 2x2 -> 45 -> dense 6. 850 weights.

    The LSTM is one matrix (29 x 20) per output pixel: rows [x patch (9); h patch (20)],
    columns the gate pre-activations [a (5), i (5), f (5), o (5)].
    a = tanh, i/f/o = sigmoid; c = i*a + f*c_prev; h = o*tanh(c); h0 = c0 = 0.

    loss_steps "last" (the authors'): the loss is on the last step only, so the dense head
    applied after earlier steps is never trained for them; "all" sums the loss of every step
    (an option of ours, to make the per-step accuracies meaningful)."""

    LAYERS = (("lstm", (29, 20)), ("dense", (45, 6)))
    # Blocks in cell rows x columns from the authors' script (dp_rep [2, 1] and [1, 2]):
    # 2,320 + 1,080 = 3,400 cells = 4 x 850.
    PAPER_BLOCKS = {"lstm": (116, 20), "dense": (90, 12)}
    IN_SHAPE = (3, 8, 8)
    N_CLASSES = 6
    HIDDEN = 5

    def __init__(self, seed: int = 0, loss_steps: str = "last") -> None:
        if loss_steps not in ("last", "all"):
            raise ConfigError(f"loss_steps must be 'last' or 'all', got {loss_steps!r}")
        self.loss_steps = loss_steps
        super().__init__(seed)

    def forward(self, xs, matmul: Optional[MatMul] = None, all_steps: Optional[bool] = None):
        """xs (N, 3, 8, 8) volts -> (logits of every step that has a head, cache); the list
        holds the last step only unless all_steps (default: loss_steps == "all")."""
        mm = matmul or _matmul
        xs = self._check_input(xs)
        if all_steps is None:
            all_steps = self.loss_steps == "all"
        n, w, hid = xs.shape[0], self.weights, self.HIDDEN
        n_steps = xs.shape[1]
        h = np.zeros((n, hid, 6, 6))
        c = np.zeros((n * 36, hid))
        steps, logits = [], []
        for t in range(n_steps):
            xp = np.concatenate([nn.im2col(xs[:, t, None], 3, 3, 0),       # (N*36, 9)
                                 nn.im2col(_pad_after(h), 2, 2, 0)], 1)   # (N*36, 29)
            z = mm("lstm", xp, w["lstm"])
            a = np.tanh(z[:, :hid])
            i, f, o = (_sigmoid(z[:, k * hid:(k + 1) * hid]) for k in (1, 2, 3))
            c_prev, c = c, i * a + f * c
            tc = np.tanh(c)
            h = _maps(o * tc, n, 6)
            s = {"xp": xp, "a": a, "i": i, "f": f, "o": o, "c_prev": c_prev, "tc": tc}
            if all_steps or t == n_steps - 1:
                pooled, s["pool"] = nn.maxpool2d_forward(h, 2)              # (N, 5, 3, 3)
                s["x3"] = pooled.reshape(n, 45)
                logits.append(mm("dense", s["x3"], w["dense"]))
            steps.append(s)
        return logits, {"n": n, "steps": steps}

    def loss_and_grads(self, xs, y, matmul: Optional[MatMul] = None,
                       weights: Optional[dict] = None):
        """(summed loss, gradients, logits of the last step) of one batch of sequences."""
        logits, cache = self.forward(xs, matmul)
        y = self._check_labels(y, logits[-1].shape[0])
        if self.loss_steps == "last":
            logits = logits[-1:]
        losses, dlogits = zip(*(softmax_xent_sum(lg, y) for lg in logits))
        return float(sum(losses)), self.backward(list(dlogits), cache, weights), logits[-1]

    def backward(self, dlogits, cache: dict, weights: Optional[dict] = None):
        """Backprop through time over all steps. `dlogits`: one array, the loss gradient of
        the last step's logits, or a list of one per step from the end (a list as long as
        the number of steps covers every step)."""
        w = self._weights(weights)
        n, hid, steps = cache["n"], self.HIDDEN, cache["steps"]
        dl = list(dlogits) if isinstance(dlogits, (list, tuple)) else [dlogits]
        dl = [None] * (len(steps) - len(dl)) + dl
        g = {"dense": np.zeros(w["dense"].shape), "lstm": np.zeros(w["lstm"].shape)}
        dh = np.zeros((n * 36, hid))
        dc = np.zeros_like(dh)
        w_h = w["lstm"][9:]                                           # h-patch rows (20, 20)
        for t in range(len(steps) - 1, -1, -1):
            s = steps[t]
            if dl[t] is not None:
                g["dense"] += s["x3"].T @ dl[t]
                dpool = (dl[t] @ w["dense"].T).reshape(n, hid, 3, 3)
                dh = dh + _rows(nn.maxpool2d_backward(dpool, s["pool"]))
            do = dh * s["tc"]
            dc = dc + dh * s["o"] * (1.0 - s["tc"] ** 2)
            da, di, df = dc * s["i"], dc * s["a"], dc * s["c_prev"]
            dc = dc * s["f"]                                          # to step t-1
            dz = np.concatenate([da * (1.0 - s["a"] ** 2), di * s["i"] * (1.0 - s["i"]),
                                 df * s["f"] * (1.0 - s["f"]), do * s["o"] * (1.0 - s["o"])], 1)
            g["lstm"] += s["xp"].T @ dz
            if t:
                dh = _rows(nn.col2im(dz @ w_h.T, (n, hid, 7, 7), 2, 2, 0)[:, :, :6, :6])
        return {name: g[name] for name, _ in self.LAYERS}

    def predict_steps(self, xs, matmul: Optional[MatMul] = None, batch: int = 500) -> np.ndarray:
        """Predicted classes after each step, (n_steps, N)."""
        xs = np.asarray(xs)
        out = [np.stack([lg.argmax(1) for lg in self.forward(xs[s:s + batch], matmul, True)[0]])
               for s in range(0, len(xs), batch)]
        return np.concatenate(out, 1) if out else np.zeros((self.IN_SHAPE[0], 0), dtype=np.int64)

    def accuracy(self, xs, y, matmul: Optional[MatMul] = None) -> list[float]:
        """Accuracy after each of the steps (a list, one per frame seen)."""
        return [float(v) for v in np.mean(self.predict_steps(xs, matmul) == np.asarray(y), 1)]
