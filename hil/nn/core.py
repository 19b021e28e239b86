"""A small numpy neural-network core: im2col convolution, max pooling, ReLU, softmax
cross-entropy, Adam, seeded mini-batches and fake quantization for quantization-aware training.

Layouts: activations (N, C, H, W); convolution weights (K, C, kh, kw); no bias. im2col/col2im
take any stride and padding (also asymmetric); the training convolution uses stride 1.
Everything is float32 and vectorized; nothing here draws random numbers without a seed.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view



# ---------------------------------------------------------------------------- convolution
def conv_padding(pad) -> tuple[int, int, int, int]:
    """Padding as (top, bottom, left, right): an int pads all four sides alike."""
    p = (pad,) * 4 if np.ndim(pad) == 0 else tuple(pad)
    if len(p) != 4 or any(int(v) != v or v < 0 for v in p):
        raise ValueError(f"padding must be an int >= 0 or (top, bottom, left, right), got {pad!r}")
    return tuple(int(v) for v in p)


def conv_output_size(h: int, w: int, kh: int, kw: int, pad=0, stride: int = 1) -> tuple[int, int]:
    """Output height and width of a convolution (padding as in `conv_padding`)."""
    t, b, l, r = conv_padding(pad)
    return (h + t + b - kh) // stride + 1, (w + l + r - kw) // stride + 1


def _padded(x: np.ndarray, pad) -> np.ndarray:
    t, b, l, r = conv_padding(pad)
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r))) if t or b or l or r else x


def im2col(x: np.ndarray, kh: int, kw: int, pad=0, stride: int = 1) -> np.ndarray:
    """(N, C, H, W) -> (N*OH*OW, C*kh*kw) patches; rows in (n, oh, ow) order, columns in
    (c, i, j) order, matching `w.reshape(K, C*kh*kw)`. `pad`: int or (top, bottom, left,
    right). Keeps the input dtype; one copy of a sliding-window view."""
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, w, kh, kw, pad, stride)
    v = sliding_window_view(_padded(x, pad), (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :oh, :ow]
    return v.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


def col2im(cols: np.ndarray, x_shape: tuple, kh: int, kw: int, pad=0, stride: int = 1) -> np.ndarray:
    """Adjoint of `im2col`: scatter-add (N*OH*OW, C*kh*kw) patch gradients back to x_shape."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size(h, w, kh, kw, pad, stride)
    return _scatter_windows(cols.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2), x_shape, pad, stride)


def _scatter_windows(d: np.ndarray, x_shape: tuple, pad, stride: int = 1) -> np.ndarray:
    """Sum of window gradients d (N, C, kh, kw, OH, OW) at their positions in x_shape."""
    n, c, h, w = x_shape
    t, b, l, r = conv_padding(pad)
    _, _, kh, kw, oh, ow = d.shape
    dx = np.zeros((n, c, h + t + b, w + l + r), dtype=d.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] += d[:, :, i, j]
    return dx[:, :, t:t + h, l:l + w]


def conv2d_forward(x: np.ndarray, w: np.ndarray, pad: int = 0):
    """Stride-1 convolution without bias. Returns (out (N, K, OH, OW), cache).

    Works on per-image patch matrices (N, C*kh*kw, OH*OW): one batched matmul gives the
    output in (N, K, OH, OW) order with no transposed copy."""
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    oh, ow = conv_output_size(h, wd, kh, kw, pad)
    xp = _padded(x, pad)
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):                                # kh*kw block copies
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + oh, j:j + ow]
    cols = cols.reshape(n, c * kh * kw, oh * ow)
    out = np.matmul(w.reshape(k, -1), cols).reshape(n, k, oh, ow)
    return out, (x.shape, cols, w, pad)


def conv2d_backward(dout: np.ndarray, cache, need_dx: bool = True):
    """Gradients (dx or None, dw) of `conv2d_forward` given dout (N, K, OH, OW)."""
    x_shape, cols, w, pad = cache
    n, k, oh, ow = dout.shape
    d = dout.reshape(n, k, oh * ow)
    dw = np.matmul(d, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)
    if not need_dx:
        return None, dw
    dcols = np.matmul(w.reshape(k, -1).T, d).reshape(n, *w.shape[1:], oh, ow)
    return _scatter_windows(dcols, x_shape, pad), dw


# ---------------------------------------------------------------------------- pooling, ReLU
def maxpool2d_forward(x: np.ndarray, k: int):
    """Non-overlapping k x k max pooling (H and W must be multiples of k).
    Returns (out (N, C, H/k, W/k), cache); the backward pass routes to the first maximum."""
    n, c, h, w = x.shape
    if h % k or w % k:
        raise ValueError(f"maxpool {k}x{k} needs H and W divisible by {k}, got {h}x{w}")
    out = x[:, :, 0::k, 0::k].copy()
    for t in range(1, k * k):                          # k*k strided slices
        np.maximum(out, x[:, :, t // k::k, t % k::k], out=out)
    return out, (x, k, out)


def maxpool2d_backward(dout: np.ndarray, cache) -> np.ndarray:
    """Route dout to the first (row-major) maximum of each pooling window."""
    x, k, out = cache
    dx = np.empty(x.shape, dtype=dout.dtype)
    free = np.ones(out.shape, dtype=bool)
    hit = np.empty(out.shape, dtype=bool)
    for t in range(k * k):
        np.equal(x[:, :, t // k::k, t % k::k], out, out=hit)
        hit &= free
        free &= ~hit
        np.multiply(dout, hit, out=dx[:, :, t // k::k, t % k::k])
    return dx


def relu_forward(x: np.ndarray):
    """ReLU; the cache is the positive mask."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return dout * mask


# ---------------------------------------------------------------------------- fully connected, loss
def fc_forward(x: np.ndarray, w: np.ndarray):
    """y = x @ w.T for w (out, in), no bias."""
    return x @ w.T, (x, w)


def fc_backward(dout: np.ndarray, cache, need_dx: bool = True):
    x, w = cache
    return (dout @ w if need_dx else None), dout.T @ x


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, classes) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray):
    """Mean cross-entropy of integer labels y; returns (loss float, dlogits)."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-logp[np.arange(n), y].mean())
    d = np.exp(logp)
    d[np.arange(n), y] -= 1.0
    return loss, (d / n).astype(logits.dtype, copy=False)


# ---------------------------------------------------------------------------- optimizer, batches
class Adam:
    """Adam on a dict of parameter arrays (updated in place); deterministic."""

    def __init__(self, params: dict, lr: float = 2e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, beta1, beta2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict) -> None:
        self.t += 1
        c1 = 1.0 - self.b1 ** self.t
        c2 = 1.0 - self.b2 ** self.t
        for k, g in grads.items():
            m, v = self.m[k], self.v[k]
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            self.params[k] -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(
                self.params[k].dtype)


def minibatches(n: int, batch: int, seed: int, shuffle: bool = True) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) in batches, shuffled by `seed` (last batch may be short)."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch):
        yield order[start:start + batch]


# ---------------------------------------------------------------------------- fake quantization
WEIGHT_LEVELS = 15          # two cells of 8 levels each: integers -7..7
ACT_BITS = 8


def weight_scale(w: np.ndarray, levels: int = WEIGHT_LEVELS) -> float:
    """Real value of one weight level: max|w| / ((levels-1)/2). The full range is used
    (no percentile clipping): with 72-1,920 weights per layer and QAT, clipping the few
    largest weights cost accuracy in our trials, and it keeps every weight representable."""
    half = (levels - 1) // 2
    m = float(np.max(np.abs(w))) if np.size(w) else 0.0
    return m / half if m > 0 else 1.0


def quantize_weights(w: np.ndarray, levels: int = WEIGHT_LEVELS):
    """Weights -> (integer levels in -(L-1)/2..(L-1)/2 as int64, scale) with w ~ q * scale."""
    half = (levels - 1) // 2
    s = weight_scale(w, levels)
    q = np.clip(np.rint(np.asarray(w, dtype=np.float64) / s), -half, half).astype(np.int64)
    return q, s


def fake_quant_weights(w: np.ndarray, levels: int = WEIGHT_LEVELS) -> np.ndarray:
    """q * scale in the dtype of w. Its gradient is the straight-through estimator: use the
    gradient with respect to the returned array as the gradient of w unchanged."""
    q, s = quantize_weights(w, levels)
    return (q * s).astype(w.dtype)


ROUND_GUARD = 1e-9


def quantize_act(a: np.ndarray, scale: float, bits: int = ACT_BITS) -> np.ndarray:
    """Non-negative activations -> integer codes round(a/scale) clipped to 0..2**bits-1 (int64).

    Rounds half up with a 1e-9 guard: integer sums over a percentile-derived scale often land
    exactly on k + 0.5, and the guard makes the code independent of float summation order
    (hardware path and reference give the same codes)."""
    top = 2 ** bits - 1
    x = np.asarray(a, dtype=np.float64) / scale
    return np.clip(np.floor(x + (0.5 + ROUND_GUARD)), 0, top).astype(np.int64)


def fake_quant_act(a: np.ndarray, scale: float, bits: int = ACT_BITS):
    """(codes * scale in the dtype of a, STE mask): the gradient passes where 0 <= a <= top*scale."""
    top = 2 ** bits - 1
    x = a / scale
    mask = (x >= 0) & (x <= top)
    return (np.clip(np.floor(x + 0.5), 0, top) * scale).astype(a.dtype), mask
