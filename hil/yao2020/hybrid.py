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

from hil.errors import ConfigError, DataError
from hil.geometry import Cells
from hil.yao2020.hwnet import HardwareMCNN
from hil.analog.mapping import SHARED
from hil.programming import WriteVerifyPolicy
from hil.ops.write_verify import write_verify
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.runstore import RunWriter

log = logging.getLogger(__name__)


@dataclass
class HybridConfig:
    """Settings of in-situ FC training."""

    fraction: float = 0.1             # of the training set run through the hardware
    epochs: int = 6
    batch: int = 100
    lr_levels: float = 0.02           # normalized gradient step per mini-batch, in weight levels
    threshold_levels: float = 0.5     # accumulated update that triggers programming pulses
    max_pulses: int = 12              # per update, per cell
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"hybrid fraction must be in (0, 1], got {self.fraction}")
        for name in ("epochs", "batch", "max_pulses"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"hybrid {name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr_levels > 0 and self.threshold_levels > 0):
            raise ConfigError("hybrid lr_levels and threshold_levels must be positive")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class FcUpdater:
    """Keeps the measured FC conductances and turns level updates into pulses on the pairs."""

    def __init__(self, hw: HardwareMCNN, max_pulses: int, g: Optional[tuple] = None) -> None:
        self.hw = hw
        plan, self.enc = hw.plan, hw.enc
        cells, i_in, i_out, sign = plan.cells("fc", SHARED)
        shape = plan.layers["fc"]
        # (pe, row, col) index grids of the positive and negative cell of every weight
        self.pos = tuple(np.zeros(shape, np.int64) for _ in range(3))
        self.neg = tuple(np.zeros(shape, np.int64) for _ in range(3))
        for dst, s in ((self.pos, 1), (self.neg, -1)):
            m = sign == s
            for a, src in zip(dst, (cells.pe, cells.row, cells.col)):
                a[i_in[m], i_out[m]] = src[m]
        # the conductances known to the host: read now, or restored from a checkpoint
        self.g_pos, self.g_neg = (self._read(self.pos), self._read(self.neg)) if g is None else \
            (np.array(g[0], float), np.array(g[1], float))
        self.policy = WriteVerifyPolicy(max_pulses=int(max_pulses))
        self.pulses = 0
        self.updates = 0

    def _read(self, grid: tuple) -> np.ndarray:
        return self.hw.xbar.read(Cells(*(a.ravel() for a in grid)), n_avg=2).reshape(grid[0].shape)

    def apply(self, delta_levels: np.ndarray, cancel: Optional[CancelToken] = None) -> np.ndarray:
        """Move the weights where `delta_levels` != 0; return the change reached, in levels."""
        enc = self.enc
        i, o = np.nonzero(delta_levels)
        if i.size == 0:
            return np.zeros_like(delta_levels)
        d = delta_levels[i, o]
        gp, gn = self.g_pos[i, o], self.g_neg[i, o]
        # Raise one cell of the pair, or lower the other when it still holds a negative/positive part.
        lower_neg = (d > 0) & (gn > enc.g_min_s + 0.5 * enc.step_s)
        lower_pos = (d < 0) & (gp > enc.g_min_s + 0.5 * enc.step_s)
        on_pos = ((d > 0) & ~lower_neg) | lower_pos
        g_now = np.where(on_pos, gp, gn)
        change = np.where(on_pos, d, -d) * enc.step_s
        target = np.clip(g_now + change, enc.g_min_s, enc.g_max_s)
        sel = np.abs(target - g_now) > 0.25 * enc.tolerance_s
        if not sel.any():
            return np.zeros_like(delta_levels)
        i, o, on_pos, target, g_now = i[sel], o[sel], on_pos[sel], target[sel], g_now[sel]
        cells = Cells(*(np.where(on_pos, p[i, o], n[i, o]) for p, n in zip(self.pos, self.neg)))
        rep = write_verify(self.hw.xbar, cells, target, enc.tolerance_s, self.policy, cancel=cancel)
        g_new = np.where(np.isfinite(rep.final_s), rep.final_s, g_now)
        self.pulses += int(rep.pulses.sum())
        self.updates += int(i.size)
        reached = np.zeros_like(delta_levels)
        dg = (g_new - g_now) / enc.step_s
        reached[i, o] = np.where(on_pos, dg, -dg)
        self.g_pos[i[on_pos], o[on_pos]] = g_new[on_pos]
        self.g_neg[i[~on_pos], o[~on_pos]] = g_new[~on_pos]
        return reached


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
    """Train the FC layer in situ on measured convolver outputs `codes` (N, 192) with labels y.

    `evals` maps a name to (codes, labels) measured once; each is scored after every epoch
    (epoch 0 = right after transfer). Returns the per-epoch history (of this call).

    With a writer, every epoch is a checkpoint: `prefix/checkpoint` (accumulator, the host's
    conductances, RNG state, counters and the epoch's row) then the row in `prefix/epochs`.
    A writer whose run holds a checkpoint continues after it, so a resumed stage produces the
    same rows as an uninterrupted run with the same seed (on a chip in the checkpoint's state)."""
    cancel, progress = ensure(cancel, progress)
    codes = np.asarray(codes)
    y = np.asarray(y, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] != hw.plan.layers["fc"][0] or len(codes) != len(y):
        raise DataError(f"hybrid training needs codes (N, {hw.plan.layers['fc'][0]}) and N labels, "
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
        upd = FcUpdater(hw, cfg.max_pulses, g=(arr[1], arr[2]))
        upd.pulses, upd.updates = int(meta["pulses"]), int(meta["updates"])
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
        upd = FcUpdater(hw, cfg.max_pulses)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x4B1D]))
        acc = np.zeros(hw.plan.layers["fc"])
        start_epoch = None
    scale = hw._scale("fc")
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
            grad = scale * (x.T.astype(float) @ p) / len(t)          # dL/dq, (192, 10)
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
