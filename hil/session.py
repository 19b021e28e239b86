"""A recorded session: a scripted experiment on any crossbar, journaled into a run record.

    import hil
    with hil.open_station("sim", seed=1) as xbar, hil.Session(xbar, "runs/my.h5") as s:
        cells = hil.Cells.block(pe=0, rows=range(4), cols=range(4))
        s.write_verify(cells, 10e-6, 1e-6)           # targets and tolerance in siemens
        g = s.read(cells)                             # siemens

Every operation goes through the Crossbar contract (limits checked first) and is appended to
the record as it happens: a crash loses nothing already applied, and `hil runs recover` rebuilds
the record from its journal. Tables (one row per cell and operation, SI units):
`session/ops` (READ/SET/RESET/FORM: time, op code, cell, v, v_gate, width, conductance read),
`session/program` (write-verify: target, final, pulses, status) and `session/vmm` (one row per
parallel read). The record's status is "complete" after a clean exit, "stopped" after Ctrl+C or
a cancel, "failed" after an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from hil.crossbar import Crossbar, VmmResult
from hil.errors import Cancelled
from hil.geometry import Cells
from hil.limits import OP_CODES, Op
from hil.runstore import RunWriter

KIND = "session"


class Session:
    """Journals every read, pulse, VMM and write-verify made through it on `xbar` into the run
    record `path` (created; it must not exist). Use as a context manager."""

    def __init__(self, xbar: Crossbar, path, *, label: str = "", meta: Optional[dict] = None) -> None:
        if not isinstance(xbar, Crossbar):
            raise TypeError(f"Session needs a Crossbar, got {type(xbar).__name__}")
        self.xbar = xbar
        station = {**xbar.describe(), "client": "python-api", "label": str(label)}
        self.writer = RunWriter.create(Path(path), KIND, station, meta)
        self.writer.set_attrs("session", op_codes={op.value: code for op, code in OP_CODES.items()})
        self._vmm_calls = 0

    @property
    def path(self) -> Path:
        return self.writer.path

    # ---- operations -------------------------------------------------------------------------
    def read(self, cells: Cells, *, v_read: Optional[float] = None, n_avg: int = 1) -> np.ndarray:
        """Conductances (S) of `cells`, recorded."""
        g = self.xbar.read(cells, v_read=v_read, n_avg=n_avg)
        v = self.xbar.v_read_default if v_read is None else v_read
        self._ops(Op.READ, cells, v=v, v_gate=np.nan, width_s=np.nan, g_s=g)
        return g

    def pulse(self, cells: Cells, op, v, v_gate, width_s) -> None:
        """One SET/RESET/FORM pulse per cell (V, V, s; scalars or one per cell), recorded."""
        op = Op.parse(op)
        self.xbar.pulse(cells, op, v, v_gate, width_s)
        self._ops(op, cells, v=v, v_gate=v_gate, width_s=width_s, g_s=np.nan)

    def vmm(self, pe: int, inputs, rows=None, cols=None, **kw) -> VmmResult:
        """Bit-serial parallel read (see `Crossbar.vmm`); one row per call is recorded."""
        r = self.xbar.vmm(pe, inputs, rows, cols, **kw)
        self._vmm_calls += 1
        self.writer.append("session/vmm", call=np.array([self._vmm_calls]), time_s=np.array([self.xbar.now()]),
                           pe=np.array([int(pe)]), batch=np.array([r.codes.shape[0]]),
                           n_rows=np.array([np.asarray(inputs).shape[-1]]), n_cols=np.array([r.codes.shape[1]]),
                           saturated=np.array([int(r.saturated.sum())]))
        return r

    def write_verify(self, cells: Cells, targets_s, tolerance_s, policy=None, **kw):
        """Write-verify `cells` to `targets_s` ± `tolerance_s` (siemens); the per-cell outcome is
        recorded. Returns the ProgramReport."""
        from hil.ops.write_verify import write_verify
        from hil.programming import WriteVerifyPolicy
        rep = write_verify(self.xbar, cells, targets_s, tolerance_s, policy or WriteVerifyPolicy(), **kw)
        n = len(cells)
        self.writer.append("session/program", time_s=np.full(n, self.xbar.now()), pe=cells.pe, row=cells.row,
                           col=cells.col, target_s=rep.targets_s, final_s=rep.final_s, pulses=rep.pulses,
                           status=rep.status)
        return rep

    def put(self, name: str, data: Any, **attrs: Any) -> None:
        """Store any array of the experiment under `session/data/<name>`."""
        self.writer.put(f"session/data/{name}", data, **attrs)

    def mark(self, event: str, **info: Any) -> None:
        """A free-form, timestamped event in the record."""
        self.writer.mark(event, **info)

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self, status: str = "complete") -> Path:
        """Finalize the record with `status`. Idempotent."""
        if not self.writer.closed:
            self.writer.finalize(status)
        return self.path

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("complete")
        elif issubclass(exc_type, (KeyboardInterrupt, Cancelled)):
            self.close("stopped")
        else:
            self.close("failed")

    def _ops(self, op: Op, cells: Cells, *, v, v_gate, width_s, g_s) -> None:
        n = len(cells)
        full = lambda a: np.broadcast_to(np.asarray(a, float), (n,)).copy()
        self.writer.append("session/ops", time_s=np.full(n, self.xbar.now()), op=np.full(n, OP_CODES[op]),
                           pe=cells.pe, row=cells.row, col=cells.col, v=full(v), v_gate=full(v_gate),
                           width_s=full(width_s), g_s=full(g_s))
