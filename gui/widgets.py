"""Small reusable widgets: limit-checked number fields, operation groups and plot helpers."""
from __future__ import annotations

import math
from typing import Callable, Optional

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDoubleSpinBox, QFormLayout, QFrame, QGroupBox, QLabel, QPushButton,
                               QScrollArea, QVBoxLayout, QWidget)

from hil.report.accuracy import fmt, interval

from . import theme


def accuracy_text(acc: Optional[float], n: int) -> str:
    """An accuracy (fraction) measured on `n` images with its Wilson 95% interval,
    '96.40% [94.4, 97.7]'; '—' when there is none."""
    if acc is None or not math.isfinite(acc) or not n:
        return "—"
    return fmt(interval(acc, n))


class LimitField(QDoubleSpinBox):
    """A number in display units (e.g. V, ns) whose SI value is checked against a station limit.

    The spin box accepts values beyond the limit so the user can type them, but then the field
    turns red and `reason()` says which limit refuses it; groups disable their action button."""

    validity_changed = Signal()

    def __init__(self, label: str, unit: str, value: float, *, scale: float = 1.0, decimals: int = 2,
                 step: float = 0.1, hard_max: float = 1e9, hard_min: float = 0.0) -> None:
        super().__init__()
        self.label, self.unit, self.scale = label, unit, scale
        self.setDecimals(decimals)
        self.setSingleStep(step)
        self.setRange(hard_min, hard_max)
        self.setSuffix(f" {unit}")
        self.setKeyboardTracking(True)
        self.setValue(value)
        self.setMinimumWidth(110)
        self._lo: Optional[float] = None
        self._hi: Optional[float] = None
        self._what = ""
        self.valueChanged.connect(self._revalidate)

    def set_bounds(self, lo_si: Optional[float], hi_si: Optional[float], what: str) -> None:
        """Allowed SI range and the name of the limit that sets it (shown when refused)."""
        self._lo, self._hi, self._what = lo_si, hi_si, what
        self.setToolTip(f"{self.label}: {self._fmt(lo_si)} … {self._fmt(hi_si)} {self.unit} ({what})")
        self._revalidate()

    def si(self) -> float:
        return self.value() * self.scale

    def _fmt(self, v: Optional[float]) -> str:
        return "–" if v is None else f"{v / self.scale:.{max(0, self.decimals())}f}"

    def reason(self) -> str:
        v = self.si()
        tol = 1e-9 * max(abs(v), 1e-30)
        if self._hi is not None and v > self._hi + tol:
            return (f"{self.label} {self.value():g} {self.unit} exceeds the station limit "
                    f"{self._fmt(self._hi)} {self.unit} ({self._what})")
        if self._lo is not None and v < self._lo - tol:
            return (f"{self.label} {self.value():g} {self.unit} is below the station minimum "
                    f"{self._fmt(self._lo)} {self.unit} ({self._what})")
        return ""

    def is_valid(self) -> bool:
        return not self.reason()

    def _revalidate(self, *_) -> None:
        invalid = "false" if self.is_valid() else "true"
        if self.property("invalid") != invalid:
            self.setProperty("invalid", invalid)
            self.style().unpolish(self)
            self.style().polish(self)
        self.validity_changed.emit()


class OpGroup(QGroupBox):
    """A titled group of LimitFields with one action button that is enabled only when every
    field is within the limits and `context_ok()` allows it; the first refusal is shown."""

    def __init__(self, title: str, button_text: str, on_click: Callable[[], None],
                 context_ok: Callable[[], str]) -> None:
        super().__init__(title)
        self._context_ok = context_ok
        self.fields: dict[str, LimitField] = {}
        self.form = QFormLayout()
        self.form.setLabelAlignment(Qt.AlignRight)
        self.button = QPushButton(button_text)
        self.button.setProperty("primary", "true")
        self.button.clicked.connect(lambda *_: on_click())
        self.reason = QLabel("")
        self.reason.setProperty("reason", "true")
        self.reason.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addLayout(self.form)
        lay.addWidget(self.reason)
        lay.addWidget(self.button)

    def add(self, key: str, f: LimitField) -> LimitField:
        self.fields[key] = f
        self.form.addRow(f.label, f)
        f.validity_changed.connect(self.refresh)
        return f

    def refusal(self) -> str:
        for f in self.fields.values():
            r = f.reason()
            if r:
                return r
        return ""

    def refresh(self) -> None:
        why = self.refusal()
        ctx = self._context_ok()
        self.reason.setText(why)
        self.button.setEnabled(not why and not ctx)
        self.button.setToolTip(why or ctx or "")


#: entries per row of a plot's legend
LEGEND_COLUMNS = 4


def plot_widget(title: str, x=("", ""), y=("", ""), *, log_x: bool = False, legend: bool = False,
                min_height: int = 200) -> pg.PlotWidget:
    """A styled pyqtgraph PlotWidget with title and axis labels (units in parentheses)."""
    w = pg.PlotWidget()
    w.setMinimumHeight(min_height)
    theme.style_plot(w.getPlotItem(), title, x, y)
    if log_x:
        w.setLogMode(x=True, y=False)
    if legend:                       # below the axis, never over the data; named curves join it
        item = w.getPlotItem()
        leg = pg.LegendItem(labelTextColor=theme.TEXT, colCount=LEGEND_COLUMNS)
        leg.setLabelTextSize("8.5pt")
        item.layout.addItem(leg, 4, 1)
        item.legend = leg
    w.setMenuEnabled(False)
    return w


def show_hint(w: pg.PlotWidget, hint: str) -> None:
    """While `hint` is not empty, `w` shows it centred in place of its axes, ticks and grid (an
    empty plot, not 0–1 ranges); `show_hint(w, "")` brings the axes back for the data."""
    item = w.getPlotItem()
    text = getattr(w, "empty_hint", None)
    if text is None:
        text = w.empty_hint = pg.TextItem("", color=theme.MUTED, anchor=(0.5, 0.5))
        text.setZValue(10)
    item.removeItem(text)                # (a no-op unless shown; plot.clear() may have taken it)
    for ax in ("left", "bottom"):
        item.showAxis(ax, not hint)
    item.showGrid(x=not hint, y=not hint, alpha=theme.GRID_ALPHA)
    text.setText(hint)
    if hint:
        item.addItem(text, ignoreBounds=True)
        item.vb.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        text.setPos(0.5, 0.5)
    else:
        item.enableAutoRange()


def muted(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setProperty("muted", "true")
    lab.setWordWrap(True)
    return lab


def headline(text: str) -> QLabel:
    lab = QLabel(text)
    lab.setStyleSheet(f"font-size: 13pt; font-weight: 600; color: {theme.TEXT};")
    return lab



def scrollable(w: QWidget) -> QScrollArea:
    """`w` in a frameless scroll area that resizes it: a tab still usable below its minimum size."""
    area = QScrollArea()
    area.setWidget(w)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    return area
