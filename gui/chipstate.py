"""One model of the connected chip, shared by every tab: which cells were written by which run
(and to which targets), every manual operation, the station clock, the operation counters the
crossbar reports, and the current record. `changed` tells the tabs to redraw.

All of it lives on the UI thread; the session calls `refresh` after every job.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PySide6.QtCore import QObject, Signal

from hil.geometry import Cells
from hil.modules.stability import format_duration

log = logging.getLogger(__name__)

#: a virtual-clock jump (beyond the wall time of the job) worth telling the user about, seconds
CLOCK_JUMP_S = 60.0


@dataclass
class Write:
    """One write to cells of this chip: a programming run, a weight transfer or a manual pulse."""

    id: int
    kind: str                       # "programming", "transfer", "SET", "RESET", "FORM", "I–V"
    flat: np.ndarray                # flat cell indices written
    clock_s: float                  # station clock when it finished
    record: Optional[Path] = None
    plan: Optional[object] = None   # hil.ops.jobs.ProgramPlan: the targets, when the write had any
    history: Optional[object] = None  # gui.history.RunHistory of the write's pulses and verify reads
    label: str = ""


@dataclass
class CellPoint:
    """One conductance of a cell's history: after `pulse` pulses on this chip."""

    pulse: int
    g_s: float
    source: str


@dataclass
class _Manual:
    write: Optional[Write]          # None for a read
    flat: np.ndarray
    g_s: np.ndarray


@dataclass
class CellTimeline:
    """Every conductance known for one cell, in order, with the pulse count before each."""

    flat: int
    points: list[CellPoint] = field(default_factory=list)
    target_s: Optional[float] = None
    tolerance_s: Optional[float] = None
    written_by: Optional[Write] = None

    @property
    def pulse(self) -> np.ndarray:
        return np.array([p.pulse for p in self.points], float)

    @property
    def g_s(self) -> np.ndarray:
        return np.array([p.g_s for p in self.points], float)


class ChipState(QObject):
    """What is on the connected chip now (see the module docstring)."""

    changed = Signal()

    def __init__(self, session) -> None:
        super().__init__(session)
        self.s = session
        self.writes: list[Write] = []
        self.last_writer: Optional[np.ndarray] = None     # per cell: id of the last write, -1 none
        self._events: list = []                           # Write (runs) and _Manual, in order
        self.clock_s = 0.0
        self.counters: dict = {}
        self._wall = time.monotonic()
        self._fresh = True              # no clock jump to report before the first reading
        session.connection_changed.connect(self.reset)
        session.job_finished.connect(lambda name, outcome: self.refresh(name))
        session.run_changed.connect(self.changed.emit)

    # ---- updates --------------------------------------------------------------------------
    def reset(self) -> None:
        """A new (or no) station: nothing is known to be written on it."""
        g = self.s.geometry
        self.writes, self._events = [], []
        self.last_writer = None if g is None else np.full(g.n_cells, -1, np.int64)
        self.counters, self.clock_s, self._fresh = {}, 0.0, True
        self.refresh()

    def refresh(self, job: str = "") -> None:
        """Read the clock and counters from the crossbar (between jobs); say when `job` moved
        the clock further than the time it took."""
        x = self.s.xbar
        if x is None or self.s.busy:
            self.changed.emit()
            return
        ident = x.describe()
        self.s.identity = ident
        self.counters = dict(ident.get("counters", {}))
        before, now_s = self.clock_s, float(x.now())
        wall = time.monotonic()
        jump = (now_s - before) - (wall - self._wall)
        fresh, self._fresh = self._fresh, False
        self.clock_s, self._wall = now_s, wall
        if job and not fresh and jump > CLOCK_JUMP_S:
            aged = int(np.count_nonzero(self.last_writer >= 0)) if self.last_writer is not None else 0
            msg = (f"{job} advanced the station clock by {format_duration(now_s - before)} (now "
                   f"{format_duration(now_s)}): every cell on the chip aged, {aged:,} written cells included")
            log.warning(msg)
            self.s.status_message.emit(msg)
        self.changed.emit()

    def add_write(self, kind: str, flat, *, record: Optional[Path] = None, plan=None, history=None,
                  label: str = "") -> Write:
        """Cells `flat` were written (a run with targets `plan`, or a manual pulse)."""
        flat = np.asarray(flat, np.int64).ravel()
        w = Write(len(self.writes), kind, flat, self.clock_s, None if record is None else Path(record),
                  plan, history, label or kind)
        self.writes.append(w)
        self._events.append(w)
        if self.last_writer is not None:
            self.last_writer[flat] = w.id
        self.changed.emit()
        return w

    def add_manual(self, op: str, flat, g_s, *, record: Optional[Path] = None) -> None:
        """A manual operation from the Cell-operations tab (READ, SET, RESET, FORM, I–V) and the
        conductances read after it."""
        flat = np.asarray(flat, np.int64).ravel()
        w = None if op == "READ" else self.add_write(op, flat, record=record, label=f"manual {op}")
        self._events.append(_Manual(w, flat, np.asarray(g_s, float).ravel()))
        self.changed.emit()

    # ---- queries --------------------------------------------------------------------------
    def write_of(self, record: Optional[Path], kind: Optional[str] = None) -> Optional[Write]:
        """The newest write recorded in `record` (of `kind`)."""
        for w in reversed(self.writes):
            if record is not None and w.record == Path(record) and kind in (None, w.kind):
                return w
        return None

    def holds(self, w: Optional[Write]) -> bool:
        """True if `w` is a write on this chip (not on a station connected before)."""
        return w is not None and w.id < len(self.writes) and self.writes[w.id] is w

    def overwritten(self, w: Write) -> np.ndarray:
        """Cells of `w` written again since."""
        if self.last_writer is None:
            return np.zeros(0, np.int64)
        return w.flat[self.last_writer[w.flat] != w.id]

    def current_targets(self) -> Optional[Write]:
        """The newest write with targets that still holds cells on the chip."""
        for w in reversed(self.writes):
            if w.plan is not None and self.overwritten(w).size < w.flat.size:
                return w
        return None

    def regions(self) -> list[tuple[Write, np.ndarray]]:
        """(write, its cells still on the chip) for every write with targets, newest first."""
        out = []
        for w in reversed(self.writes):
            if w.plan is not None and self.last_writer is not None:
                live = w.flat[self.last_writer[w.flat] == w.id]
                if live.size:
                    out.append((w, live))
        return out

    def describe_regions(self) -> str:
        """One line per written region: cells, PEs, kind, levels and record."""
        g = self.s.geometry
        if g is None:
            return "Not connected."
        lines = []
        for w, live in self.regions():
            pes = np.unique(Cells.from_flat(live, g).pe)
            lv = np.unique(w.plan.level_index).size
            where = f"PE {_ranges(pes)}"
            lines.append(f"{live.size:,} cells on {where} · {w.label} · {lv} levels · tolerance ±"
                         f"{w.plan.tolerance_s * 1e6:.2f} µS")
        return "\n".join(lines) if lines else "Nothing programmed on this chip yet."

    def timeline(self, flat: int) -> CellTimeline:
        """Every conductance of cell `flat` over this chip's runs and manual operations, against
        the number of pulses it received before each."""
        flat = int(flat)
        tl = CellTimeline(flat)
        n = 0
        for ev in self._events:
            if isinstance(ev, Write):
                if ev.history is None or not np.any(ev.flat == flat):
                    continue
                h = ev.history.cell(flat)
                before = np.searchsorted(np.sort(h.pulse_iter), h.verify_iter, side="left")
                tl.points += [CellPoint(n + int(b), float(g), ev.label) for b, g in zip(before, h.verify_g_s)]
                n += h.n_pulses
                if h.target_s is not None:
                    tl.target_s, tl.tolerance_s = h.target_s, h.tolerance_s
                tl.written_by = ev
            else:
                hit = np.flatnonzero(ev.flat == flat)
                if not hit.size:
                    continue
                if ev.write is not None:
                    n += 1
                    tl.written_by = ev.write
                    tl.target_s = tl.tolerance_s = None
                tl.points.append(CellPoint(n, float(ev.g_s[hit[0]]), ev.write.label if ev.write else "manual READ"))
        return tl


def _ranges(values) -> str:
    """0,1,2,3,5 -> '0–3, 5'."""
    vals = sorted(int(v) for v in values)
    out, start = [], None
    for i, v in enumerate(vals):
        if start is None:
            start = v
        if i + 1 == len(vals) or vals[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}–{v}")
            start = None
    return ", ".join(out)
