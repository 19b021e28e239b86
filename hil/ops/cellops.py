"""A crash-safe record of manual cell operations (reads, SET/RESET/FORM pulses, I–V sweeps).

Interactive work at the probe station changes the chip as much as a programming job does, so
every operation goes into a run record of kind "cell-operations" as it happens (journaled: a
crash loses nothing already applied), with the lifecycle of every record
(`hil.runstore.lifecycle`). Tables: `cellops/ops` (one row per cell and operation)
and `cellops/iv` (one row per cell and sweep step).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from hil.geometry import Cells
from hil.runstore import RunWriter
from hil.runstore.lifecycle import HeldRecord

KIND = "cell-operations"
OP_CODES = {"READ": 0, "SET": 1, "RESET": 2, "FORM": 3}


class CellOpsLog:
    """Append-only log of cell operations; the record is created on the first operation."""

    def __init__(self, path, station: dict) -> None:
        self.path = Path(path)
        self.station = station
        self._record: Optional[HeldRecord] = None
        self.sweeps = 0

    @property
    def writer(self) -> Optional[RunWriter]:
        return None if self._record is None else self._record.writer

    def _w(self) -> RunWriter:
        if self._record is None:
            self._record = HeldRecord(self.path, KIND, station=self.station)
            self.writer.set_attrs("cellops", op_codes=OP_CODES)
        return self.writer

    def record(self, op: str, cells: Cells, time_s: float, g_after_s, *, g_before_s=None, v=np.nan,
               v_gate=np.nan, width_s=np.nan) -> None:
        """One operation applied to `cells` (READ: v is the read voltage)."""
        n = len(cells)
        full = lambda a: np.broadcast_to(np.asarray(a, float), (n,)).copy()
        self._w().append("cellops/ops", time_s=full(time_s), op=np.full(n, OP_CODES[op]), pe=cells.pe,
                         row=cells.row, col=cells.col, v=full(v), v_gate=full(v_gate), width_s=full(width_s),
                         g_before_s=full(np.nan if g_before_s is None else g_before_s), g_after_s=full(g_after_s))
        self.writer.flush()

    def record_iv(self, cells: Cells, time_s: float, v: np.ndarray, g_s: np.ndarray) -> None:
        """An I–V sweep: `v[k]` signed amplitude of step k, `g_s[k, i]` read after it."""
        steps, n = g_s.shape
        self.sweeps += 1
        self._w().append("cellops/iv", sweep=np.full(steps * n, self.sweeps), time_s=np.full(steps * n, time_s),
                         step=np.repeat(np.arange(steps), n), v=np.repeat(np.asarray(v, float), n),
                         pe=np.tile(cells.pe, steps), row=np.tile(cells.row, steps), col=np.tile(cells.col, steps),
                         g_s=np.asarray(g_s, float).ravel())
        self.writer.flush()

    def close(self) -> Optional[Path]:
        """End the record as complete (None if nothing was done)."""
        if self._record is None:
            return None
        self._record.end()
        self._record = None
        return self.path
