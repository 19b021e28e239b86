"""Array map tab: heat maps of every PE, colour range, hover readout, selection and the
selected cell's programming history from the current run record."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QGroupBox, QHBoxLayout, QLabel,
                               QPushButton, QSplitter, QVBoxLayout, QWidget)

from hil.errors import DataError
from hil.geometry import Cells
from hil.programming import STATUS_NAMES

from .. import theme
from ..history import RunHistory
from ..mapview import MODES, MapView
from ..session import Session, describe_selection
from ..widgets import muted, plot_widget

log = logging.getLogger(__name__)
US_PER_S = 1e6
COLORMAPS = ("viridis", "inferno", "plasma", "cividis", "magma")
OP_SYMBOLS = {"SET": "t1", "RESET": "t", "FORM": "star"}


class ArrayMapPanel(QWidget):
    title = "Array map"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.map = MapView()
        self.lo = self._level_box(0.0)
        self.hi = self._level_box(25.0)
        auto = QPushButton("Auto range")
        auto.clicked.connect(self.auto_range)
        self.cmap_box = QComboBox()
        self.cmap_box.addItems(COLORMAPS)
        self.cmap_box.currentTextChanged.connect(self.map.set_colormap)
        self.mode_box = QComboBox()
        self.mode_box.addItems([m.capitalize() for m in MODES])
        self.mode_box.currentIndexChanged.connect(lambda i: setattr(self.map, "mode", MODES[i]))
        clear = QPushButton("Clear selection")
        clear.clicked.connect(lambda: self.s.set_selection(np.zeros_like(self.s.selection))
                              if self.s.selection is not None else None)
        self.read_btn = QPushButton("Read array")
        self.read_btn.setProperty("primary", "true")
        self.read_btn.setToolTip("Read every cell once at the read voltage and show it")
        self.read_btn.clicked.connect(self.read_array)

        bar = QHBoxLayout()
        for w in (QLabel("Colour range"), self.lo, QLabel("–"), self.hi, auto, QLabel("  Colormap"),
                  self.cmap_box, QLabel("  Select"), self.mode_box, clear):
            bar.addWidget(w)
        bar.addStretch(1)
        bar.addWidget(self.read_btn)

        self.hover = QLabel("Hover over a cell to read its address and conductance")
        self.hover.setStyleSheet(f"font-family: monospace; font-size: 10.5pt; color: {theme.TEXT};")
        self.sel_label = muted("no cells selected")
        self.stats = muted("")
        info = QHBoxLayout()
        info.addWidget(self.sel_label, 1)
        info.addWidget(self.stats, 2)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.map, 1)
        ll.addWidget(self.hover)
        ll.addLayout(info)

        # history of the selected cell
        self.hist_title = QLabel("Cell history")
        self.hist_title.setStyleSheet("font-weight: 600;")
        self.hist_info = muted("Select one cell: every read of it on this chip (programming runs, weight "
                               "transfers, manual operations) against the pulses it received.")
        self.hist_info.setWordWrap(True)
        self.quantity = QComboBox()
        self.quantity.addItems(list(QUANTITIES))
        self.quantity.currentTextChanged.connect(lambda _: self.show_history())
        self.log_y = QCheckBox("log scale")
        self.log_y.toggled.connect(lambda _: self.show_history())
        self.g_plot = plot_widget("Reads of the cell on this chip", ("pulses applied", ""), ("G", "S"),
                                  min_height=180)
        self.p_plot = plot_widget("Pulses of its last write-verify", ("write-verify iteration", ""),
                                  ("amplitude", "V"), legend=True, min_height=160)
        self.g_curve = self.g_plot.plot([], [], pen=pg.mkPen(theme.ACCENT, width=2), symbol="o", symbolSize=5,
                                        symbolBrush=theme.ACCENT, symbolPen=None)
        self.band = pg.LinearRegionItem(orientation="horizontal", movable=False,
                                        brush=pg.mkBrush(62, 207, 142, 40), pen=pg.mkPen(None))
        self.band.hide()
        self.g_plot.addItem(self.band)
        self.target_line = pg.InfiniteLine(angle=0, pen=pg.mkPen(theme.OK, style=Qt.DashLine))
        self.target_line.hide()
        self.g_plot.addItem(self.target_line)
        self.pulse_items = {}
        for op, sym in OP_SYMBOLS.items():
            col = theme.OP_COLORS[op]
            self.pulse_items[op] = self.p_plot.plot([], [], pen=None, symbol=sym, symbolSize=8,
                                                    symbolBrush=col, symbolPen=None, name=f"{op} ({_amp_name(op)})")
        hist = QGroupBox("Cell history (this chip)")
        hl = QVBoxLayout(hist)
        hrow = QHBoxLayout()
        hrow.addWidget(self.hist_title, 1)
        hrow.addWidget(self.quantity)
        hrow.addWidget(self.log_y)
        hl.addLayout(hrow)
        hl.addWidget(self.hist_info)
        hl.addWidget(self.g_plot, 3)
        hl.addWidget(self.p_plot, 2)

        split = QSplitter(Qt.Horizontal)
        split.addWidget(left)
        split.addWidget(hist)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.addLayout(bar)               # above both halves: the map keeps the width it needs
        lay.addWidget(split, 1)

        self._history: Optional[RunHistory] = None
        self._history_error = ""
        self.history = None            # CellHistory of the pulses shown (for tests)
        self.timeline = None           # gui.chipstate.CellTimeline shown
        self.lo.valueChanged.connect(self._levels_from_boxes)
        self.hi.valueChanged.connect(self._levels_from_boxes)
        self.map.hovered.connect(self._hover)
        self.map.selection_requested.connect(self._select)
        self.s.connection_changed.connect(self._rebuild)
        self.s.map_changed.connect(self.refresh_map)
        self.s.selection_changed.connect(self._selection_changed)
        self.s.run_changed.connect(self._run_changed)
        self.s.chip.changed.connect(self.show_history)
        self.s.busy_changed.connect(lambda _: self._enable())
        self._rebuild()

    @staticmethod
    def _level_box(v: float) -> QDoubleSpinBox:
        b = QDoubleSpinBox()
        b.setRange(0.0, 1000.0)
        b.setDecimals(1)
        b.setSuffix(" µS")
        b.setValue(v)
        return b

    # ---- map -----------------------------------------------------------------------------
    def _rebuild(self) -> None:
        self.map.set_geometry(self.s.geometry)
        if self.map.bar is not None:
            self.map.bar.sigLevelsChangeFinished.connect(self._levels_from_bar)
        self.map.set_levels(self.lo.value(), self.hi.value())
        self.refresh_map()
        self._selection_changed()
        self._enable()

    def _enable(self) -> None:
        self.read_btn.setEnabled(self.s.connected and not self.s.busy)

    def refresh_map(self) -> None:
        if self.s.g_map is None or self.map.geometry is None:
            self.stats.setText("")
            return
        g_us = self.s.g_map * US_PER_S
        self.map.set_data(g_us)
        known = np.isfinite(g_us)
        if known.any():
            v = g_us[known]
            if v.min() < self.lo.value() or v.max() > self.hi.value():     # the colours cover the data
                self.lo.setValue(min(self.lo.value(), np.floor(v.min())))
                self.hi.setValue(max(self.hi.value(), np.ceil(v.max())))
            self.stats.setText(f"{known.sum():,} of {g_us.size:,} cells read · mean {v.mean():.2f} µS · "
                               f"min {v.min():.2f} · max {v.max():.2f}")
        else:
            self.stats.setText("not read yet — press Read array")

    def auto_range(self) -> None:
        if self.s.g_map is None or not np.isfinite(self.s.g_map).any():
            return
        v = self.s.g_map[np.isfinite(self.s.g_map)] * US_PER_S
        self.lo.setValue(np.floor(v.min()))
        self.hi.setValue(max(np.ceil(v.max()), np.floor(v.min()) + 1))

    def _levels_from_boxes(self, *_) -> None:
        self.map.set_levels(self.lo.value(), self.hi.value())

    def _levels_from_bar(self, bar) -> None:
        lo, hi = bar.levels()
        for box, v in ((self.lo, lo), (self.hi, hi)):
            box.blockSignals(True)
            box.setValue(v)
            box.blockSignals(False)
        self.map.set_levels(self.lo.value(), self.hi.value())

    def _hover(self, pe: int, row: int, col: int) -> None:
        if pe < 0 or self.s.g_map is None:
            self.hover.setText("—")
            return
        g = self.s.g_map[pe, row, col]
        val = "not read" if not np.isfinite(g) else f"{g * US_PER_S:7.3f} µS"
        self.hover.setText(f"PE {pe} · row {row:3d} · col {col:3d} · {val}")

    def read_array(self) -> None:
        xbar = self.s.xbar

        def job(ctx):
            g = xbar.geometry
            ctx.progress(_progress(0, 1))
            out = xbar.read(Cells.all(g)).reshape(g.shape)
            ctx.progress(_progress(1, 1))
            return out
        self.s.start_job("read array", job, on_result=self.s.set_map, needs_station=True)

    # ---- selection and history --------------------------------------------------------------
    def _select(self, mask, add: bool) -> None:
        if self.s.selection is None:
            return
        self.s.set_selection(mask | self.s.selection if add else mask)

    def _selection_changed(self) -> None:
        self.map.set_selection(self.s.selection)
        cells = self.s.selected_cells()
        self.sel_label.setText(describe_selection(cells))
        self.show_history()

    def _run_changed(self) -> None:
        self._history, self._history_error = None, ""
        if self.s.run_history is not None:
            self._history = self.s.run_history
        elif self.s.run_path is not None:
            try:
                self._history = RunHistory(self.s.run_path)
            except DataError as e:
                self._history_error = str(e)
        self.show_history()

    def show_history(self) -> None:
        """The selected cell's reads on this chip (or in the run opened on the Runs tab, if that
        run is not this chip's) and the pulses of its last write-verify."""
        cells = self.s.selected_cells()
        self.history = self.timeline = None
        for item in (self.g_curve, *self.pulse_items.values()):
            item.setData([], [])
        self.band.hide()
        self.target_line.hide()
        if len(cells) == 0 or self.s.geometry is None:
            self.hist_title.setText("Cell history")
            return
        pe, row, col = int(cells.pe[0]), int(cells.row[0]), int(cells.col[0])
        more = f" (first of {len(cells)} selected)" if len(cells) > 1 else ""
        self.hist_title.setText(f"PE {pe} · row {row} · col {col}{more}")
        flat = int(cells.flat(self.s.geometry)[0])
        opened = self._history if (self._history is not None and
                                   self.s.chip.write_of(self._history.path) is None) else None
        if opened is not None:
            self._show_record(opened, flat)
            return
        tl = self.timeline = self.s.chip.timeline(flat)
        if not tl.points:
            self.hist_info.setText(self._history_error or "No reads of this cell on this chip yet: program it, "
                                                          "read it, or open a run on the Runs tab.")
            return
        name, unit, conv = QUANTITIES[self.quantity.currentText()]
        v_read = self.s.xbar.v_read_default if self.s.xbar is not None else 0.2
        y = conv(tl.g_s, v_read)
        self.g_plot.setLogMode(y=self.log_y.isChecked())
        self.g_plot.setLabel("left", name, units=unit, **theme.LABEL_STYLE)
        self.g_curve.setData(tl.pulse, y)
        w = tl.written_by
        parts = [f"{len(tl.points)} reads", f"{int(tl.pulse[-1])} pulses",
                 f"now {tl.g_s[-1] * US_PER_S:.2f} µS"]
        if tl.target_s is not None:
            parts.insert(0, f"target {tl.target_s * US_PER_S:.2f} µS")
            if name == "G" and not self.log_y.isChecked():
                self.target_line.setValue(tl.target_s)
                self.target_line.show()
                if tl.tolerance_s:
                    self.band.setRegion((tl.target_s - tl.tolerance_s, tl.target_s + tl.tolerance_s))
                    self.band.show()
        if w is not None:
            parts.append(f"last written by {w.label}")
            if w.history is not None:
                self._show_pulses(w.history.cell(flat))
        self.hist_info.setText(" · ".join(parts))

    def _show_pulses(self, h) -> None:
        self.history = h
        for op, item in self.pulse_items.items():
            m = h.pulse_op == op
            amp = h.pulse_v_gate[m] if op == "SET" else h.pulse_v[m]
            item.setData(h.pulse_iter[m].astype(float), amp)

    def _show_record(self, rh: RunHistory, flat: int) -> None:
        """A run record opened on the Runs tab: its verify reads against the iteration."""
        h = rh.cell(flat)
        if h.verify_iter.size == 0 and h.n_pulses == 0:
            self.hist_info.setText(f"This cell was not programmed in {rh.path.name}.")
            return
        self.g_plot.setLogMode(y=False)
        self.g_plot.setLabel("left", "G", units="S", **theme.LABEL_STYLE)
        self.g_curve.setData(h.verify_iter.astype(float), h.verify_g_s)
        self._show_pulses(h)
        parts = [f"{h.verify_iter.size} verify reads", f"{h.n_pulses} pulses"]
        if h.target_s is not None:
            parts.insert(0, f"target {h.target_s * US_PER_S:.2f} µS")
        if h.final_g_s is not None:
            parts.append(f"final {h.final_g_s * US_PER_S:.2f} µS ({STATUS_NAMES.get(h.status, h.status)})")
        self.hist_info.setText(" · ".join(parts) + f" — {rh.path.name} (opened run; x: write-verify iteration)")


#: cell-history quantity -> (axis name, SI unit, f(G in S, read V))
QUANTITIES = {
    "G (conductance)": ("G", "S", lambda g, v: g),
    "R (resistance)": ("R", "Ω", lambda g, v: 1.0 / np.maximum(g, 1e-12)),
    "I (read current)": ("I", "A", lambda g, v: g * v),
}


def _amp_name(op: str) -> str:
    return {"SET": "gate V", "RESET": "SL V", "FORM": "BL V"}[op]


def _progress(done, total):
    from hil.progress import Progress
    return Progress(done, total, "reading the array", unit="reads")
