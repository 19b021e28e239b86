"""Hybrid training (Yao 2020): after weight transfer, train only the FC layer in situ.

The training inputs go through the hardware convolvers; the FC layer's outputs are measured
on its PEs; the cross-entropy gradient is computed in software from those measured outputs;
accumulated updates of a weight are applied to its differential pair as SET/RESET pulses
(closed loop, a few pulses) only once they exceed a threshold, and the conductances actually
reached are read back, so the FC layer learns to compensate the errors of every layer before it.
The convolution weights are not changed, so each input's convolver output is measured once and
kept in the host buffer for all epochs.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

from hil.config import Config, param
from hil.errors import ConfigError, DataError
from hil.analog.update import ClosedLoop, UpdateEngine
from hil.nn.core import softmax
from hil.yao2020.hwnet import HardwareMCNN
from hil.yao2020.mcnn import FC
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.runstore import RunWriter

log = logging.getLogger(__name__)


@dataclass
class HybridConfig(Config):
    """Settings of in-situ FC training."""

    fraction: float = param(0.1, lo=0.0, hi=1.0, lo_open=True)   # of the training set run through the hardware
    epochs: int = param(6, lo=1, hi=10_000)
    batch: int = param(100, lo=1, hi=1_000_000)
    lr_levels: float = param(0.02, lo=0.0, hi=1e3, lo_open=True)  # normalized gradient step per mini-batch, in weight levels
    threshold_levels: float = param(0.5, lo=0.0, hi=1e3, lo_open=True)  # accumulated update that triggers programming pulses
    max_pulses: int = param(12, lo=1, hi=1_000_000)              # per update, per cell
    seed: int = param(0, lo=0, hi=2**32 - 1)


def fc_engine(hw: HardwareMCNN, max_pulses: int, state: Optional[dict] = None) -> UpdateEngine:
    """Closed-loop update engine on the FC layer's pairs (reads them, or restores `state`)."""
    enc = hw.enc
    policy = ClosedLoop(enc.g_min_s, enc.g_max_s, enc.tolerance_s, max_pulses=int(max_pulses))
    return UpdateEngine(hw.layer(FC.name), policy, state)


def accuracy(hw: HardwareMCNN, codes: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the hardware FC layer on convolver outputs `codes`."""
    if len(codes) == 0:
        return float("nan")
    return float(np.mean(np.argmax(hw.fc_logits(codes), axis=1) == np.asarray(y)))


CHECKPOINT_KEYS = ("fraction", "batch", "lr_levels", "threshold_levels", "max_pulses", "seed")


def hybrid_train(hw: HardwareMCNN, codes: np.ndarray, y: np.ndarray, cfg: HybridConfig, *,
                 evals: Optional[dict] = None, writer: Optional[RunWriter] = None, prefix: str = "hybrid",
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                 on_epoch: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Train the FC layer in situ on measured convolver outputs `codes` (N, FC inputs) with labels y.

    `evals` maps a name to (codes, labels) measured once; each is scored after every epoch
    (epoch 0 = right after transfer). Returns the per-epoch history (of this call).

    With a writer, every epoch is a checkpoint: `prefix/checkpoint` (accumulator, the host's
    conductances, RNG state, counters and the epoch's row) then the row in `prefix/epochs`.
    A writer whose run holds a checkpoint continues after it, so a resumed stage produces the
    same rows as an uninterrupted run with the same seed (on a chip in the checkpoint's state)."""
    cancel, progress = ensure(cancel, progress)
    codes = np.asarray(codes)
    y = np.asarray(y, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] != FC.n_in or len(codes) != len(y):
        raise DataError(f"hybrid training needs codes (N, {FC.n_in}) and N labels, "
                        f"got {codes.shape} and {y.shape}")
    evals = evals or {}
    ckpt_name, rows_name = f"{prefix}/checkpoint", f"{prefix}/epochs"
    ckpt = writer.content.datasets.get(ckpt_name) if writer is not None else None
    if ckpt is not None:
        arr, meta = ckpt
        old = meta.get("config", {})
        changed = [k for k in CHECKPOINT_KEYS if old.get(k) != asdict(cfg)[k]]
        if changed:
            raise ConfigError(f"{writer.path}: hybrid training {prefix!r} was started with "
                              + ", ".join(f"{k}={old.get(k)!r}" for k in changed)
                              + "; resume it with the same settings")
        if meta["samples"] != len(codes):
            raise DataError(f"{writer.path}: hybrid training {prefix!r} was started on {meta['samples']} "
                            f"samples, not {len(codes)}")
        upd = fc_engine(hw, cfg.max_pulses, {"g_pos": arr[1], "g_neg": arr[2], "pulses": meta["pulses"],
                                             "updates": meta["updates"]})
        acc = np.array(arr[0], float)
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = meta["rng"]
        start_epoch = int(meta["epoch"])
        rows = writer.content.tables.get(rows_name, {}).get("epoch", np.zeros(0))
        if not len(rows) or int(rows[-1]) < start_epoch:     # cut off between checkpoint and row
            writer.append(rows_name, **{k: np.array([v]) for k, v in meta["row"].items()})
    else:
        if writer is not None:                  # before the chip is touched: a kill after it redoes nothing
            writer.set_attrs(prefix, config=asdict(cfg), samples=int(len(codes)))
        upd = fc_engine(hw, cfg.max_pulses)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x4B1D]))
        acc = np.zeros(FC.matrix_shape)
        start_epoch = None
    scale = hw.model.unit_scale(FC.name)
    history: list[dict] = []
    n_batches = -(-len(codes) // cfg.batch)
    total = cfg.epochs * n_batches

    def record(epoch: int, loss: float) -> None:
        row = {"epoch": epoch, "loss": loss, "pulses": upd.pulses, "updates": upd.updates,
               "time_s": hw.xbar.now()}
        for name, (c, yy) in evals.items():
            row[f"acc_{name}"] = accuracy(hw, c, yy)
        history.append(row)
        if writer is not None:
            writer.put(ckpt_name, np.stack([acc, upd.g_pos, upd.g_neg]), epoch=epoch, row=row,
                       rng=rng.bit_generator.state, pulses=upd.pulses, updates=upd.updates,
                       samples=int(len(codes)), config=asdict(cfg))
            writer.append(rows_name, **{k: np.array([v]) for k, v in row.items()})
        if on_epoch:
            on_epoch(row)

    if start_epoch is None:
        start_epoch = 0
        record(0, float("nan"))
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        order = rng.permutation(len(codes))
        losses = []
        for b in range(n_batches):
            cancel.raise_if_cancelled()
            idx = order[b * cfg.batch:(b + 1) * cfg.batch]
            x, t = codes[idx], y[idx]
            p = softmax(hw.fc_logits(x))
            losses.append(float(-np.mean(np.log(p[np.arange(len(t)), t] + 1e-12))))
            p[np.arange(len(t)), t] -= 1.0
            grad = scale * (x.T.astype(float) @ p) / len(t)          # dL/dq, (FC inputs, outputs)
            rms = np.sqrt(np.mean(grad ** 2))
            if rms > 0:
                acc -= cfg.lr_levels * grad / rms
            due = np.abs(acc) >= cfg.threshold_levels
            delta = np.where(due, acc, 0.0)
            reached = upd.apply(delta, cancel)
            acc = np.where(due, np.clip(acc - reached, -2.0, 2.0), acc)
            progress(Progress((epoch - 1) * n_batches + b + 1, total, f"hybrid epoch {epoch}/{cfg.epochs}", "batch"))
        record(epoch, float(np.mean(losses)))
    return history
