"""The five-layer mCNN of Yao et al. 2020 in numpy, with 15-level weights and 8-bit activations.

Architecture [est, PAPERS.md §A]:
    input 28x28 uint8 (the pixel value IS the 8-bit input code; one code = 1/255)
    C1: 8 kernels 3x3, padding 1 -> ReLU -> max-pool 2 -> 8x14x14 -> requantize to 8 bits
    C3: 12 kernels 3x3x8, no padding -> 12x12x12 -> ReLU -> max-pool 3 -> 12x4x4 = 192
        -> requantize to 8 bits
    FC: 192 -> 10
No biases anywhere (every weight sits on the chip): 72 + 864 = 936 convolution weights and
1,920 FC weights. Weights are trained ex situ, then fine-tuned with fake-quantized weights
(15 levels, straight-through estimator) and calibrated 8-bit activations (QAT).

Quantized inference (`forward(quantized=True)`) is the software twin of `network()`, the
mCNN as a list of core layers (`hil.analog.network`): integer codes x integer weight levels in
float64, scaled to real values, ReLU, pooling and requantization in digital. The hardware path
(`hil.yao2020.hwnet`) runs the same list with the weighted layers on the chip.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

import numpy as np

from hil.analog.network import Conv2d, Dense, Flatten, MaxPool, Network, Quantize, ReLU, Scale
from hil.nn import core as nn
from hil.threads import blas_threads as scoped_blas_threads
from hil.nn.datasets import Dataset
from hil.errors import DataError
from hil.progress import CancelToken, Progress, ProgressCallback, ensure

log = logging.getLogger(__name__)

MODEL_NAME = "mcnn-yao2020"
CONV = {"c1": Conv2d("c1", (1, 28, 28), 8, (3, 3), pad=1),
        "c3": Conv2d("c3", (8, 14, 14), 12, (3, 3), pad=0)}
POOL = {"c1": 2, "c3": 3}
_K3, _H3, _W3 = CONV["c3"].out_shape
FEATURES = _K3 * (_H3 // POOL["c3"]) * (_W3 // POOL["c3"])     # 8-bit C3 codes per image: 192
FC = Dense("fc", FEATURES, 10)
CONV_LAYERS = tuple(CONV)
FC_LAYERS = (FC.name,)
SHAPES = {**{k: c.weight_shape for k, c in CONV.items()}, FC.name: FC.weight_shape}
# first and last layer of each stage of the network() list
STAGES = {"c1": ("c1", "c1.quant"), "c3": ("c3", "flatten"), "fc": ("fc", "fc.scale")}
INPUT_CODE_SCALE = 1.0 / 255.0                     # real value of one input pixel code
ACT_PERCENTILE = 99.99                             # activation calibration percentile
CHUNK = 1000                                       # images per inference chunk (memory)
CALIB_CHUNK = 200                                  # images per convolution chunk in calibration
LR_FLOOR = 0.02                                    # last learning rate / first (cosine schedule)
EVAL_STREAM = 0xE7A1                               # seed-stream tags: per-epoch eval subsets,
CALIB_STREAM = 0xCA1B                              # activation calibration images


def _check_array(name: str, a, shape: tuple) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != shape:
        raise DataError(f"mCNN layer {name!r}: weights of shape {a.shape}, expected {shape}")
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise DataError(f"mCNN layer {name!r}: weights contain NaN or inf; retrain or reload "
                        "the model")
    return a.astype(np.float32)


class MCNN:
    """The mCNN: `params` {"c1", "c3", "fc"} float32 weights and `act_scale` {"c1", "c3"}
    (real value of one 8-bit activation code after that layer's ReLU + pooling)."""

    def __init__(self, params: Optional[dict] = None, act_scale: Optional[dict] = None, *,
                 seed: int = 0) -> None:
        if params is None:
            params = init_params(seed)
        missing = set(SHAPES) - set(params)
        if missing:
            raise DataError(f"mCNN weights lack layer(s) {sorted(missing)}")
        self.params = {k: _check_array(k, params[k], s) for k, s in SHAPES.items()}
        self.act_scale: dict = {}
        if act_scale is not None:
            for k in ("c1", "c3"):
                v = act_scale.get(k) if hasattr(act_scale, "get") else None
                if v is None or not np.isfinite(v) or float(v) <= 0:
                    raise DataError(f"mCNN activation scale of layer {k!r} must be a positive "
                                    f"finite number, got {v!r}")
                self.act_scale[k] = float(v)

    # ---- weights ------------------------------------------------------------------------
    def weight_scale(self, name: str) -> float:
        """Real value of one of the 15 weight levels of layer `name`."""
        return nn.weight_scale(self.params[name])

    def weight_levels(self, name: str) -> np.ndarray:
        """The layer's weights as integer levels -7..7 (int64, same shape as the weights)."""
        return nn.quantize_weights(self.params[name])[0]

    def weight_matrix(self, name: str) -> np.ndarray:
        """Integer weight levels of layer `name` as its (inputs, outputs) matrix."""
        return (CONV.get(name) or FC).matrix(self.weight_levels(name))

    def quantized_weights(self, name: str) -> np.ndarray:
        """levels * scale (float64): the real weights the 15-level hardware represents."""
        q, s = nn.quantize_weights(self.params[name])
        return q * s

    def input_scale(self, name: str) -> float:
        """Real value of one input code of layer `name` (1/255 for c1, then act_scale)."""
        if name == "c1":
            return INPUT_CODE_SCALE
        self._need_scales()
        return self.act_scale["c1" if name == "c3" else "c3"]

    def unit_scale(self, name: str) -> float:
        """Real value of one (input code x weight level) product of layer `name`."""
        return self.input_scale(name) * self.weight_scale(name)

    def network(self) -> Network:
        """The quantized mCNN as core layers with its integer weight levels; input (N, 1, 28, 28)
        integer pixel codes, output (N, 10) logits. Stages: see STAGES."""
        self._need_scales()
        layers: list = []
        for name, conv in CONV.items():
            layers += [conv, Scale(f"{name}.scale", self.unit_scale(name)), ReLU(f"{name}.relu"),
                       MaxPool(f"{name}.pool", POOL[name]), Quantize(f"{name}.quant", self.act_scale[name])]
        layers += [Flatten("flatten"), FC, Scale("fc.scale", self.unit_scale(FC.name))]
        return Network(layers, {name: self.weight_matrix(name) for name in SHAPES})

    # ---- inference -----------------------------------------------------------------------
    def forward(self, x_uint8: np.ndarray, *, quantized: bool = True) -> np.ndarray:
        """Logits (N, 10) of images (N, 28, 28) uint8. quantized=True: 15-level weights and
        8-bit activations exactly as the hardware path computes them; False: float network."""
        x = check_images(x_uint8)
        if not quantized:
            return np.concatenate([forward_float(self.params, x[i:i + CHUNK])
                                   for i in range(0, len(x), CHUNK)] or [np.zeros((0, FC.n_out))])
        return self._run(x, "fc")

    def features(self, x_uint8: np.ndarray, upto: str = "c3") -> np.ndarray:
        """8-bit activation codes (int64) after stage `upto`: "c1" -> (N, 8, 14, 14),
        "c3" -> (N, 192), on the quantized path."""
        if upto not in CONV:
            raise ValueError(f"upto must be one of {list(CONV)}, got {upto!r}")
        return self._run(check_images(x_uint8), upto)

    def _run(self, x: np.ndarray, upto: str) -> np.ndarray:
        net = self.network()
        stop = STAGES[upto][1]
        outs = [net.forward(x[i:i + CHUNK, None].astype(np.int64), stop=stop) for i in range(0, len(x), CHUNK)]
        return np.concatenate(outs) if outs else net.forward(np.zeros((0, 1, 28, 28), np.int64), stop=stop)

    def predict(self, x_uint8: np.ndarray, *, quantized: bool = True) -> np.ndarray:
        return self.forward(x_uint8, quantized=quantized).argmax(axis=1)

    def accuracy(self, x: np.ndarray, y: np.ndarray, quantized: bool = True) -> float:
        y = np.asarray(y)
        return float((self.predict(x, quantized=quantized) == y).mean()) if y.size else 0.0

    def calibrate(self, x_uint8: np.ndarray, percentile: float = ACT_PERCENTILE) -> dict:
        """Set act_scale from `percentile` of the activations after each ReLU+pool on images
        x, layer by layer through the quantized path. Returns the new scales."""
        x = check_images(x_uint8)
        if len(x) == 0:
            raise DataError("cannot calibrate activation scales on zero images")
        self.act_scale = calibrate_scales(self.params, x, percentile)
        return dict(self.act_scale)

    def _need_scales(self) -> None:
        if set(self.act_scale) != {"c1", "c3"}:
            raise DataError("the mCNN has no activation scales: call calibrate() on training "
                            "images (train_mcnn does this) before quantized inference")

    # ---- storage -------------------------------------------------------------------------
    def to_arrays(self) -> dict:
        """Float32 weights by layer name, for a run record."""
        return {k: v.copy() for k, v in self.params.items()}

    def attrs(self) -> dict:
        """Scalar attributes (JSON/HDF5-friendly) that with to_arrays() rebuild the model."""
        out = {"model": MODEL_NAME, "weight_levels": nn.WEIGHT_LEVELS,
               "act_bits": nn.ACT_BITS, "weight_scale_rule": "max|w|/7"}
        for k in ("c1", "c3"):
            if k in self.act_scale:
                out[f"act_scale_{k}"] = self.act_scale[k]
        for k in SHAPES:
            out[f"weight_scale_{k}"] = self.weight_scale(k)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, attrs: Optional[dict] = None) -> "MCNN":
        """Rebuild from to_arrays() and attrs(); DataError names a wrong or non-finite layer."""
        attrs = dict(attrs or {})
        if attrs.get("model", MODEL_NAME) != MODEL_NAME:
            raise DataError(f"stored model is {attrs.get('model')!r}, not {MODEL_NAME!r}")
        scales = {k: attrs[f"act_scale_{k}"] for k in ("c1", "c3") if f"act_scale_{k}" in attrs}
        return cls(dict(arrays), scales or None)

    def describe(self) -> dict:
        return {"model": MODEL_NAME, "conv_weights": int(self.params["c1"].size
                                                         + self.params["c3"].size),
                "fc_weights": int(self.params["fc"].size), **self.attrs()}


# ---------------------------------------------------------------------------- functional core
def check_images(x) -> np.ndarray:
    """Images (N, 28, 28) as uint8 pixel codes; DataError names a wrong shape, NaN or range."""
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"mCNN input must be (N, 28, 28) 8-bit images, got {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) and not np.all(np.isfinite(x)):
            raise DataError("mCNN input images contain NaN or infinite values")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError("mCNN input codes must be 0..255")
        x = x.astype(np.uint8)
    return x



def init_params(seed: int) -> dict:
    """He-normal initial weights, seeded."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in SHAPES.items():
        fan_in = int(np.prod(s[1:]))
        out[k] = (rng.standard_normal(s) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def forward_float(params: dict, x_uint8: np.ndarray) -> np.ndarray:
    """Float network (no quantization) on uint8 images; float32 logits."""
    logits, _ = _forward_train(params, x_uint8, None)
    return logits


def _forward_train(params: dict, x_uint8: np.ndarray, act_scale: Optional[dict]):
    """Training forward. act_scale None: float network. Otherwise QAT: fake-quantized weights
    (STE) and fake-quantized activations with those scales."""
    qat = act_scale is not None
    x = (x_uint8[:, None].astype(np.float32) * np.float32(INPUT_CODE_SCALE))
    c = {}
    h = x
    for layer in ("c1", "c3"):
        w = nn.fake_quant_weights(params[layer]) if qat else params[layer]
        z, c[layer + "conv"] = nn.conv2d_forward(h, w, CONV[layer].pad)
        r, c[layer + "relu"] = nn.relu_forward(z)
        p, c[layer + "pool"] = nn.maxpool2d_forward(r, POOL[layer])
        if qat:
            p, c[layer + "ste"] = nn.fake_quant_act(p, act_scale[layer])
        h = p
    c["shape3"] = h.shape
    flat = h.reshape(h.shape[0], -1)
    wfc = nn.fake_quant_weights(params["fc"]) if qat else params["fc"]
    logits, c["fc"] = nn.fc_forward(flat, wfc)
    return logits, c


def _backward_train(dlogits: np.ndarray, c: dict) -> dict:
    """Gradients of the weights (STE: gradients of fake-quantized weights pass to the floats)."""
    grads = {}
    dflat, grads["fc"] = nn.fc_backward(dlogits, c["fc"])
    dh = dflat.reshape(c["shape3"])
    for layer in ("c3", "c1"):
        if layer + "ste" in c:
            dh = dh * c[layer + "ste"]
        dh = nn.maxpool2d_backward(dh, c[layer + "pool"])
        dh = nn.relu_backward(dh, c[layer + "relu"])
        dh, grads[layer] = nn.conv2d_backward(dh, c[layer + "conv"], need_dx=(layer != "c1"))
    return grads


def calibrate_scales(params: dict, x_uint8: np.ndarray,
                     percentile: float = ACT_PERCENTILE) -> dict:
    """Activation scales layer by layer on the quantized path: scale = percentile / 255.
    The convolutions run in chunks of CALIB_CHUNK images (cache-sized; same values)."""
    scales: dict = {}
    h = x_uint8[:, None].astype(np.float64) * INPUT_CODE_SCALE
    for layer in ("c1", "c3"):
        q, s = nn.quantize_weights(params[layer])
        p = np.concatenate([nn.maxpool2d_forward(np.maximum(nn.conv2d_forward(h[i:i + CALIB_CHUNK], q * s,
                                                                              CONV[layer].pad)[0], 0.0), POOL[layer])[0]
                            for i in range(0, len(h), CALIB_CHUNK)])
        top = float(np.percentile(p, percentile))
        if not np.isfinite(top) or top <= 0:
            top = float(p.max()) if p.size and p.max() > 0 else 1.0
        scales[layer] = top / (2 ** nn.ACT_BITS - 1)
        h = nn.quantize_act(p, scales[layer]) * scales[layer]
    return scales


# ---------------------------------------------------------------------------- training
def shift_images(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image by a random integer offset in -max_shift..max_shift on each axis
    (zero fill); labels are unchanged."""
    if max_shift <= 0:
        return x
    n, m = len(x), max_shift
    padded = np.pad(x, ((0, 0), (m, m), (m, m)))
    dy = rng.integers(0, 2 * m + 1, n)
    dx = rng.integers(0, 2 * m + 1, n)
    rows = (dy[:, None] + np.arange(28)[None])[:, :, None]
    cols = (dx[:, None] + np.arange(28)[None])[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def cosine_lr(lr: float, step: int, steps: int, floor: float = LR_FLOOR) -> float:
    """Learning rate at `step` of `steps`: cosine from `lr` down to `floor` * lr."""
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1))))


def _sample(n: int, k: int, seed: int, stream: int) -> np.ndarray:
    """Sorted indices of min(k, n) of range(n), from their own stream (seed, stream)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    return np.sort(rng.choice(n, min(k, n), replace=False))


def eval_subsets(ds: Dataset, images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fixed per-epoch evaluation subsets (training part, test part), up to
    `images` each. They come from their own stream, never the training stream's, so their size
    does not change the trained model."""
    return _sample(ds.n_train, images, seed, EVAL_STREAM), _sample(ds.n_test, images, seed, EVAL_STREAM + 1)


def train_mcnn(ds: Dataset, *, epochs: int = 12, batch: int = 64, lr: float = 1e-2,
               seed: int = 0, qat: bool = True, progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None,
               on_epoch: Optional[Callable[[dict], None]] = None,
               qat_epochs: Optional[int] = None, augment_shift: int = 2,
               calib_images: int = 2000, eval_images: int = 500,
               blas_threads: Optional[int] = 1) -> tuple[MCNN, list[dict]]:
    """Train the mCNN ex situ; deterministic for a seed.

    The first epochs train the float network; the last `qat_epochs` (default epochs // 3, at
    least 1 when qat) fine-tune with 15-level fake-quantized weights (STE) and 8-bit activations
    whose scales are calibrated once, at the start of QAT, on `calib_images` training images;
    those scales are the model's. Training images are shifted by up to `augment_shift` pixels
    (new offsets every epoch); the learning rate follows one cosine over all batches (Adam).
    After each epoch the model is scored on fixed subsets of up to `eval_images` training and
    test images (`eval_subsets`; float epochs score the quantized network with scales of the
    evaluated training images). History per epoch: loss and train_acc (running, as trained),
    train_acc_quant, test_acc (float), test_acc_quant, phase, lr (at the epoch's end), seconds.
    BLAS runs on `blas_threads` threads (hil.threads.blas_threads; None leaves it alone)."""
    with scoped_blas_threads(blas_threads):
        return _train(ds, epochs, batch, lr, seed, qat, progress, cancel, on_epoch, qat_epochs,
                      augment_shift, calib_images, eval_images)


def _train(ds, epochs, batch, lr, seed, qat, progress, cancel, on_epoch, qat_epochs,
           augment_shift, calib_images, eval_images):
    cancel, progress = ensure(cancel, progress)
    if epochs < 1 or batch < 1 or lr <= 0 or eval_images < 1 or calib_images < 1:
        raise DataError(f"train_mcnn needs epochs >= 1, batch >= 1, lr > 0, eval_images >= 1 and "
                        f"calib_images >= 1 (got {epochs}, {batch}, {lr}, {eval_images}, {calib_images})")
    if ds.n_train == 0:
        raise DataError(f"dataset {ds.source} has no training images")
    if qat_epochs is None:
        qat_epochs = max(1, epochs // 3) if qat else 0
    qat_epochs = min(qat_epochs, epochs) if qat else 0
    rng = np.random.default_rng(seed)
    model = MCNN(seed=seed)
    opt = nn.Adam(model.params, lr=lr)
    x, y = ds.x_train, ds.y_train
    calib = x[_sample(len(x), calib_images, seed, CALIB_STREAM)]
    ev_train, ev_test = eval_subsets(ds, eval_images, seed)
    xe, ye, xt, yt = x[ev_train], y[ev_train], ds.x_test[ev_test], ds.y_test[ev_test]
    n_batches = -(-len(x) // batch)
    total = epochs * n_batches
    scales = None
    history: list[dict] = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        phase = "qat" if ep >= epochs - qat_epochs else "float"
        if phase == "qat" and scales is None:
            scales = calibrate_scales(model.params, calib)
        loss_sum, correct = 0.0, 0
        ep_seed = int(rng.integers(2 ** 31))
        aug_rng = np.random.default_rng(ep_seed + 1)
        for b, idx in enumerate(nn.minibatches(len(x), batch, ep_seed)):
            cancel.raise_if_cancelled()
            opt.lr = cosine_lr(lr, ep * n_batches + b, total)
            xb = shift_images(x[idx], augment_shift, aug_rng)
            logits, cache = _forward_train(model.params, xb, scales)
            loss, dlogits = nn.softmax_cross_entropy(logits, y[idx])
            opt.step(_backward_train(dlogits, cache))
            loss_sum += loss * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            progress(Progress(ep * n_batches + b + 1, total,
                              f"epoch {ep + 1}/{epochs} ({phase}) loss {loss:.3f}", "batches"))
        model.act_scale = scales if scales is not None else calibrate_scales(
            model.params, calib if ep == epochs - 1 else xe)
        rec = {
            "epoch": ep + 1, "phase": phase, "lr": opt.lr,
            "loss": loss_sum / len(x), "train_acc": correct / len(x),
            "train_acc_quant": model.accuracy(xe, ye, quantized=True),
            "test_acc": model.accuracy(xt, yt, quantized=False),
            "test_acc_quant": model.accuracy(xt, yt, quantized=True),
            "seconds": time.perf_counter() - t0,
        }
        log.info("mCNN epoch %d/%d %s: loss %.4f train %.4f test float %.4f quantized %.4f",
                 ep + 1, epochs, phase, rec["loss"], rec["train_acc"], rec["test_acc"],
                 rec["test_acc_quant"])
        history.append(rec)
        if on_epoch is not None:
            on_epoch(dict(rec))
    return model, history
