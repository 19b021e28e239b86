"""Retention panel: G of every cell against time since the start (log), and the median."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from .. import theme
from ..widgets import plot_widget
from .base import US_PER_S, ModulePanel, per_cell


class RetentionPanel(ModulePanel):
    def make_plots(self) -> list[QWidget]:
        self.plot = plot_widget("Retention: G against time", ("time since start", "s"), ("G", "µS"), log_x=True,
                                legend=True)
        self.cell_curves: list = []
        self.median = self.plot.plot([], [], pen=pg.mkPen(theme.ACCENT, width=2.5), symbol="o", symbolSize=5,
                                     symbolBrush=theme.ACCENT, symbolPen=None, name="median")
        return [self.plot]

    def clear_plots(self) -> None:
        for c in self.cell_curves:
            self.plot.removeItem(c)
        self.cell_curves = []
        self.median.setData([], [])

    def redraw(self) -> None:
        t, cell, g = self.rows["t_s"], self.rows["cell"], self.rows["g_s"] * US_PER_S
        first = t[t > 0].min() if np.any(t > 0) else 1.0
        t = np.maximum(t, first / 10)            # the read at t = 0, on a log axis
        lines = per_cell(t, g, cell)
        while len(self.cell_curves) < len(lines):
            self.cell_curves.append(self.plot.plot([], [], pen=pg.mkPen("#6b727c", width=1)))
        for curve, (x, y) in zip(self.cell_curves, lines):
            curve.setData(x, y)
        times = np.unique(t)
        self.median.setData(times, np.array([np.median(g[t == x]) for x in times]))
