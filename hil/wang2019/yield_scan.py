"""Yield scan: which rows and columns of a PE work, found the way the Wang 2019 authors chose
theirs (PAPERS.md §B: only the crossings of good rows and good columns are used).

Every cell of the PE is RESET, SET at a mid gate voltage and RESET again, with a read after each
step. A cell passes when its SET read falls in the window expected at that gate and its second
RESET read is near 0 (the first RESET only brings every cell to a known state). A line is good
when at least `min_good_fraction` of its cells pass; the fractions are counted once over the
whole PE and then again over the good lines of the other direction only, so one dead column does
not count against every row (and a dead row against every column).

The stage stores the map in the run record (`yield/rows`, `yield/cols`, per-cell reads and pass
flags under `yield/cells/`, the config as attrs of `yield`) and returns a `YieldMap`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hil.config import Config, param
from hil.crossbar import Crossbar
from hil.errors import ConfigError, DataError
from hil.geometry import Cells
from hil.limits import Op
from hil.progress import CancelToken, Progress, ProgressCallback, ensure

__all__ = ["YieldScanConfig", "YieldMap", "yield_scan", "good_lines"]

PHASES = ("reset", "set", "reset again")


@dataclass
class YieldScanConfig(Config):
    """Pulses (V, s) and pass windows (S) of the yield scan; defaults from PAPERS.md §B: SET 2.5 V at
    a 1.5 V gate lands near f(1.5 V) ≈ 273 µS, RESET 1.7 V with the gate at 5 V near 0, reads 0.2 V."""

    pe: int = param(0, lo=0)
    v_read: float = param(0.2, lo=0.0, hi=0.5, lo_open=True)
    v_set: float = param(2.5, lo=0.0, hi=5.0, lo_open=True)
    set_gate_v: float = param(1.5, lo=0.0, hi=5.0, lo_open=True)
    v_reset: float = param(1.7, lo=0.0, hi=5.0, lo_open=True)
    reset_gate_v: float = param(5.0, lo=0.0, hi=10.0, lo_open=True)
    width_s: float = param(1e-6, lo=0.0, hi=1e-2, lo_open=True)
    reset_max_s: float = param(30e-6, lo=0.0, hi=1e-3, lo_open=True)
    set_min_s: float = param(150e-6, lo=0.0, hi=1e-2, lo_open=True)
    set_max_s: float = param(400e-6, lo=0.0, hi=1e-2, lo_open=True)
    min_good_fraction: float = param(0.9, lo=0.0, hi=1.0, lo_open=True)
    chunk_rows: int = param(16, lo=1, hi=4096)
    n_avg: int = param(1, lo=1, hi=64)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.reset_max_s < self.set_min_s < self.set_max_s:
            raise ConfigError(f"{type(self).__name__}: the windows must satisfy reset_max_s < set_min_s < "
                              f"set_max_s, got {self.reset_max_s:g} S, {self.set_min_s:g} S, {self.set_max_s:g} S")


@dataclass(frozen=True)
class YieldMap:
    """Good lines of one PE: `rows` (rows,) and `cols` (cols,) booleans, and the per-cell results
    (rows × cols): `passed`, and the reads after SET and after the second RESET (S)."""

    pe: int
    rows: np.ndarray
    cols: np.ndarray
    passed: np.ndarray
    g_set_s: np.ndarray
    g_reset_s: np.ndarray

    @property
    def good_rows(self) -> np.ndarray:
        return np.flatnonzero(self.rows)

    @property
    def good_cols(self) -> np.ndarray:
        return np.flatnonzero(self.cols)

    def summary(self) -> dict:
        """JSON-able counts: good rows and columns, passing cells."""
        return {"pe": self.pe, "good_rows": int(self.rows.sum()), "n_rows": int(self.rows.size),
                "good_cols": int(self.cols.sum()), "n_cols": int(self.cols.size),
                "passed_cells": int(self.passed.sum()), "n_cells": int(self.passed.size)}

    def save(self, writer, config: Optional[YieldScanConfig] = None) -> None:
        """Store the map in a run record under `yield/`."""
        writer.put("yield/rows", self.rows)
        writer.put("yield/cols", self.cols)
        writer.put("yield/cells/passed", self.passed)
        writer.put("yield/cells/g_set_s", self.g_set_s, unit="S")
        writer.put("yield/cells/g_reset_s", self.g_reset_s, unit="S")
        writer.set_attrs("yield", **self.summary(), **({"config": config.to_dict()} if config else {}))

    @classmethod
    def from_record(cls, record) -> "YieldMap":
        """The map a yield scan stored in a run record (`hil.runstore.RunRecord`)."""
        try:
            attrs = record.group_attrs("yield")
            parts = {k: record.dataset(f"yield/{k}")[0] for k in
                     ("rows", "cols", "cells/passed", "cells/g_set_s", "cells/g_reset_s")}
        except (KeyError, DataError) as e:
            raise DataError(f"{getattr(record, 'path', 'record')}: no complete yield map ({e})") from None
        return cls(int(attrs["pe"]), parts["rows"].astype(bool), parts["cols"].astype(bool),
                   parts["cells/passed"].astype(bool), parts["cells/g_set_s"], parts["cells/g_reset_s"])


def good_lines(passed: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Good rows and columns of a (rows × cols) pass map: a line is good when at least
    `min_fraction` of its cells pass, counted first over all lines of the other direction,
    then over the good ones only."""
    passed = np.asarray(passed, bool)
    rows = passed.mean(axis=1) >= min_fraction
    cols = passed.mean(axis=0) >= min_fraction
    rows_again = passed[:, cols].mean(axis=1) >= min_fraction if cols.any() else rows
    cols_again = passed[rows, :].mean(axis=0) >= min_fraction if rows.any() else cols
    return rows_again, cols_again


def yield_scan(xbar: Crossbar, writer, config: YieldScanConfig,
               progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> YieldMap:
    """Find the good rows and columns of PE `config.pe` (stage): RESET, SET at a mid gate, RESET
    again, a read after each, in chunks of rows (progress after each chunk, cancel checked before
    each). Stores the map in `writer` (a RunWriter, or None for no record) and returns it."""
    if not isinstance(config, YieldScanConfig):
        raise ConfigError(f"yield_scan needs a YieldScanConfig, got {type(config).__name__}")
    geom = xbar.geometry
    if config.pe >= geom.n_pe:
        raise ConfigError(f"YieldScanConfig.pe = {config.pe} is not a PE of this chip (0..{geom.n_pe - 1})")
    cancel, progress = ensure(cancel, progress)
    c = config
    chunks = [np.arange(r0, min(r0 + c.chunk_rows, geom.rows)) for r0 in range(0, geom.rows, c.chunk_rows)]
    total = len(PHASES) * len(chunks)
    reads = {phase: np.empty((geom.rows, geom.cols)) for phase in PHASES}
    done = 0
    for phase in PHASES:
        op, v, v_gate = (Op.SET, c.v_set, c.set_gate_v) if phase == "set" else (Op.RESET, c.v_reset, c.reset_gate_v)
        for rows in chunks:
            cancel.raise_if_cancelled()
            cells = Cells.block(c.pe, rows, None, geom)
            n = len(cells)
            xbar.pulse(cells, op, np.full(n, v), np.full(n, v_gate), np.full(n, c.width_s))
            reads[phase][rows] = xbar.read(cells, v_read=c.v_read, n_avg=c.n_avg).reshape(rows.size, geom.cols)
            done += 1
            progress(Progress(done, total, f"yield scan: {phase}, rows {rows[0]}..{rows[-1]}", unit="steps"))
    g_set, g_reset = reads["set"], reads["reset again"]
    passed = (g_set >= c.set_min_s) & (g_set <= c.set_max_s) & (g_reset <= c.reset_max_s)
    rows_ok, cols_ok = good_lines(passed, c.min_good_fraction)
    ymap = YieldMap(c.pe, rows_ok, cols_ok, passed, g_set, g_reset)
    if writer is not None:
        ymap.save(writer, config)
    return ymap
