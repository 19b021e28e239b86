"""Curve tracer panel: I–V cycles of the cells, as log |I|, linear I or R = V/I against V,
one colour per cycle."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from .. import theme
from ..widgets import plot_widget
from .base import MAX_CURVES, ModulePanel

#: view -> (y label, unit, log y)
VIEWS = {"log |I|": ("|I|", "A", True), "I": ("I", "A", False), "R = V/I": ("R", "Ω", True)}


class DecadeAxis(pg.AxisItem):
    """A log axis whose decades are the top tick level: the 2…9 ticks between them are labelled
    only where there is room (pyqtgraph puts all of them in one level, so they crowd)."""

    def logTickValues(self, minVal, maxVal, size, stdTicks):
        ticks = super().logTickValues(minVal, maxVal, size, stdTicks)
        if len(ticks) != 1:
            return ticks
        values = np.asarray(ticks[0][1], float)
        decade = np.isclose(values, np.round(values))
        if not decade.any():
            return ticks
        return [(1.0, values[decade].tolist()), (None, values[~decade].tolist())]


class CurveTracerPanel(ModulePanel):
    def make_plots(self) -> list[QWidget]:
        self.view = QComboBox()
        self.view.addItems(list(VIEWS))
        self.view.currentTextChanged.connect(lambda _: (self.redraw(), self.update_hints()))
        self.plot = plot_widget("I–V cycles")
        self.plot.setAxisItems({"left": DecadeAxis("left")})
        theme.style_plot(self.plot.getPlotItem(), "", ("V", "V"), ("|I|", "A"))
        self.lines: list = []
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("view"))
        row.addWidget(self.view)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.plot, 1)
        return [box]

    def clear_plots(self) -> None:
        for c in self.lines:
            self.plot.removeItem(c)
        self.lines = []

    def curves(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(cycle, V, y of the current view) per cycle and cell, in sweep order."""
        if "v" not in self.rows:
            return []
        cyc, pt, cell = self.rows["cycle"], self.rows["point"], self.rows["cell"]
        v, i = self.rows["v"].astype(float), self.rows["i_a"].astype(float)
        name = self.view.currentText()
        with np.errstate(divide="ignore", invalid="ignore"):
            y = {"log |I|": np.abs(i), "I": i, "R = V/I": np.abs(v / i)}[name]
        out = []
        for c in np.unique(cyc):
            for k in list(dict.fromkeys(cell[cyc == c].tolist()))[:MAX_CURVES]:
                m = (cyc == c) & (cell == k)
                order = np.argsort(pt[m], kind="stable")
                yy = y[m][order]
                keep = np.isfinite(yy) & (yy > 0) if VIEWS[name][2] else np.isfinite(yy)
                out.append((int(c), v[m][order][keep], yy[keep]))
        return out

    def redraw(self) -> None:
        label, unit, log_y = VIEWS[self.view.currentText()]
        data = self.curves()
        n_cyc = len({c for c, _, _ in data})
        theme.style_plot(self.plot.getPlotItem(), f"I–V cycles: {self.view.currentText()} · {n_cyc} cycle(s), "
                         f"colour by cycle", ("V", "V"), (label, unit))
        self.plot.setLogMode(x=False, y=log_y)
        colors = theme.CURVE_COLORS
        while len(self.lines) < len(data):
            self.lines.append(self.plot.plot([], []))
        for line, (c, x, y) in zip(self.lines, data):
            line.setPen(pg.mkPen(colors[c % len(colors)], width=1.4))
            line.setData(x, y)
        for line in self.lines[len(data):]:
            line.setData([], [])
