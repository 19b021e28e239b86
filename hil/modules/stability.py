"""Backend-agnostic long experiments on programmed cells: read disturb and retention drift.

Both take a programmed selection (`cells`, per-cell `targets_s`, in-band half-width
`tolerance_s`), speak only the Crossbar contract and use the optional capabilities when the
backend has them:

- `read_disturb` applies bulk read pulses with `xbar.read_stress` (else repeated `xbar.read`
  calls in chunks) and reads the cells at checkpoints;
- `drift` moves a virtual clock with `xbar.advance` (else waits in real time, in short sleeps
  that check the cancel token) and reads the cells at chosen times after the start.

Each returns a result dataclass holding the raw snapshot arrays (conductance in siemens per
cell, in selection order) and a JSON-able `to_dict()` summary. Progress is reported after every
step (unit "steps"); the cancel token is checked between steps and between chunks or sleeps.
Their settings are `ReadDisturbConfig` / `DriftConfig`, validated on construction.

`experiment` is the stage `hil experiment` and the GUI's Experiments tab both run: it records
the config (``experiment.stage_config``), the cells, every snapshot and the summary.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from hil.config import Config, param
from hil.crossbar import Crossbar
from hil.errors import BackendError, ConfigError
from hil.geometry import Cells
from hil.options import MAX_N_AVG
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.runstore import RunWriter

log = logging.getLogger(__name__)

__all__ = ["ReadDisturbConfig", "DriftConfig", "ReadDisturbResult", "DriftResult", "read_disturb", "drift",
           "experiment", "DEFAULT_DRIFT_TIMES_S", "format_count", "format_duration"]

US_PER_S = 1e6  # siemens -> µS multiplier
DAY = 86400.0
#: default drift snapshot times after the start: 1 s, 10 min, 1 h, 1 d, 7 d, 30 d
DEFAULT_DRIFT_TIMES_S = (1.0, 600.0, 3600.0, DAY, 7 * DAY, 30 * DAY)
#: read pulses per `xbar.read` call in the fallback path of `read_disturb`
FALLBACK_CHUNK_READS = 1000
#: longest single sleep while waiting in real time (the cancel token is checked in between)
MAX_SLEEP_S = 0.1
#: most read pulses of a read-disturb run: 1000x the 1e6 of Yao Ext. Data Fig. 7 (at ~1 µs per
#: read pulse a real station is busy for a quarter of an hour per selection)
MAX_DISTURB_READS = 10**9
#: longest drift run: 10 years, the usual retention specification (the model is calibrated to 30 days)
MAX_DRIFT_DAYS = 3650.0


# ---- configs -------------------------------------------------------------------------------
@dataclass
class ReadDisturbConfig(Config):
    """Read disturb: `reads` read pulses of `v_read` (V; None: the backend's), snapshots at
    `checkpoints` (read counts; (): 1, reads/10, reads/2, reads), each the mean of `n_avg`
    reads; without `read_stress` the pulses go in `xbar.read` calls of `chunk_reads`."""

    reads: int = param(1_000_000, lo=1, hi=MAX_DISTURB_READS)
    checkpoints: tuple[int, ...] = param((), lo=0, hi=MAX_DISTURB_READS)
    n_avg: int = param(16, lo=1, hi=MAX_N_AVG)
    v_read: Optional[float] = None
    chunk_reads: int = param(FALLBACK_CHUNK_READS, lo=1, hi=MAX_DISTURB_READS)


@dataclass
class DriftConfig(Config):
    """Drift: snapshots (each the mean of `n_avg` reads) at `times_s` after the start (seconds;
    (): 1 s, 10 min, 1 h, 1 d, 7 d, 30 d up to `days`)."""

    days: float = param(30.0, lo=0.0, hi=MAX_DRIFT_DAYS, lo_open=True)
    times_s: tuple[float, ...] = param((), lo=0.0, hi=MAX_DRIFT_DAYS * DAY)
    n_avg: int = param(4, lo=1, hi=MAX_N_AVG)


#: the experiments by record kind
CONFIGS = {"read-disturb": ReadDisturbConfig, "drift": DriftConfig}


def _plain(v):
    """A numpy scalar as the Python number a Config takes."""
    return v.item() if isinstance(v, np.generic) else v


# ---- labels --------------------------------------------------------------------------------
SnapshotCallback = Callable[[int, str, np.ndarray], None]


def format_count(n: int, unit: str = "read") -> str:
    """Short label for a count of reads: 0 -> '0 reads', 1 -> '1 read', 500000 -> '5e5 reads'."""
    n = int(n)
    plural = unit if n == 1 else unit + "s"
    if n < 10_000:
        return f"{n} {plural}"
    e = int(math.floor(math.log10(n)))
    m = n / 10 ** e
    ms = f"{m:.3g}"
    return f"{ms}e{e} {plural}"


def format_duration(t: float) -> str:
    """Short label for seconds: 1 -> '1 s', 600 -> '10 min', 3600 -> '1 h', 2592000 -> '30 d'."""
    t = float(t)
    for size, unit in ((DAY, "d"), (3600.0, "h"), (60.0, "min"), (1.0, "s")):
        if t >= size:
            return f"{t / size:.3g} {unit}"
    if t <= 0:
        return "0 s"
    return f"{t * 1e3:.3g} ms"


# ---- shared validation ---------------------------------------------------------------------
def _prepare(xbar: Crossbar, cells, targets_s, tolerance_s, n_avg):
    if not isinstance(xbar, Crossbar):
        raise TypeError(f"expected a Crossbar, got {type(xbar).__name__}")
    if not isinstance(cells, Cells):
        raise TypeError(f"expected a Cells selection, got {type(cells).__name__}")
    cells = cells.validate(xbar.geometry)
    n = len(cells)
    if n == 0:
        raise ConfigError("the cell selection is empty; select at least one programmed cell")
    try:
        t = np.asarray(targets_s, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ConfigError("targets_s must be numbers (siemens), one per cell") from None
    if t.size == 1:
        t = np.full(n, float(t[0]))
    if t.size != n:
        raise ConfigError(f"got {t.size} targets for {n} cells")
    tol = np.asarray(tolerance_s, dtype=float).ravel()
    if tol.size == 1:
        tol = np.full(n, float(tol[0]))
    if tol.size != n:
        raise ConfigError(f"got {tol.size} tolerances for {n} cells (give one, or one per cell)")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(tol))) or (tol < 0).any():
        raise ConfigError("targets and tolerances must be finite, tolerances non-negative (siemens)")
    n_avg = int(n_avg)
    if n_avg < 1:
        raise ConfigError(f"n_avg must be >= 1, got {n_avg}")
    return cells, t, tol, n_avg


def _read(xbar: Crossbar, cells: Cells, n_avg: int, v_read: Optional[float] = None) -> np.ndarray:
    g = np.asarray(xbar.read(cells, v_read=v_read, n_avg=n_avg), dtype=float).ravel()
    if g.size != len(cells):
        raise BackendError(f"{type(xbar).__name__}.read returned {g.size} values for {len(cells)} cells")
    return g


def _in_band(g: np.ndarray, targets: np.ndarray, tol: np.ndarray) -> np.ndarray:
    return np.abs(g - targets) <= tol


def _f(x) -> float:
    return float(x)


# ---- read disturb --------------------------------------------------------------------------
@dataclass
class ReadDisturbResult:
    """Conductance of the cells after increasing numbers of read pulses.

    `checkpoints[k]` read pulses had been applied when `snapshots[labels[k]]` was taken
    (checkpoint 0 is the reading before any stress). `out_of_band_fraction[k]` is the fraction of
    cells outside target ± tolerance at checkpoint k; `left_band_fraction` the fraction of cells
    in band at 0 reads and out of band at the last checkpoint; `mean_abs_delta_us` the mean
    |G(last) − G(0)| in µS. The stress counts exclude the `n_avg` reads of each measurement."""

    checkpoints: list
    labels: list
    snapshots: dict
    targets_s: np.ndarray
    tolerance_s: np.ndarray
    out_of_band_fraction: list
    left_band_fraction: float
    mean_abs_delta_us: float
    n_avg: int
    v_read: Optional[float]
    used_read_stress: bool
    wall_seconds: float = 0.0
    backend_seconds: float = 0.0

    @property
    def delta_s(self) -> np.ndarray:
        """G(last checkpoint) − G(0 reads), siemens, per cell."""
        return self.snapshots[self.labels[-1]] - self.snapshots[self.labels[0]]

    def to_dict(self) -> dict:
        d = self.delta_s
        return {
            "experiment": "read_disturb",
            "cells": int(self.targets_s.size),
            "checkpoints": [int(c) for c in self.checkpoints],
            "labels": list(self.labels),
            "out_of_band_fraction": [_f(x) for x in self.out_of_band_fraction],
            "left_band_fraction": _f(self.left_band_fraction),
            "mean_abs_delta_us": _f(self.mean_abs_delta_us),
            "mean_delta_us": _f(np.mean(d) * US_PER_S),
            "max_abs_delta_us": _f(np.max(np.abs(d)) * US_PER_S),
            "mean_g_us": [_f(np.mean(self.snapshots[k]) * US_PER_S) for k in self.labels],
            "n_avg": int(self.n_avg),
            "v_read": None if self.v_read is None else _f(self.v_read),
            "used_read_stress": bool(self.used_read_stress),
            "wall_seconds": _f(self.wall_seconds),
            "backend_seconds": _f(self.backend_seconds),
        }


def _disturb_checkpoints(reads: int, checkpoints) -> list:
    cps = [1, reads // 10, reads // 2, reads] if checkpoints is None else list(checkpoints)
    cps = sorted({c for c in cps if c > 0})
    if not cps:
        raise ConfigError("read disturb needs at least one positive checkpoint (number of reads)")
    return cps


def read_disturb(xbar: Crossbar, cells: Cells, targets_s, tolerance_s, *, reads: int = 1_000_000,
                 checkpoints: Optional[Sequence[int]] = None, v_read: Optional[float] = None,
                 n_avg: int = 16, chunk_reads: int = FALLBACK_CHUNK_READS,
                 progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None,
                 on_snapshot: Optional[SnapshotCallback] = None) -> ReadDisturbResult:
    """Read the cells (averaging `n_avg` reads), then apply read pulses up to each checkpoint
    (default 1, reads/10, reads/2, reads) and read them again at every checkpoint.

    Uses `xbar.read_stress(cells, n, v_read)` when the backend has it, else `xbar.read` calls of
    at most `chunk_reads` reads each (the cancel token is checked between chunks). `v_read` is the
    stress pulse amplitude (None: the backend default); measurements use the default amplitude.
    `on_snapshot(k, label, g)` sees every snapshot as it is taken (live plots)."""
    cancel, progress = ensure(cancel, progress)
    cfg = ReadDisturbConfig(reads=_plain(reads), n_avg=_plain(n_avg), chunk_reads=_plain(chunk_reads),
                            v_read=_plain(v_read), checkpoints=tuple(_plain(c) for c in checkpoints or ()))
    cells, targets, tol, n_avg = _prepare(xbar, cells, targets_s, tolerance_s, cfg.n_avg)
    reads, chunk_reads = cfg.reads, cfg.chunk_reads
    cps = _disturb_checkpoints(reads, cfg.checkpoints or None)
    use_stress = xbar.has("read_stress")
    cancel.raise_if_cancelled()

    t_wall, t_backend = time.perf_counter(), xbar.now()
    total = len(cps) + 1
    labels, snaps, oob = [], {}, []

    def snapshot(count: int, step: int) -> None:
        g = _read(xbar, cells, n_avg)
        label = format_count(count)
        labels.append(label)
        snaps[label] = g
        if on_snapshot is not None:
            on_snapshot(len(labels) - 1, label, g)
        frac = 1.0 - float(np.mean(_in_band(g, targets, tol)))
        oob.append(frac)
        progress(Progress(step, total, f"read disturb: {label}, {100 * frac:.2f}% out of band", unit="steps"))

    snapshot(0, 1)
    applied = 0
    for k, cp in enumerate(cps):
        cancel.raise_if_cancelled()
        todo = cp - applied
        if use_stress:
            xbar.read_stress(cells, todo, v_read=v_read)
        else:
            while todo > 0:
                m = min(todo, chunk_reads)
                xbar.read(cells, v_read=v_read, n_avg=m)
                todo -= m
                if todo > 0:
                    cancel.raise_if_cancelled()
        applied = cp
        cancel.raise_if_cancelled()
        snapshot(cp, k + 2)

    g0, g1 = snaps[labels[0]], snaps[labels[-1]]
    in0 = _in_band(g0, targets, tol)
    left = float(np.mean(in0 & ~_in_band(g1, targets, tol)))
    res = ReadDisturbResult(
        checkpoints=[0] + cps, labels=labels, snapshots=snaps, targets_s=targets, tolerance_s=tol,
        out_of_band_fraction=oob, left_band_fraction=left,
        mean_abs_delta_us=float(np.mean(np.abs(g1 - g0)) * US_PER_S), n_avg=n_avg, v_read=v_read,
        used_read_stress=use_stress, wall_seconds=time.perf_counter() - t_wall,
        backend_seconds=float(xbar.now() - t_backend))
    log.info("read disturb: %d cells, %d reads, %.3f%% left the band, mean |dG| %.4f µS",
             len(cells), cps[-1], 100 * left, res.mean_abs_delta_us)
    return res


# ---- drift ---------------------------------------------------------------------------------
@dataclass
class DriftResult:
    """Conductance of the cells at increasing times after the start of the experiment.

    `times_s[k]` is the planned time of snapshot k (label `labels[k]`), `elapsed_s[k]` the
    measured one. Per-level statistics are (n_times, n_levels) arrays in µS, over the groups of
    `level_ids` (one entry per level, in `level_targets_s` order)."""

    times_s: list
    elapsed_s: list
    labels: list
    snapshots: dict
    targets_s: np.ndarray
    tolerance_s: np.ndarray
    level_index: np.ndarray        # per cell, index into level_ids
    level_ids: np.ndarray          # the level numbers (given level_index values or 0..n-1)
    level_targets_s: np.ndarray    # mean target of each level
    in_band_fraction: list
    level_mean_us: np.ndarray
    level_std_us: np.ndarray       # robust spread per level (IQR / 1.349), µS
    n_avg: int
    used_advance: bool
    wall_seconds: float = 0.0
    backend_seconds: float = 0.0

    def std_growth(self) -> np.ndarray:
        """Per-level std at the last snapshot divided by the std at the first one."""
        first = self.level_std_us[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(first > 0, self.level_std_us[-1] / first, np.nan)

    def to_dict(self) -> dict:
        growth = self.std_growth()
        return {
            "experiment": "drift",
            "cells": int(self.targets_s.size),
            "times_s": [_f(t) for t in self.times_s],
            "elapsed_s": [_f(t) for t in self.elapsed_s],
            "labels": list(self.labels),
            "in_band_fraction": [_f(x) for x in self.in_band_fraction],
            "level_ids": [int(i) for i in self.level_ids],
            "level_targets_us": [_f(t * US_PER_S) for t in self.level_targets_s],
            "level_mean_us": [[_f(x) for x in row] for row in self.level_mean_us],
            "level_std_us": [[_f(x) for x in row] for row in self.level_std_us],
            "median_std_growth": _f(np.nanmedian(growth)) if np.isfinite(growth).any() else None,
            "n_avg": int(self.n_avg),
            "used_advance": bool(self.used_advance),
            "wall_seconds": _f(self.wall_seconds),
            "backend_seconds": _f(self.backend_seconds),
        }


def _drift_times(cfg: DriftConfig) -> list:
    if cfg.times_s:
        return sorted(set(cfg.times_s))
    ts = [t for t in DEFAULT_DRIFT_TIMES_S if t <= cfg.days * DAY * (1 + 1e-12)]
    return ts or [cfg.days * DAY]


def _levels(targets: np.ndarray, level_index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-cell group index, group ids, mean target per group)."""
    if level_index is None:
        ids, inv = np.unique(targets, return_inverse=True)
        return inv.astype(np.int64), np.arange(ids.size, dtype=np.int64), ids.astype(float)
    li = np.asarray(level_index).ravel()
    if li.size != targets.size:
        raise ConfigError(f"got {li.size} level indices for {targets.size} cells")
    ids, inv = np.unique(li, return_inverse=True)
    counts = np.bincount(inv, minlength=ids.size)
    tmean = np.bincount(inv, weights=targets, minlength=ids.size) / counts
    return inv.astype(np.int64), ids.astype(np.int64), tmean


def _group_stats(g: np.ndarray, inv: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-level mean and robust spread (interquartile range / 1.349, the σ of a normal
    distribution): a few stuck or unresponsive cells must not dominate a level's spread."""
    counts = np.bincount(inv, minlength=n_groups).astype(float)
    mean = np.bincount(inv, weights=g, minlength=n_groups) / counts
    spread = np.array([np.subtract(*np.percentile(g[inv == k], [75, 25])) / 1.349 for k in range(n_groups)])
    return mean, spread


def wait_real(seconds: float, cancel: CancelToken) -> None:
    """Wait `seconds` of wall-clock time in slices of at most MAX_SLEEP_S, raising as soon as
    `cancel` is set (the waits of a retention or a sequence delay on an instrument station)."""
    end = time.monotonic() + seconds
    while True:
        cancel.raise_if_cancelled()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(MAX_SLEEP_S, left))


def drift(xbar: Crossbar, cells: Cells, targets_s, tolerance_s, *, days: float = 30.0,
          times_s: Optional[Sequence[float]] = None, n_avg: int = 4, level_index=None,
          progress: Optional[ProgressCallback] = None,
          cancel: Optional[CancelToken] = None,
          on_snapshot: Optional[SnapshotCallback] = None) -> DriftResult:
    """Read the cells at times after the start: by default 1 s, 10 min, 1 h, 1 d, 7 d and 30 d,
    limited to `days` (or explicit `times_s`, seconds).

    Uses `xbar.advance` (virtual clock) when the backend has it, else waits in real time in
    sleeps of at most 0.1 s that check the cancel token. Per-level statistics group the cells
    by `level_index` (one per cell) or, if None, by identical targets. `on_snapshot(k, label, g)`
    sees every snapshot as it is taken."""
    cancel, progress = ensure(cancel, progress)
    cfg = DriftConfig(days=_plain(days), n_avg=_plain(n_avg), times_s=tuple(_plain(t) for t in times_s or ()))
    cells, targets, tol, n_avg = _prepare(xbar, cells, targets_s, tolerance_s, cfg.n_avg)
    ts = _drift_times(cfg)
    inv, ids, level_t = _levels(targets, level_index)
    use_advance = xbar.has("advance")
    cancel.raise_if_cancelled()

    t_wall, t_backend = time.perf_counter(), xbar.now()
    clock = (lambda: float(xbar.now()) - t_backend) if use_advance else (lambda: time.perf_counter() - t_wall)
    labels, snaps, elapsed, inb = [], {}, [], []
    means, stds = [], []
    total = len(ts)
    for k, t in enumerate(ts):
        cancel.raise_if_cancelled()
        dt = t - clock()
        if dt > 0:
            if use_advance:
                xbar.advance(dt)
            else:
                wait_real(dt, cancel)
        elapsed.append(clock())
        g = _read(xbar, cells, n_avg)
        label = format_duration(t)
        if label in snaps:                     # two times with the same short label
            label = f"{label} ({t:g} s)"
        labels.append(label)
        snaps[label] = g
        if on_snapshot is not None:
            on_snapshot(k, label, g)
        frac = float(np.mean(_in_band(g, targets, tol)))
        inb.append(frac)
        m, s = _group_stats(g, inv, ids.size)
        means.append(m * US_PER_S)
        stds.append(s * US_PER_S)
        progress(Progress(k + 1, total, f"drift: {label}, {100 * frac:.1f}% in band", unit="steps"))

    res = DriftResult(
        times_s=ts, elapsed_s=elapsed, labels=labels, snapshots=snaps, targets_s=targets,
        tolerance_s=tol, level_index=inv, level_ids=ids, level_targets_s=level_t,
        in_band_fraction=inb, level_mean_us=np.array(means), level_std_us=np.array(stds),
        n_avg=n_avg, used_advance=use_advance, wall_seconds=time.perf_counter() - t_wall,
        backend_seconds=float(xbar.now() - t_backend))
    log.info("drift: %d cells over %s, in band %.1f%% -> %.1f%%", len(cells), labels[-1],
             100 * inb[0], 100 * inb[-1])
    return res


# ---- the stage -----------------------------------------------------------------------------
def experiment(xbar: Crossbar, writer: RunWriter, cfg: Union[ReadDisturbConfig, DriftConfig], plan, *,
               progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
               on_snapshot: Optional[SnapshotCallback] = None) -> Union[ReadDisturbResult, DriftResult]:
    """Run `cfg`'s experiment on the cells of `plan` (a hil.ops.jobs.ProgramPlan: flat cells,
    targets, tolerance, level indices) and record it under `experiment/`: the config
    (`stage_config`), `cells`, `snapshots/<label>` and the summary."""
    cells = Cells.from_flat(plan.flat, xbar.geometry)
    writer.set_attrs("experiment", stage_config=cfg.to_dict())
    writer.put("experiment/cells", plan.flat)
    run = dict(progress=progress, cancel=cancel, on_snapshot=on_snapshot, n_avg=cfg.n_avg)
    if isinstance(cfg, ReadDisturbConfig):
        res = read_disturb(xbar, cells, plan.targets_s, plan.tolerance_s, reads=cfg.reads,
                           checkpoints=cfg.checkpoints or None, v_read=cfg.v_read, chunk_reads=cfg.chunk_reads, **run)
    else:
        res = drift(xbar, cells, plan.targets_s, plan.tolerance_s, days=cfg.days, times_s=cfg.times_s or None,
                    level_index=plan.level_index, **run)
    for label, g in res.snapshots.items():
        writer.put(f"experiment/snapshots/{label}", np.asarray(g))
    writer.set_attrs("experiment", summary=res.to_dict())
    return res
