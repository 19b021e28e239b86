"""Forming panel: G of each cell still forming against the FORM voltage (live), and the forming
voltage distribution of the cells that formed."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from hil.modules.forming import ALREADY, FAILED, FORMED

from .. import theme
from ..widgets import plot_widget
from .base import US_PER_S, ModulePanel, per_cell


class FormingPanel(ModulePanel):
    def make_plots(self) -> list[QWidget]:
        self.ramp = plot_widget("Forming: G against FORM voltage", ("V_FORM", "V"), ("G", "µS"))
        self.ramp.setLogMode(x=False, y=True)
        self.ramp_curves: list = []
        self.hist = plot_widget("Forming voltage distribution", ("V_FORM", "V"), ("cells", ""))
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.08, brush=theme.OP_COLORS["FORM"])
        self.hist.addItem(self.bars)
        self.counts = (np.zeros(0), np.zeros(0))
        return [self.ramp, self.hist]

    def clear_plots(self) -> None:
        for c in self.ramp_curves:
            self.ramp.removeItem(c)
        self.ramp_curves = []
        self.counts = (np.zeros(0), np.zeros(0))
        self.bars.setOpts(x=[], height=[])

    def redraw(self) -> None:
        lines = per_cell(self.rows["v"].astype(float), self.rows["g_s"] * US_PER_S, self.rows["cell"])
        while len(self.ramp_curves) < len(lines):
            self.ramp_curves.append(self.ramp.plot([], [], pen=pg.mkPen(theme.OP_COLORS["FORM"], width=1),
                                                   symbol="o", symbolSize=3, symbolPen=None,
                                                   symbolBrush=theme.OP_COLORS["FORM"]))
        for curve, (x, y) in zip(self.ramp_curves, lines):
            curve.setData(x, np.maximum(y, 1e-3))

    def show_result(self, res) -> None:
        levels, v = res.levels, res.v_form[res.status == FORMED]
        counts = np.array([np.sum(np.isclose(v, x)) for x in levels])
        step = float(levels[1] - levels[0]) if levels.size > 1 else 0.1
        self.counts = (levels, counts)
        self.bars.setOpts(x=levels, height=counts, width=0.8 * step)
        already = int(np.sum(res.status == ALREADY))
        theme.style_plot(self.hist.getPlotItem(), f"V_FORM: {int(np.sum(res.status == FORMED))} formed, "
                         f"{int(np.sum(res.status == FAILED))} failed" + (f", {already} skipped" if already else ""))
