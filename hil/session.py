"""A recorded session: a scripted experiment on any crossbar, journaled into a run record.

    import hil
    with hil.open_station("sim", seed=1) as xbar, hil.Session(xbar, "runs/my.h5") as s:
        cells = hil.Cells.block(pe=0, rows=range(4), cols=range(4))
        s.write_verify(cells, 10e-6, 1e-6)           # target and tolerance in siemens
        g = s.read(cells)                             # siemens

Every operation goes through the Crossbar contract (limits checked first) and is journaled as
it happens: a killed script loses nothing already applied, and `hil runs recover RUN.h5`
rebuilds the record from its journal. Operations made on the crossbar directly, not through the
session, are not recorded. Layout (SI units; cells by flat index (pe * rows + row) * cols + col
in write-verify groups, by pe/row/col columns elsewhere):

- `session/ops`: one row per cell and read or pulse: time_s, op (code, see the group's
  `op_codes`), pe, row, col, v, v_gate, width_s, g_s (the conductance read; NaN for pulses).
- `session/write_verify/<n>` (n = 1, 2, ...): the n-th write-verify, laid out like a `hil program`
  record's `programming` group: `targets`, tables `verify` and `pulses` (every verify read and
  pulse) and `cells` (final conductance, pulses, status per finished cell); attrs policy,
  tolerance_s and the report summary.
- `session/vmm/<n>`: the n-th VMM: datasets `inputs` and `codes` (attrs pe, rows, cols, time_s,
  v_read, lsb_a, saturated).
- `session/data/<name>`: arrays the script stores with `put`.

The record's lifecycle is every record's (`hil.runstore.lifecycle`): status "complete" after a
clean exit, "stopped" after Ctrl+C or a cancel, "failed" after an error (journal kept); its
station snapshot names the client "api".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from hil.crossbar import Crossbar, VmmResult
from hil.geometry import Cells
from hil.limits import OP_CODES, Op
from hil.ops.jobs import ProgramPlan, journal_program_steps, start_program_run
from hil.ops.write_verify import write_verify
from hil.programming import ProgramReport, ProgramStep, WriteVerifyPolicy
from hil.runstore.lifecycle import HeldRecord, station_snapshot

KIND = "session"
OPS = "session/ops"


class Session:
    """Journals every read, pulse, VMM and write-verify made through it on `xbar` into a new
    run record at `path` (it must not exist). Use as a context manager; `label` and `meta`
    (JSON-able) are stored in the record."""

    def __init__(self, xbar: Crossbar, path, *, label: str = "", meta: Optional[dict] = None) -> None:
        if not isinstance(xbar, Crossbar):
            raise TypeError(f"Session needs a Crossbar, got {type(xbar).__name__}")
        self.xbar = xbar
        self._record = HeldRecord(Path(path), KIND, station=station_snapshot(xbar, client="api", label=str(label)),
                                  meta=meta)
        self.writer = self._record.writer
        self.writer.set_attrs("session", op_codes={op.value: code for op, code in OP_CODES.items()})
        self._n_write_verify = 0
        self._n_vmm = 0

    @property
    def path(self) -> Path:
        return self.writer.path

    # ---- operations -------------------------------------------------------------------------
    def read(self, cells: Cells, *, v_read: Optional[float] = None, n_avg: int = 1) -> np.ndarray:
        """Conductances (S) of `cells` at `v_read` (V; default the station's 0.2 V), averaged
        over `n_avg` reads; recorded."""
        g = self.xbar.read(cells, v_read=v_read, n_avg=n_avg)
        v = self.xbar.v_read_default if v_read is None else v_read
        self._ops(Op.READ, cells, v=v, v_gate=np.nan, width_s=np.nan, g_s=g)
        return g

    def pulse(self, cells: Cells, op, v, v_gate, width_s) -> None:
        """One SET/RESET/FORM pulse per cell: amplitude `v` (V, on the BL for SET/FORM, on the SL
        for RESET), gate `v_gate` (V), `width_s` (s); scalars or one value per cell; recorded."""
        op = Op.parse(op)
        self.xbar.pulse(cells, op, v, v_gate, width_s)
        self._ops(op, cells, v=v, v_gate=v_gate, width_s=width_s, g_s=np.nan)

    def vmm(self, pe: int, inputs, rows=None, cols=None, *, v_read: Optional[float] = None,
            adc_full_scale_a: Optional[float] = None) -> VmmResult:
        """Bit-serial parallel read of `inputs` (batch x rows, unsigned 8-bit integers) on `pe`
        (see `Crossbar.vmm`); `result.currents` in A. Inputs and ADC codes are recorded."""
        r = self.xbar.vmm(pe, inputs, rows, cols, v_read=v_read, adc_full_scale_a=adc_full_scale_a)
        g = self.xbar.geometry
        self._n_vmm += 1
        name = f"session/vmm/{self._n_vmm}"
        self.writer.put(f"{name}/inputs", np.asarray(inputs))
        self.writer.put(f"{name}/codes", r.codes, pe=int(pe), time_s=self.xbar.now(), v_read=r.v_read,
                        lsb_a=r.lsb_a, saturated=int(r.saturated.sum()),
                        rows=np.arange(g.rows) if rows is None else np.asarray(rows),
                        cols=np.arange(g.cols) if cols is None else np.asarray(cols))
        return r

    def write_verify(self, cells: Cells, targets_s, tolerance_s,
                     policy: Optional[WriteVerifyPolicy] = None, *,
                     on_step: Optional[Callable[[ProgramStep], None]] = None, **kw) -> ProgramReport:
        """Write-verify `cells` to `targets_s` ± `tolerance_s` (S; scalars or one per cell) with
        `policy` (default WriteVerifyPolicy()); every verify read, pulse and per-cell outcome is
        recorded. Other keywords (progress, cancel) go to `hil.write_verify`. Returns the
        ProgramReport."""
        policy = policy or WriteVerifyPolicy()
        started = []            # (group, journal callback) once the first step arrives

        def step(s: ProgramStep) -> None:
            if not started:     # write_verify has validated every argument before its first step
                started.append(self._start_write_verify(cells, targets_s, tolerance_s, policy))
            started[0][1](s)
            if on_step is not None:
                on_step(s)

        rep = write_verify(self.xbar, cells, targets_s, tolerance_s, policy, on_step=step, **kw)
        if started:
            self.writer.set_attrs(started[0][0], summary=rep.summary())
        return rep

    def put(self, name: str, data: Any, **attrs: Any) -> None:
        """Store any array of the experiment under `session/data/<name>` (attrs JSON-able)."""
        self.writer.put(f"session/data/{name}", data, **attrs)

    def mark(self, event: str, **info: Any) -> None:
        """A free-form, timestamped event in the record."""
        self.writer.mark(event, **info)

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self) -> Path:
        """End the record as complete and return its path. Idempotent."""
        self._record.end()
        return self.path

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._record.end(exc)

    def _start_write_verify(self, cells: Cells, targets_s, tolerance_s, policy: WriteVerifyPolicy):
        """Record the plan of the next write-verify group; returns (group, on_step journal)."""
        self._n_write_verify += 1
        prefix = f"session/write_verify/{self._n_write_verify}"
        n = len(cells)
        targets = np.broadcast_to(np.asarray(targets_s, dtype=float), (n,))
        tolerance = np.asarray(tolerance_s, dtype=float)
        plan = ProgramPlan(cells.flat(self.xbar.geometry), np.unique(targets, return_inverse=True)[1], targets,
                           float(tolerance) if tolerance.ndim == 0 else tolerance)
        start_program_run(self.writer, plan, policy, prefix)
        return prefix, journal_program_steps(self.writer, plan.flat, prefix)

    def _ops(self, op: Op, cells: Cells, *, v, v_gate, width_s, g_s) -> None:
        n = len(cells)

        def column(a) -> np.ndarray:
            return np.broadcast_to(np.asarray(a, float), (n,)).copy()

        self.writer.append(OPS, time_s=np.full(n, self.xbar.now()), op=np.full(n, OP_CODES[op]),
                           pe=cells.pe, row=cells.row, col=cells.col, v=column(v), v_gate=column(v_gate),
                           width_s=column(width_s), g_s=column(g_s))
