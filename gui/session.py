"""Session state shared by every panel: the open station, the running job, the array map,
the cell selection and the current run record. Qt signals tell the panels what changed.

All state lives on the UI thread; jobs run in `JobThread`s and hand results back by signal.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PySide6.QtCore import QEventLoop, QObject, QTimer, Signal

from hil.crossbar import Crossbar
from hil.errors import (AddressError, BackendError, ConfigError, DataError, HilError,
                        SafetyViolation)
from hil.geometry import Cells, Geometry
from hil.progress import CancelToken

from .chipstate import ChipState
from .jobs import JobContext, JobThread, TimedCancelToken

log = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(dialog title, text) for an error: what went wrong and what to do next."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, SafetyViolation):
        return ("Refused by the safety limits",
                f"{msg}\n\nLower the value, or raise the limit in the station file if the device allows it.")
    if isinstance(exc, BackendError):
        return ("Station error",
                f"{msg}\n\nCheck the instruments and cables, then Disconnect and Connect again on the "
                f"Station tab. Work already recorded is kept in the run record.")
    if isinstance(exc, AddressError):
        return "Invalid cell address", f"{msg}\n\nSelect cells inside the array shown on the Array map tab."
    if isinstance(exc, ConfigError):
        return "Invalid settings", f"{msg}\n\nCorrect the setting and try again."
    if isinstance(exc, DataError):
        return "Run record problem", msg
    if isinstance(exc, HilError):
        return "Operation failed", msg
    return ("Unexpected error",
            f"{type(exc).__name__}: {msg}\n\nThe job was stopped. The log pane holds the details; "
            f"please report them with the run record.")


class Session(QObject):
    """The station, job, map, selection and run of one window."""

    connection_changed = Signal()          # xbar opened or closed
    busy_changed = Signal(bool)
    job_started = Signal(str)
    job_finished = Signal(str, str)        # name, outcome: done / cancelled / failed
    map_changed = Signal()
    selection_changed = Signal()
    run_changed = Signal()                 # current run record (cell history source)
    plan_changed = Signal()                # programmed cells available to experiments
    error = Signal(str, str)               # dialog title, text
    status_message = Signal(str)

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.xbar: Optional[Crossbar] = None
        self.station_label = ""
        self.station_spec = ""
        self.station_seed: Optional[int] = None         # seed the station was opened with (records keep it)
        self.identity: dict = {}
        self.job: Optional[JobThread] = None
        self.cancel_token: Optional[CancelToken] = None
        self.abort_requested_at: Optional[float] = None
        self.last_abort_latency_s: Optional[float] = None   # abort -> job ended (UI thread)
        self.last_abort_stop_s: Optional[float] = None      # abort -> stage stopped, outputs safe (worker)
        self.g_map: Optional[np.ndarray] = None         # (n_pe, rows, cols) siemens, NaN = unknown
        self.selection: Optional[np.ndarray] = None     # bool, same shape
        self.run_path: Optional[Path] = None
        self.run_history = None                         # gui.history.RunHistory of run_path, if preloaded
        self.plan = None                                # hil.ops.jobs.ProgramPlan of the last programming
        self.plan_record: Optional[Path] = None         # the run record of that programming
        self._finished_threads: list = []
        self.chip = ChipState(self)                     # what is on the chip: every tab shows it

    # ---- station ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.xbar is not None

    @property
    def geometry(self) -> Optional[Geometry]:
        return self.xbar.geometry if self.xbar is not None else None

    @property
    def busy(self) -> bool:
        return self.job is not None

    def connect_station(self, spec: str, label: str = "", **options) -> bool:
        """Open `spec` ('sim' or a station file) in a worker; False if a job is running."""
        from hil.registry import open_station

        def job(ctx: JobContext):
            ctx.cancel.raise_if_cancelled()
            xbar = open_station(spec, **options)
            try:
                ident = xbar.describe()
            except BaseException:
                xbar.close()
                raise
            return xbar, ident

        def done(result) -> None:
            self._close_xbar()
            self.xbar, self.identity = result
            self.station_spec = spec
            self.station_seed = options.get("seed")
            self.station_label = label or spec
            g = self.xbar.geometry
            self.g_map = np.full(g.shape, np.nan)
            self.selection = np.zeros(g.shape, bool)
            self.plan, self.plan_record = None, None
            self.run_path, self.run_history = None, None     # the old station's record is not this chip's
            log.info("connected to %s (%s, %d PEs of %d x %d)", self.station_label,
                     self.identity.get("backend", "?"), g.n_pe, g.rows, g.cols)
            self.connection_changed.emit()
            self.map_changed.emit()
            self.selection_changed.emit()
            self.plan_changed.emit()
            self.run_changed.emit()

        return self.start_job("connect", job, on_result=done)

    def disconnect_station(self) -> bool:
        """Close the station (outputs off); refused while a job runs."""
        if self.busy:
            self.error.emit("A job is running", "Abort the running job (Esc) before disconnecting.")
            return False
        if self.xbar is None:
            return True
        self._close_xbar()
        self.identity = {}
        self.connection_changed.emit()
        return True

    def _close_xbar(self) -> None:
        if self.xbar is not None:
            name = self.station_label
            self.xbar.close()
            self.xbar = None
            log.info("disconnected from %s; outputs off", name)

    def shutdown(self) -> None:
        """Abort any job, wait for it, and close the station (window closing)."""
        if self.job is not None:
            self.abort("window closed")
            self.job.wait(5000)
        if self.xbar is not None:
            self._close_xbar()
            self.connection_changed.emit()      # panels finalize their records

    # ---- jobs ------------------------------------------------------------------------
    def start_job(self, name: str, fn: Callable[[JobContext], Any], *,
                  on_result: Optional[Callable[[Any], None]] = None,
                  on_progress: Optional[Callable] = None, on_partial: Optional[Callable] = None,
                  on_end: Optional[Callable[[str], None]] = None, needs_station: bool = False) -> bool:
        """Run `fn(ctx)` in a worker thread. Returns False (and says why) if one is running."""
        if self.job is not None:
            self.error.emit("A job is running",
                            f"'{self.job.name}' is still running. Wait for it or press Abort (Esc) first.")
            return False
        if needs_station and self.xbar is None:
            self.error.emit("No station", "Connect a station on the Station tab first.")
            return False
        xbar = self.xbar
        token = TimedCancelToken()

        def guarded(ctx: JobContext):
            try:
                return fn(ctx)
            except BaseException:
                if xbar is not None:            # aborted or failed: outputs off, relays open now
                    xbar.safe()
                raise

        th = JobThread(name, guarded, token)

        def stopped_safe() -> None:           # worker thread, at the stage's first look at the abort
            if xbar is not None:
                xbar.safe()
            th.stopping.emit()
        token.on_seen = stopped_safe
        self.job, self.cancel_token = th, token
        self.abort_requested_at = None
        relay = _Relay(self, th, on_result, on_progress, on_partial, on_end)
        th.stopping.connect(relay.stopping)
        th.progressed.connect(relay.progressed)
        th.partial.connect(relay.partial)
        th.succeeded.connect(relay.succeeded)
        th.failed.connect(relay.failed)
        th.finished.connect(relay.finished)
        self.busy_changed.emit(True)
        self.job_started.emit(name)
        self.status_message.emit(f"{name} running… (Esc aborts)")
        th.start()
        return True

    def _job_done(self, th: JobThread, on_end, relay) -> None:
        outcome = th.outcome or "failed"
        if outcome == "cancelled" and self.abort_requested_at is not None:
            self.last_abort_latency_s = time.monotonic() - self.abort_requested_at
            seen = th.ctx.cancel.seen_at or time.monotonic()
            self.last_abort_stop_s = seen - self.abort_requested_at
            log.info("%s aborted: stopped with the outputs safe %.0f ms and the record saved %.0f ms "
                     "after the abort",
                     th.name, 1e3 * self.last_abort_stop_s, 1e3 * self.last_abort_latency_s)
        self.job, self.cancel_token = None, None
        th.wait()
        self._finished_threads.append((th, relay))     # keep the objects alive until reaped
        QTimer.singleShot(0, lambda: self._finished_threads.remove((th, relay))
                          if (th, relay) in self._finished_threads else None)
        if on_end is not None:
            on_end(outcome)
        self.busy_changed.emit(False)
        self.status_message.emit({"done": f"{th.name} finished", "cancelled": f"{th.name} aborted",
                                  "failed": f"{th.name} failed"}[outcome])
        self.job_finished.emit(th.name, outcome)

    def abort(self, reason: str = "aborted by the user") -> bool:
        """Set the running job's cancel token (it stops at its next check). False if idle."""
        if self.cancel_token is None:
            return False
        if self.abort_requested_at is None:
            self.abort_requested_at = time.monotonic()
        self.cancel_token.cancel(reason)
        self.status_message.emit("aborting…")
        log.warning("abort requested: %s", reason)
        return True

    def wait_idle(self, timeout_ms: int = 60_000) -> bool:
        """Process events until no job runs (scripted sessions); False on timeout."""
        if self.job is None:
            return True
        loop = QEventLoop()
        self.busy_changed.connect(lambda b: loop.quit() if not b else None)
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        timer.start(timeout_ms)
        loop.exec()
        return self.job is None

    # ---- map and selection -----------------------------------------------------------
    def set_map_values(self, flat: np.ndarray, g_s: np.ndarray) -> None:
        """Update the array map at flat cell indices with conductances (siemens)."""
        if self.g_map is None:
            return
        self.g_map.reshape(-1)[np.asarray(flat, np.int64)] = np.asarray(g_s, float)
        self.map_changed.emit()

    def set_map(self, g_s: np.ndarray) -> None:
        if self.g_map is None or np.shape(g_s) != self.g_map.shape:
            raise DataError(f"snapshot of shape {np.shape(g_s)} does not match the connected array "
                            f"{None if self.g_map is None else self.g_map.shape}")
        self.g_map = np.array(g_s, dtype=float)
        self.map_changed.emit()

    def set_selection(self, mask: np.ndarray) -> None:
        if self.selection is None:
            return
        self.selection = np.asarray(mask, bool).reshape(self.selection.shape).copy()
        self.selection_changed.emit()

    def select_cells(self, cells: Cells, add: bool = False) -> None:
        if self.selection is None:
            return
        mask = self.selection.copy() if add else np.zeros_like(self.selection)
        mask[cells.pe, cells.row, cells.col] = True
        self.set_selection(mask)

    def selected_cells(self) -> Cells:
        if self.selection is None:
            return Cells([], [], [])
        pe, row, col = np.nonzero(self.selection)
        return Cells(pe, row, col)

    # ---- run and plan ----------------------------------------------------------------
    def set_run(self, path: Optional[Path], history=None) -> None:
        """Make `path` the current run record; `history` (a gui.history.RunHistory of it) saves
        the panels from reading the file again on the UI thread."""
        self.run_path = Path(path) if path else None
        self.run_history = history if (history is not None and self.run_path is not None
                                        and history.path == self.run_path) else None
        self.run_changed.emit()

    def set_plan(self, plan, record: Path, history=None) -> None:
        """`plan` was programmed, recorded in `record` (experiments carry its programming);
        `history` (a gui.history.RunHistory of it) feeds the chip's cell histories."""
        self.plan, self.plan_record = plan, Path(record)
        self.chip.add_write("programming", plan.flat, record=record, plan=plan, history=history,
                            label=f"programming run {Path(record).name}")
        self.plan_changed.emit()


class _Relay(QObject):
    """Receives a job's signals on the UI thread (queued) and calls the panel's callbacks."""

    def __init__(self, session: Session, th: JobThread, on_result, on_progress, on_partial, on_end) -> None:
        super().__init__(session)
        self._s, self._th = session, th
        self._cb = (on_result, on_progress, on_partial, on_end)

    def stopping(self) -> None:
        s = self._s
        if s.abort_requested_at is not None:
            ms = 1e3 * (time.monotonic() - s.abort_requested_at)
            s.status_message.emit(f"{self._th.name} stopped {ms:.0f} ms after the abort, outputs safe; "
                                  f"saving the record…")

    def progressed(self, p) -> None:
        if self._cb[1] is not None:
            self._cb[1](p)

    def partial(self, data) -> None:
        if self._cb[2] is not None:
            self._cb[2](data)

    def succeeded(self, result) -> None:
        if self._cb[0] is not None:
            try:
                self._cb[0](result)
            except Exception as e:       # a failing result handler is still an error dialog
                log.exception("handling the result of %s failed", self._th.name)
                self._th.outcome = "failed"
                self._s.error.emit(*describe_error(e))

    def failed(self, exc) -> None:
        self._s.error.emit(*describe_error(exc))

    def finished(self) -> None:
        self._s._job_done(self._th, self._cb[3], self)
        self.setParent(None)


def describe_selection(cells: Cells) -> str:
    """Short human description of a selection: one cell, one row/column, or a count."""
    n = len(cells)
    if n == 0:
        return "no cells selected"
    if n == 1:
        return f"PE {cells.pe[0]} · row {cells.row[0]} · col {cells.col[0]}"
    pes = np.unique(cells.pe)
    rows, cols = np.unique(cells.row), np.unique(cells.col)
    where = f"PE {pes[0]}" if pes.size == 1 else f"{pes.size} PEs"
    if pes.size == 1 and rows.size == 1:
        return f"{n} cells · {where} · row {rows[0]} · cols {cols.min()}–{cols.max()}"
    if pes.size == 1 and cols.size == 1:
        return f"{n} cells · {where} · col {cols[0]} · rows {rows.min()}–{rows.max()}"
    if pes.size == 1 and rows.size * cols.size == n:
        return f"{n} cells · {where} · rows {rows.min()}–{rows.max()} · cols {cols.min()}–{cols.max()}"
    return f"{n} cells · {where}"
