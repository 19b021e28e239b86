"""Pulse train / endurance panel: G against pulse number, after SET and after RESET, log axes."""
from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from .. import theme
from ..widgets import plot_widget
from .base import US_PER_S, ModulePanel


class PulseTrainPanel(ModulePanel):
    def make_plots(self) -> list[QWidget]:
        self.plot = plot_widget("Endurance: G against pulse number", ("pulse number", ""), ("G", "µS"), legend=True)
        self.after_set = self.plot.plot([], [], pen=None, symbol="o", symbolSize=4, name="after SET",
                                        symbolBrush=theme.OP_COLORS["SET"], symbolPen=None)
        self.after_reset = self.plot.plot([], [], pen=None, symbol="o", symbolSize=4, name="after RESET",
                                          symbolBrush=theme.OP_COLORS["RESET"], symbolPen=None)
        self.log_axes = QCheckBox("log axes")
        self.log_axes.setChecked(True)
        self.log_axes.toggled.connect(self._axes)
        self._axes(True)
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.log_axes)
        lay.addWidget(self.plot, 1)
        return [box]

    def _axes(self, on: bool) -> None:
        self.plot.setLogMode(x=on, y=on)

    def clear_plots(self) -> None:
        self.after_set.setData([], [])
        self.after_reset.setData([], [])

    def redraw(self) -> None:
        pulse, v, g = self.rows["pulse"].astype(float), self.rows["v"], self.rows["g_s"] * US_PER_S
        pulse = np.maximum(pulse, 1.0)          # a read before the first pulse, on a log axis
        for curve, m in ((self.after_set, v > 0), (self.after_reset, v <= 0)):
            curve.setData(pulse[m], g[m])
