"""Per-cell programming history from a run record (every verify read and pulse)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hil.errors import DataError
from hil.ops.jobs import PROGRAMMING
from hil.limits import OPS_BY_CODE
from hil.runstore import RunRecord


@dataclass
class CellHistory:
    """History of one cell (flat index) in SI units; empty arrays if it was not programmed."""

    flat: int
    verify_iter: np.ndarray
    verify_g_s: np.ndarray
    pulse_iter: np.ndarray
    pulse_op: np.ndarray          # names: SET / RESET / FORM
    pulse_v: np.ndarray
    pulse_v_gate: np.ndarray
    target_s: Optional[float]
    tolerance_s: Optional[float]
    final_g_s: Optional[float]
    status: Optional[int]

    @property
    def n_pulses(self) -> int:
        return int(self.pulse_iter.size)


class RunHistory:
    """The programming tables of one run record, loaded once, queried per cell."""

    def __init__(self, path: Path, content=None, prefix: str = PROGRAMMING) -> None:
        """Load from the HDF5 file at `path`, or take the tables from `content` (the
        `RunContent` of the writer that just wrote it: no file read on the UI thread);
        `prefix`: the group of the programming tables ("transfer" in an mCNN record)."""
        self.path = Path(path)
        self._names = tuple(f"{prefix}/{n}" for n in ("targets", "cells", "verify", "pulses"))
        if content is not None:
            self._from_content(content)
        else:
            self._from_file()
        if self.verify is None and self.pulses is None:
            raise DataError(f"{self.path} holds no programming history (tables {self._names[2]} and "
                            f"{self._names[3]}); "
                            f"open a programming run")

    def _from_content(self, content) -> None:
        TARGETS, CELLS, VERIFY, PULSES = self._names
        tables = content.tables
        self.verify, self.pulses, self.cells = (tables.get(n) for n in (VERIFY, PULSES, CELLS))
        self.targets, self.tolerance_s = None, None
        if TARGETS in content.datasets:
            arr, attrs = content.datasets[TARGETS]
            self.targets = (arr[0].astype(np.int64), arr[2])
            self.tolerance_s = float(attrs.get("tolerance_s", np.nan))
        self.kind = content.attrs.get("/", {}).get("kind", "")

    def _from_file(self) -> None:
        TARGETS, CELLS, VERIFY, PULSES = self._names
        with RunRecord.open(self.path) as rec:
            tables = rec.tables()
            self.verify = rec.table(VERIFY) if VERIFY in tables else None
            self.pulses = rec.table(PULSES) if PULSES in tables else None
            self.cells = rec.table(CELLS) if CELLS in tables else None
            self.targets = None
            self.tolerance_s = None
            if TARGETS in rec.datasets():
                arr, attrs = rec.dataset(TARGETS)
                self.targets = (arr[0].astype(np.int64), arr[2])
                self.tolerance_s = float(attrs.get("tolerance_s", np.nan))
            self.kind = rec.kind

    def cell(self, flat: int) -> CellHistory:
        flat = int(flat)
        e_i, e_f = np.zeros(0, np.int64), np.zeros(0)
        vi, vg = e_i, e_f
        if self.verify is not None:
            m = self.verify["cell"] == flat
            vi, vg = self.verify["iteration"][m], self.verify["g_s"][m]
        pi, po, pv, pg_ = e_i, np.zeros(0, object), e_f, e_f
        if self.pulses is not None:
            m = self.pulses["cell"] == flat
            pi, pv, pg_ = self.pulses["iteration"][m], self.pulses["v"][m], self.pulses["v_gate"][m]
            po = np.array([OPS_BY_CODE[int(c)].value for c in self.pulses["op"][m]], dtype=object)
        target = final = status = None
        if self.targets is not None:
            hit = np.flatnonzero(self.targets[0] == flat)
            if hit.size:
                target = float(self.targets[1][hit[0]])
        if self.cells is not None:
            hit = np.flatnonzero(self.cells["cell"] == flat)
            if hit.size:
                final = float(self.cells["final_g_s"][hit[-1]])
                status = int(self.cells["status"][hit[-1]])
        return CellHistory(flat, vi, vg, pi, po, pv, pg_, target, self.tolerance_s, final, status)
