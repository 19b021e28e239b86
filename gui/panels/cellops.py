"""Cell operations tab: read, SET, RESET, FORM and a pulsed I–V sweep on the selection.
Every input is checked against the connected station's limits and refused with the reason."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QGridLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
                               QPushButton, QSpinBox, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from pathlib import Path

from hil.ops.cellops import CellOpsLog
from hil.geometry import Cells
from hil.limits import Op
from hil.progress import Progress

from .. import theme
from hil.ops.iv import iv_sweep

from ..session import Session, describe_selection
from .programming import station_snapshot, unique_path
from ..widgets import LimitField, OpGroup, muted, plot_widget

log = logging.getLogger(__name__)
US_PER_S = 1e6
NS = 1e-9
MAX_TABLE_ROWS = 500
MAX_IV_CURVES = 8
RUNS_DIR = "runs"


class CellOpsPanel(QWidget):
    title = "Cell operations"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.oplog: Optional[CellOpsLog] = None
        self.runs_dir = Path(RUNS_DIR)
        ctx = self._context

        # selection
        self.sel_label = QLabel("no cells selected")
        self.sel_label.setStyleSheet("font-size: 11pt; font-weight: 600;")
        self.pe, self.row, self.col = QSpinBox(), QSpinBox(), QSpinBox()
        pick = QPushButton("Select cell")
        pick.clicked.connect(self.select_typed_cell)
        sel = QGroupBox("Selection")
        sl = QGridLayout(sel)
        sl.addWidget(self.sel_label, 0, 0, 1, 7)
        for i, (name, box) in enumerate((("PE", self.pe), ("row", self.row), ("col", self.col))):
            sl.addWidget(QLabel(name), 1, 2 * i, alignment=Qt.AlignRight)
            sl.addWidget(box, 1, 2 * i + 1)
        sl.addWidget(pick, 1, 6)
        sl.addWidget(muted("Or select cells, rectangles, rows or columns on the Array map tab."), 2, 0, 1, 7)

        # operation groups
        self.read_g = OpGroup("Read", "Read", self.do_read, ctx)
        self.read_g.add("v", LimitField("read voltage", "V", 0.2, decimals=3, step=0.05))
        self.n_avg = QSpinBox()
        self.n_avg.setRange(1, 1000)
        self.n_avg.setValue(4)
        self.read_g.form.addRow("averages", self.n_avg)
        self.groups = {"READ": self.read_g}
        defaults = {Op.SET: (1.6, 1.4, 50), Op.RESET: (1.5, 4.0, 50), Op.FORM: (3.0, 1.2, 1000)}
        for op, (v, gate, w) in defaults.items():
            line = "SL" if op is Op.RESET else "BL"
            g = OpGroup(op.value, f"Apply {op.value} pulse", lambda op=op: self.do_pulse(op), ctx)
            g.add("v", LimitField(f"V {line}", "V", v, step=0.05))
            g.add("gate", LimitField("V gate", "V", gate, step=0.05))
            g.add("width", LimitField("width", "ns", w, scale=NS, decimals=0, step=10, hard_max=1e9))
            self.groups[op.value] = g
        self.iv_g = OpGroup("I–V sweep (pulsed)", "Run I–V sweep", self.do_iv, ctx)
        for key, f in (("v_set", LimitField("V set max (BL)", "V", 2.0, step=0.1)),
                       ("v_reset", LimitField("V reset max (SL)", "V", 2.0, step=0.1)),
                       ("step", LimitField("step", "V", 0.1, step=0.05, hard_min=0.01)),
                       ("gate_set", LimitField("V gate SET", "V", 1.4, step=0.05)),
                       ("gate_reset", LimitField("V gate RESET", "V", 4.0, step=0.05)),
                       ("width", LimitField("width", "ns", 50, scale=NS, decimals=0, step=10, hard_max=1e9))):
            self.iv_g.add(key, f)
        self.groups["IV"] = self.iv_g

        ops = QGridLayout()
        ops.addWidget(self.read_g, 0, 0)
        ops.addWidget(self.groups["SET"], 0, 1)
        ops.addWidget(self.groups["RESET"], 1, 0)
        ops.addWidget(self.groups["FORM"], 1, 1)
        ops.addWidget(self.iv_g, 0, 2, 2, 1)

        # results
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["PE", "row", "col", "before (µS)", "after (µS)"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.result_label = muted("Results of the last operation appear here.")
        self.iv_plot = plot_widget("Pulsed I–V (I = G_read · V)", ("pulse amplitude V", "V"), ("I", "µA"),
                                   legend=True)
        res = QGroupBox("Last result")
        rl = QVBoxLayout(res)
        rl.addWidget(self.result_label)
        rl.addWidget(self.table, 1)
        ivb = QGroupBox("I–V sweep")
        QVBoxLayout(ivb).addWidget(self.iv_plot)

        left = QVBoxLayout()
        left.addWidget(sel)
        left.addLayout(ops)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(res, 1)
        right.addWidget(ivb, 1)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 3)
        lay.addLayout(right, 2)

        self.last_result = None
        self.s.connection_changed.connect(self._connection_changed)
        self.s.selection_changed.connect(self.refresh)
        self.s.busy_changed.connect(lambda _: self.refresh())
        self._connection_changed()

    # ---- state -----------------------------------------------------------------------------
    def _context(self) -> str:
        if not self.s.connected:
            return "Connect a station first (Station tab)."
        if self.s.busy:
            return "A job is running."
        if len(self.s.selected_cells()) == 0:
            return "Select cells first (Array map tab or the cell fields above)."
        return ""

    def _record(self) -> CellOpsLog:
        """The cell-operation record of this connection (created with the first operation)."""
        if self.oplog is None:
            self.oplog = CellOpsLog(unique_path(self.runs_dir, "cellops"), station_snapshot(self.s))
        return self.oplog

    def _connection_changed(self) -> None:
        x = self.s.xbar
        if x is None and self.oplog is not None:
            path = self.oplog.close()
            self.oplog = None
            if path is not None:
                log.info("cell operations recorded in %s", path)
        if x is not None:
            g = x.geometry
            for box, n in ((self.pe, g.n_pe), (self.row, g.rows), (self.col, g.cols)):
                box.setRange(0, n - 1)
            lim = x.limits
            self.read_g.fields["v"].set_bounds(None, lim[Op.READ].max_v, "READ max |V|")
            for op in (Op.SET, Op.RESET, Op.FORM):
                f, L = self.groups[op.value].fields, lim[op]
                f["v"].set_bounds(None, L.max_v, f"{op.value} max |V|")
                f["gate"].set_bounds(None, L.max_v_gate, f"{op.value} max gate")
                f["width"].set_bounds(L.min_width_s, L.max_width_s, f"{op.value} pulse width range")
            f = self.iv_g.fields
            f["v_set"].set_bounds(None, lim[Op.SET].max_v, "SET max |V|")
            f["v_reset"].set_bounds(None, lim[Op.RESET].max_v, "RESET max |V|")
            f["gate_set"].set_bounds(None, lim[Op.SET].max_v_gate, "SET max gate")
            f["gate_reset"].set_bounds(None, lim[Op.RESET].max_v_gate, "RESET max gate")
            w_lo = max(lim[Op.SET].min_width_s, lim[Op.RESET].min_width_s)
            w_hi = min(lim[Op.SET].max_width_s, lim[Op.RESET].max_width_s)
            f["width"].set_bounds(w_lo, w_hi, "SET and RESET pulse width range")
        self.refresh()

    def refresh(self) -> None:
        cells = self.s.selected_cells()
        self.sel_label.setText(describe_selection(cells))
        if len(cells):
            for box, v in ((self.pe, cells.pe[0]), (self.row, cells.row[0]), (self.col, cells.col[0])):
                box.setValue(int(v))
        for g in self.groups.values():
            g.refresh()

    def select_typed_cell(self) -> None:
        if self.s.selection is None:
            return
        self.s.select_cells(Cells(self.pe.value(), self.row.value(), self.col.value()))

    # ---- operations ------------------------------------------------------------------------
    def do_read(self) -> None:
        xbar, cells = self.s.xbar, self.s.selected_cells()
        v, n_avg = self.read_g.fields["v"].si(), self.n_avg.value()

        record = self._record()

        def job(ctx):
            g = xbar.read(cells, v_read=v, n_avg=n_avg)
            record.record("READ", cells, xbar.now(), g, v=v)
            return None, g
        self._run("read", cells, job, f"read at {v:.3f} V, {n_avg} averages", "READ")

    def do_pulse(self, op: Op) -> None:
        xbar, cells = self.s.xbar, self.s.selected_cells()
        f = self.groups[op.value].fields
        v, gate, w = f["v"].si(), f["gate"].si(), f["width"].si()

        record = self._record()

        def job(ctx):
            before = xbar.read(cells)
            ctx.cancel.raise_if_cancelled()
            xbar.pulse(cells, op, v, gate, w)
            after = xbar.read(cells)
            record.record(op.value, cells, xbar.now(), after, g_before_s=before, v=v, v_gate=gate, width_s=w)
            return before, after
        self._run(op.value, cells, job, f"{op.value}: {v:.2f} V, gate {gate:.2f} V, {w / NS:.0f} ns", op.value)

    def _run(self, name: str, cells: Cells, job, what: str, op: str) -> None:
        flat = cells.flat(self.s.geometry)
        record = self.oplog.path if self.oplog is not None else None

        def done(result):
            before, after = result
            self.show_result(cells, before, after, what)
            self.s.set_map_values(flat, after)
            self.s.chip.add_manual(op, flat, after, record=record)
        self.s.start_job(name, job, on_result=done, needs_station=True)

    def show_result(self, cells: Cells, before, after, what: str) -> None:
        self.last_result = (cells, before, after)
        n = len(cells)
        shown = min(n, MAX_TABLE_ROWS)
        self.table.setRowCount(shown)
        for i in range(shown):
            vals = (cells.pe[i], cells.row[i], cells.col[i],
                    "—" if before is None else f"{before[i] * US_PER_S:.3f}", f"{after[i] * US_PER_S:.3f}")
            for c, v in enumerate(vals):
                it = QTableWidgetItem(str(v))
                it.setTextAlignment(Qt.AlignCenter)
                self.table.setItem(i, c, it)
        summary = f"{what} · {n} cells · mean after {np.mean(after) * US_PER_S:.3f} µS"
        if before is not None:
            summary += f" · mean Δ {np.mean(after - before) * US_PER_S:+.3f} µS"
        if shown < n:
            summary += f" (table shows the first {shown})"
        self.result_label.setText(summary)

    def do_iv(self) -> None:
        xbar, cells = self.s.xbar, self.s.selected_cells()
        f = {k: v.si() for k, v in self.iv_g.fields.items()}
        flat = cells.flat(self.s.geometry)

        record = self._record()

        def job(ctx):
            res = iv_sweep(xbar, cells, v_set_max=f["v_set"], v_reset_max=f["v_reset"], v_step=f["step"],
                           v_gate_set=f["gate_set"], v_gate_reset=f["gate_reset"], width_s=f["width"],
                           progress=ctx.progress, cancel=ctx.cancel)
            record.record_iv(cells, xbar.now(), res.v, res.g_s)
            return res

        def done(res):
            self.show_iv(cells, res)
            self.s.set_map_values(flat, res.g_s[-1])
            self.s.chip.add_manual("I–V", flat, res.g_s[-1], record=record.path)
        self.s.start_job("I–V sweep", job, on_result=done, needs_station=True)

    def show_iv(self, cells: Cells, res) -> None:
        self.last_iv = res
        self.iv_plot.clear()
        cols = theme.CURVE_COLORS
        for i in range(min(len(cells), MAX_IV_CURVES)):
            self.iv_plot.plot(res.v, res.i_a[:, i] * 1e6, pen=pg.mkPen(cols[i], width=2), symbol="o",
                              symbolSize=4, symbolBrush=cols[i], symbolPen=None,
                              name=f"PE {cells.pe[i]} r{cells.row[i]} c{cells.col[i]}")
        self.show_result(cells, res.g_s[0], res.g_s[-1], f"I–V sweep, {res.v.size} steps")
