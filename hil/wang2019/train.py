"""Software (float64) training of the Wang 2019 networks: the reference for in-situ runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from hil.errors import ConfigError
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.wang2019.data import WangData
from hil.wang2019.nets import WangConvLSTM, WangCNN
from hil.wang2019.optim import RMSprop


@dataclass
class TrainResult:
    """Per-batch summed loss, per-epoch test accuracy (a float for the CNN, a list of one
    accuracy per time step for the ConvLSTM) and the number of weight updates."""

    losses: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    updates: int = 0


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def train_software(net, data: WangData, epochs: int = 2, batch: int = 100,
                   seed: Optional[int] = 0, optimizer: Optional[RMSprop] = None,
                   progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None) -> TrainResult:
    """Train `net` on `data` as the authors do: batches in file order (no shuffling), summed
    cross-entropy, RMSprop (lr 0.01, decay 0.9, eps 1e-8), test accuracy after each epoch.

    `seed` re-initializes the weights (None keeps the current ones)."""
    epochs, batch = _positive_int("epochs", epochs), _positive_int("batch", batch)
    if not isinstance(net, (WangCNN, WangConvLSTM)):
        raise ConfigError(f"net must be a WangCNN or WangConvLSTM, got {type(net).__name__}")
    if (data.x_train.shape[1:] != net.IN_SHAPE) or data.n_classes != net.N_CLASSES:
        raise ConfigError(f"{type(net).__name__} needs inputs {net.IN_SHAPE} with "
                          f"{net.N_CLASSES} classes; {data.source} has {data.x_train.shape[1:]} "
                          f"with {data.n_classes}")
    cancel, progress = ensure(cancel, progress)
    if seed is not None:
        net.init_weights(seed)
    opt = optimizer or RMSprop()
    n = data.y_train.size
    per_epoch = -(-n // batch)
    res = TrainResult()
    for epoch in range(epochs):
        for b, start in enumerate(range(0, n, batch)):
            cancel.raise_if_cancelled()
            sl = slice(start, start + batch)
            loss, grads, _ = net.loss_and_grads(data.x_train[sl], data.y_train[sl])
            opt.step(net.weights, grads)
            res.losses.append(loss)
            res.updates += 1
            progress(Progress(epoch * per_epoch + b + 1, epochs * per_epoch,
                              f"epoch {epoch + 1}/{epochs}, loss {loss:.3g}", "batches"))
        res.test_acc.append(net.accuracy(data.x_test, data.y_test))
    return res
