"""Sweeps tab: open a sweep folder (`hil sweep run ... --out DIR`), see its table and a figure
against an axis (mean over seeds with the 95% interval of the mean), refreshed live while the
sweep runs; save the plots as PNG and SVG (`hil sweep plot`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from hil.errors import HilError
from hil.sweep.plot import axes_and_figures, plot_sweep, summarize
from hil.sweep.table import PARTS, TABLE, SweepTable

from .. import theme
from ..session import Session
from ..widgets import muted, plot_widget, show_hint

log = logging.getLogger(__name__)
#: how often an open folder is checked for new points while a sweep runs
REFRESH_MS = 2000
#: what the empty plot says before a folder is open, and while it has no finished point
OPEN_HINT = "Open a sweep folder"
NO_POINTS_HINT = "No finished points yet"
#: rows shown in the table (the newest last); the parquet file holds them all
MAX_ROWS = 2000


class SweepsPanel(QWidget):
    title = "Sweeps"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.sweep_dir: Optional[Path] = None
        self._stamp = None
        self.df = None
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("runs/sweeps/…")
        self.path_edit.returnPressed.connect(lambda: self.open_folder(self.path_edit.text()))
        browse = QPushButton("Open folder…")
        browse.setProperty("primary", "true")
        browse.clicked.connect(self._browse)
        self.save_btn = QPushButton("Save plots (PNG, SVG)")
        self.save_btn.setEnabled(False)
        self.save_btn.clicked.connect(self.save_plots)
        top = QHBoxLayout()
        top.addWidget(self.path_edit, 1)
        top.addWidget(browse)
        top.addWidget(self.save_btn)

        self.status = muted("Open a sweep folder made by `hil sweep run SPEC --out DIR`; it refreshes while the "
                            "sweep runs.")
        self.figure_box, self.axis_box = QComboBox(), QComboBox()
        for box in (self.figure_box, self.axis_box):
            box.currentTextChanged.connect(self._draw)
        pick = QHBoxLayout()
        pick.addWidget(QLabel("Figure"))
        pick.addWidget(self.figure_box, 1)
        pick.addWidget(QLabel("against"))
        pick.addWidget(self.axis_box, 1)
        self.plot = plot_widget("Mean over seeds, 95% interval of the mean")
        show_hint(self.plot, OPEN_HINT)
        self.table = QTableWidget()
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setMinimumHeight(180)

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.status)
        lay.addLayout(pick)
        lay.addWidget(self.plot, 2)
        lay.addWidget(self.table, 2)
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)

    # ---- folder ---------------------------------------------------------------------------------
    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open a sweep folder", self.path_edit.text() or "runs/sweeps")
        if d:
            self.open_folder(d)

    def open_folder(self, path) -> bool:
        """Show the sweep in `path`; False (and the reason in the status line) if it is none."""
        p = Path(str(path)).expanduser()
        if SweepTable(p).spec() is None if p.is_dir() else True:
            self.status.setText(f"{p} is not a sweep folder (it has no sweep.json)")
            return False
        self.sweep_dir, self._stamp = p, None
        self.path_edit.setText(str(p))
        self.save_btn.setEnabled(True)
        self.refresh()
        self.timer.start()
        return True

    def _changed(self) -> bool:
        parts = self.sweep_dir / PARTS
        stamp = (tuple(sorted(f.name for f in parts.glob("*.json"))) if parts.is_dir() else (),
                 (self.sweep_dir / TABLE).stat().st_mtime_ns if (self.sweep_dir / TABLE).is_file() else None)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def refresh(self) -> None:
        """Reload the table if points were added since the last look."""
        if self.sweep_dir is None or not self._changed():
            return
        table = SweepTable(self.sweep_dir)
        try:
            df = table.frame()
        except HilError as e:
            self.status.setText(str(e))
            return
        spec = table.spec() or {}
        self.df = df
        axes, figures = axes_and_figures(table, df) if len(df) else ([], [])
        total = len(spec.get("seeds", [])) * max(1, int(np.prod([len(a["values"]) for a in spec.get("axes", [])
                                                                  if a["values"]] or [1])))
        ok = int((df["status"] == "ok").sum()) if "status" in df else 0
        self.status.setText(f"{spec.get('target', '?')}: {len(df)} of {total} points recorded, {ok} ok, "
                            f"{len(df) - ok} failed — {spec.get('description', '')}")
        self._fill(self.figure_box, figures)
        self._fill(self.axis_box, axes)
        self._show_table(df)
        self._draw()

    @staticmethod
    def _fill(box: QComboBox, items: list) -> None:
        if [box.itemText(i) for i in range(box.count())] == items:
            return
        keep = box.currentText()
        box.blockSignals(True)
        box.clear()
        box.addItems(items)
        if keep in items:
            box.setCurrentText(keep)
        box.blockSignals(False)

    def _show_table(self, df) -> None:
        shown = df.tail(MAX_ROWS)
        self.table.setColumnCount(len(shown.columns))
        self.table.setRowCount(len(shown))
        self.table.setHorizontalHeaderLabels([str(c) for c in shown.columns])
        for i, row in enumerate(shown.itertuples(index=False)):
            for j, v in enumerate(row):
                self.table.setItem(i, j, QTableWidgetItem(f"{v:.6g}" if isinstance(v, float) else str(v)))
        self.table.resizeColumnsToContents()

    def _draw(self) -> None:
        self.plot.clear()
        fig, axis = self.figure_box.currentText(), self.axis_box.currentText()
        df = self.df
        ok = df[df["status"] == "ok"] if df is not None and "status" in df else df
        if ok is None or ok.empty or not fig or not axis:
            show_hint(self.plot, OPEN_HINT if self.df is None else NO_POINTS_HINT)
            return
        show_hint(self.plot, "")
        s = summarize(ok, [axis], fig).sort_values(axis)
        x = s[axis].to_numpy(float)
        logx = bool((x > 0).all() and len(x) > 2 and x.max() / x.min() >= 100)
        self.plot.setLogMode(x=logx, y=False)
        xs = np.log10(x) if logx else x
        self.plot.addItem(pg.ErrorBarItem(x=xs, y=s["mean"].to_numpy(), height=2 * s["half"].to_numpy()))
        self.plot.plot(x, s["mean"].to_numpy(), pen=pg.mkPen(theme.ACCENT, width=1.5), symbol="o",
                       symbolBrush=theme.ACCENT, symbolPen=None)
        theme.style_plot(self.plot.getPlotItem(), "", (axis, ""), (fig, ""))

    def save_plots(self) -> list:
        """`hil sweep plot` on the open folder; the files written."""
        try:
            files = plot_sweep(self.sweep_dir)
        except HilError as e:
            self.status.setText(str(e))
            return []
        self.status.setText(f"{len(files)} plot files in {self.sweep_dir / 'plots'}")
        return files
