"""The panel of one lab module: its settings form (checked inline against the config's ranges
and the station limits before anything runs), the cells, Run/Abort, progress and live plots.

The run is the module's stage (`hil.modules.base.run_module`) in a worker through the session's
job runner, into a record of kind "module" like `hil module run`. The rows each progress report
carries (`ModuleProgress.data`) are batched in the worker and handed to `add_rows`, which a
module's panel turns into its plots; this generic panel plots the last numeric column against
the first, so a plugin module gets a working panel without any GUI code.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                               QPushButton, QScrollArea, QFrame, QVBoxLayout, QWidget)

from hil.errors import HilError
from hil.modules.base import LabModule, ModuleProgress, parse_cells, run_module
from hil.runstore.lifecycle import run_record

from .. import theme
from ..panels.programming import station_snapshot, unique_path
from ..session import Session, describe_selection
from ..widgets import muted, plot_widget, show_hint
from .form import ConfigForm

log = logging.getLogger(__name__)
US_PER_S = 1e6
#: at most this many per-cell curves are drawn (the rest are in the record)
MAX_CURVES = 32
#: what an empty plot says before the first run, and during a run before its first data
EMPTY_HINT = "Run a module to see its data"
WAITING_HINT = "Waiting for the first data…"


class Rows:
    """Every row received so far, column by column."""

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {}

    def add(self, data: dict) -> None:
        for k, v in data.items():
            self._parts.setdefault(k, []).append(np.asarray(v))

    def __getitem__(self, key: str) -> np.ndarray:
        parts = self._parts.get(key)
        return np.concatenate(parts) if parts else np.zeros(0)

    def __contains__(self, key: str) -> bool:
        return key in self._parts

    def columns(self) -> list[str]:
        return list(self._parts)

    def __len__(self) -> int:
        return sum(p.size for p in next(iter(self._parts.values()), []))

    def take(self) -> dict:
        """Every row so far as one batch; empties this."""
        data = {c: self[c] for c in self.columns()}
        self._parts.clear()
        return data


def has_data(w: pg.PlotWidget) -> bool:
    """True if a curve, scatter or bar item of `w` holds at least one point."""
    for it in w.getPlotItem().items:
        if isinstance(it, pg.PlotDataItem) and it.xData is not None and len(it.xData):
            return True
        if isinstance(it, pg.BarGraphItem) and it.opts.get("height") is not None and np.size(it.opts["height"]):
            return True
    return False


def per_cell(x: np.ndarray, y: np.ndarray, cell: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, y) of each cell (in first-seen order, at most MAX_CURVES cells)."""
    cells = list(dict.fromkeys(cell.tolist()))[:MAX_CURVES]
    return [(x[cell == c], y[cell == c]) for c in cells]


class RunControls(QWidget):
    """Run and Abort, the refusal, a progress bar, the last message and the record of the run."""

    def __init__(self, session: Session, run: Callable[[], bool], abort_reason: str) -> None:
        super().__init__()
        self.reason = QLabel("")
        self.reason.setProperty("reason", "true")
        self.reason.setWordWrap(True)
        self.run_btn = QPushButton("Run")
        self.run_btn.setProperty("primary", "true")
        self.run_btn.clicked.connect(run)
        self.abort_btn = QPushButton("Abort")
        self.abort_btn.clicked.connect(lambda: session.abort(abort_reason))
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.message = muted("")
        self.record_label = muted("")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn, 1)
        buttons.addWidget(self.abort_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.reason)
        lay.addLayout(buttons)
        lay.addWidget(self.bar)
        lay.addWidget(self.message)
        lay.addWidget(self.record_label)

    def ended(self, what: str, outcome: str, out: Path) -> bool:
        """Show (and log) how the run of `what` ended and its record; False if none was written."""
        if not out.exists():
            self.message.setText(f"{what} {outcome}; no record was written")
            return False
        word = {"done": "finished", "cancelled": "aborted — partial record", "failed": "failed — record"}[outcome]
        self.record_label.setText(f"{word}: {out}")
        log.info("%s %s: record %s", what, word, out)
        return True


class ModulePanel(QWidget):
    """Generic panel of a lab module; subclasses override `make_plots`, `clear_plots`, `redraw`
    and `show_result`."""

    def __init__(self, session: Session, module: LabModule, folder: Callable[[], Path], parent=None) -> None:
        super().__init__(parent)
        self.s, self.module, self.folder = session, module, folder
        self.rows = Rows()
        self.result = None
        self.out: Optional[Path] = None
        self.running = False

        title = QLabel(f"{module.title or module.name}")
        title.setStyleSheet(f"font-size: 12pt; font-weight: 600; color: {theme.TEXT};")
        desc = muted(module.description)
        self.form = ConfigForm(module.config_type)
        self.form.changed.connect(self.refresh)
        form_area = QScrollArea()
        form_area.setWidget(self.form)
        form_area.setWidgetResizable(True)
        form_area.setFrameShape(QFrame.NoFrame)
        form_area.setMinimumHeight(140)
        settings = QGroupBox("Settings (SI units)")
        QVBoxLayout(settings).addWidget(form_area)

        self.cells = QLineEdit("0:0-3:0-1")
        self.cells.setToolTip("PE:rows:cols — numbers, ranges a-b, lists a,b or * (all); blocks joined by ;")
        self.cells.textChanged.connect(self.refresh)
        self.use_sel = QPushButton("Map selection")
        self.use_sel.setToolTip("take the cells selected on the Array map tab")
        self.use_sel.clicked.connect(self.use_selection)
        self.cells_note = muted("")
        cells_box = QGroupBox("Cells (PE:rows:cols)")
        cl = QVBoxLayout(cells_box)
        row = QHBoxLayout()
        row.addWidget(self.cells, 1)
        row.addWidget(self.use_sel)
        cl.addLayout(row)
        cl.addWidget(self.cells_note)

        self.controls = RunControls(self.s, self.start, f"{module.name} aborted from its panel")
        c = self.controls
        self.reason, self.run_btn, self.abort_btn, self.bar, self.message, self.record_label = \
            c.reason, c.run_btn, c.abort_btn, c.bar, c.message, c.record_label

        left = QVBoxLayout()
        left.setContentsMargins(0, 0, 0, 0)
        left.addWidget(title)
        left.addWidget(desc)
        left.addWidget(cells_box)
        left.addWidget(self.controls)
        left.addWidget(settings, 1)
        left_w = QWidget()
        left_w.setLayout(left)
        left_w.setMinimumWidth(300)
        left_w.setMaximumWidth(380)

        self.plot_grid = QGridLayout()
        self.plots: list[pg.PlotWidget] = []
        for i, w in enumerate(self.make_plots()):
            self.plot_grid.addWidget(w, i // 2, i % 2)
            self.plots += [w] if isinstance(w, pg.PlotWidget) else w.findChildren(pg.PlotWidget)
        self.update_hints()
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(left_w)
        lay.addLayout(self.plot_grid, 1)

        self.s.connection_changed.connect(self.refresh)
        self.s.busy_changed.connect(lambda _: self.refresh())
        self.s.selection_changed.connect(self.refresh)
        self.refresh()

    # ---- plots (override) ---------------------------------------------------------------------
    def make_plots(self) -> list[QWidget]:
        self.plot = plot_widget(f"{self.module.title or self.module.name}: live series")
        self.curve = self.plot.plot([], [], pen=None, symbol="o", symbolSize=5, symbolBrush=theme.ACCENT,
                                    symbolPen=None)
        return [self.plot]

    def clear_plots(self) -> None:
        self.curve.setData([], [])

    def redraw(self) -> None:
        cols = [c for c in self.rows.columns() if np.issubdtype(self.rows[c].dtype, np.number)]
        if len(cols) < 2:
            return
        x, y = cols[0], ("g_s" if "g_s" in cols else cols[-1])
        scale = US_PER_S if y == "g_s" else 1.0
        theme.style_plot(self.plot.getPlotItem(), "", (x, ""), (y if scale == 1 else "G", "µS" if scale != 1 else ""))
        self.curve.setData(self.rows[x].astype(float), self.rows[y].astype(float) * scale)

    def show_result(self, res) -> None:
        """The module's typed result arrived (the run finished)."""

    def update_hints(self) -> None:
        """A centred hint in each plot without data, instead of empty 0–1 axes."""
        hint = WAITING_HINT if self.running else EMPTY_HINT
        for w in self.plots:
            show_hint(w, "" if has_data(w) else hint)

    # ---- state --------------------------------------------------------------------------------
    def refusal(self) -> tuple[str, str]:
        """(why Run is refused, the field to blame) — ('', '') when it may run."""
        try:
            cfg = self.module.config(self.form.values())
            if not self.s.connected:
                return "Connect a station first (Station tab).", ""
            cells = parse_cells(self.cells.text(), self.s.geometry)
            self.module.check(self.s.xbar.limits, self.s.geometry, cfg)
        except HilError as e:
            msg = str(e).split("\n")[0]
            bad = next((n for n in self.form.widgets if re.search(rf"(^|\.){re.escape(n)}\b", msg)), "")
            return msg, bad
        self.cells_note.setText(describe_selection(cells))
        return ("A job is running." if self.s.busy else ""), ""

    def refresh(self) -> None:
        why, bad = self.refusal()
        self.form.mark(bad)
        self.reason.setText(why)
        self.run_btn.setEnabled(not why)
        self.run_btn.setToolTip(why)
        self.abort_btn.setEnabled(self.s.busy)
        self.use_sel.setEnabled(self.s.connected and self.s.selection is not None and bool(self.s.selection.any()))

    def use_selection(self) -> None:
        """Cells of the Array map's selection, as one block per PE/row when they form one."""
        cells = self.s.selected_cells()
        if len(cells) == 0:
            return
        blocks = []
        for pe in np.unique(cells.pe):
            m = cells.pe == pe
            blocks += [f"{pe}:{r}:{','.join(map(str, cells.col[m & (cells.row == r)]))}" for r in np.unique(cells.row[m])]
        self.cells.setText(";".join(blocks))

    # ---- run ----------------------------------------------------------------------------------
    def start(self) -> bool:
        """Run the module on the cells in a worker; False (and why, inline) if refused."""
        why, _ = self.refusal()
        if why:
            self.reason.setText(why)
            return False
        module, xbar = self.module, self.s.xbar
        cfg = module.config(self.form.values())
        cells = parse_cells(self.cells.text(), self.s.geometry)
        flat = cells.flat(self.s.geometry)
        out = unique_path(Path(self.folder()), f"module-{module.name}")
        snapshot = station_snapshot(self.s)
        pulses_before = int(self.s.chip.counters.get("pulses", 0))

        def job(ctx):
            pending = Rows()

            def progress(p):
                ctx.progress(p)
                if isinstance(p, ModuleProgress) and p.series:
                    pending.add(p.data)
                    if ctx.want_partial():
                        ctx.partial(pending.take())
            try:
                with run_record(out, "module", station=snapshot) as writer:
                    res = run_module(module, xbar, writer, cfg, cells, progress=progress, cancel=ctx.cancel)
                    writer.set_attrs("/", summary=res.to_dict())
                    return res
            finally:
                if len(pending):
                    ctx.partial(pending.take())

        def on_rows(data):
            self.rows.add(data)
            self.redraw()
            self.update_hints()

        def on_progress(p):
            self.bar.setValue(int(1000 * p.fraction))
            self.message.setText(p.message)

        def on_result(res):
            self.result = res
            self.show_result(res)
            self.update_hints()

        def on_end(outcome):
            self.running = False
            self.update_hints()
            self._after_run(outcome, out, flat, pulses_before)

        self.rows = Rows()
        self.result, self.out = None, out
        self.clear_plots()
        self.bar.setValue(0)
        self.record_label.setText("")
        self.running = self.s.start_job(f"{module.name}", job, on_result=on_result, on_progress=on_progress,
                                        on_partial=on_rows, on_end=on_end, needs_station=True)
        self.update_hints()
        return self.running

    def _after_run(self, outcome: str, out: Path, flat: np.ndarray, pulses_before: int) -> None:
        """Say where the record is; put the cells' last conductances on the map and, when the run
        applied pulses, the write on the chip model."""
        if not self.controls.ended(self.module.name, outcome, out):
            return
        if "cell" in self.rows and "g_s" in self.rows:
            cell, g = self.rows["cell"].astype(np.int64), self.rows["g_s"]
            last = {c: v for c, v in zip(cell.tolist(), g.tolist())}
            self.s.set_map_values(np.array(list(last), np.int64), np.array(list(last.values())))
        note_write(self.s, self.module.name, flat, out, f"{self.module.title or self.module.name} {out.name}",
                   pulses_before)


def note_write(session: Session, kind: str, flat: np.ndarray, out: Path, label: str, pulses_before: int) -> None:
    """Tell the chip model that `flat` was written by the run recorded in `out` — when the run
    applied pulses (the crossbar's pulse counter moved past `pulses_before`)."""
    if session.xbar is not None:
        pulses = int(session.xbar.describe().get("counters", {}).get("pulses", 0))
        if pulses > pulses_before:
            session.chip.add_write(kind, flat, record=out, label=label)

