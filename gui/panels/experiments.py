"""Experiments tab: read disturb and retention drift on the programmed cells, with live plots.
Both run the `hil.modules.stability.experiment` stage in a worker (virtual clock on the simulator)
and write a run record like `hil experiment`: the programming of the cells (carried over from
the Programming tab's record), then the experiment."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QSpinBox, QDoubleSpinBox, QVBoxLayout,
                               QWidget)

from hil.modules import stability as experiments
from hil.ops.jobs import carry_programming
from hil.runstore import read_content
from hil.runstore.lifecycle import run_record

from .. import theme
from ..session import Session
from ..widgets import muted, plot_widget
from .programming import station_snapshot, unique_path

log = logging.getLogger(__name__)
US_PER_S = 1e6
DAY = 86400.0
HIST_BINS = 81
#: deviation histograms span ± this many tolerances around the target
DEV_SPAN_TOL = 8


def disturb_checkpoints(reads: int, n: int) -> list[int]:
    """`n` log-spaced read counts from 10 up to `reads`."""
    return sorted({int(round(x)) for x in np.geomspace(min(10, reads), reads, max(1, n))})


def drift_times(days: float) -> list[float]:
    """The standard snapshot times (1 s, 10 min, 1 h, 1 d, 7 d, 30 d) up to `days`, plus `days`."""
    end = days * DAY
    ts = [t for t in experiments.DEFAULT_DRIFT_TIMES_S if t < end * (1 - 1e-9)]
    return ts + [end]


class _ExperimentView:
    """Metric-vs-x plot and per-snapshot conductance distributions of one experiment."""

    def __init__(self, title: str, x_label: str, y_label: str) -> None:
        self.metric = plot_widget(title, (x_label, ""), (y_label, "%"), log_x=True)
        self.curve = self.metric.plot([], [], pen=pg.mkPen(theme.ACCENT, width=2), symbol="o", symbolSize=7,
                                      symbolBrush=theme.ACCENT, symbolPen=None)
        self.dist = plot_widget(f"{title.split(':')[0]}: deviation from target per snapshot", ("G − target", "µS"),
                                ("cells", ""), legend=True)
        self.band = pg.LinearRegionItem(movable=False, brush=pg.mkBrush(62, 207, 142, 30), pen=pg.mkPen(None))
        self.xs: list = []
        self.ys: list = []

    def reset(self, tol_us: float) -> None:
        self.xs, self.ys = [], []
        self.curve.setData([], [])
        self.dist.clear()
        self.band.setRegion((-tol_us, tol_us))
        self.dist.addItem(self.band)

    def add(self, x: float, y_pct: float, dev_us: np.ndarray, label: str, k: int, n: int, bins) -> None:
        """One snapshot: metric point at `x`, and the histogram of deviations (µS, clipped to the
        outer bins so nothing falls off the plot)."""
        self.xs.append(max(x, 1.0))
        self.ys.append(y_pct)
        self.curve.setData(np.array(self.xs), np.array(self.ys))
        counts, edges = np.histogram(np.clip(dev_us, bins[0], bins[-1]), bins=bins)
        col = theme.level_colors(max(n, 2))[min(k, max(n, 2) - 1)]
        self.dist.plot(edges, counts, stepMode="center", pen=pg.mkPen(col, width=1.6), name=label)


class ExperimentsPanel(QWidget):
    title = "Experiments"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.cells_label = QLabel("")
        self.cells_label.setStyleSheet("font-weight: 600;")
        self.cells_label.setWordWrap(True)
        self.target_label = QLabel("")
        self.target_label.setWordWrap(True)
        self.stale_label = QLabel("")
        self.stale_label.setWordWrap(True)
        self.stale_label.setStyleSheet(f"color: {theme.WARN}; font-weight: 600;")
        self.retarget_btn = QPushButton("Re-target to what is on the chip now")
        self.retarget_btn.setToolTip("compare against the targets of the newest write on the chip")
        self.retarget_btn.clicked.connect(self.retarget)
        self.folder = QLineEdit("runs")

        self.reads = QSpinBox()
        self.reads.setRange(10, experiments.MAX_DISTURB_READS)
        self.reads.setValue(1_000_000)
        self.rd_points = QSpinBox()
        self.rd_points.setRange(1, 20)
        self.rd_points.setValue(6)
        self.rd_btn = QPushButton("Start read disturb")
        self.rd_btn.setProperty("primary", "true")
        self.rd_btn.clicked.connect(self.start_read_disturb)
        rd = QGroupBox("Read disturb")
        g = QGridLayout(rd)
        g.addWidget(QLabel("read pulses"), 0, 0)
        g.addWidget(self.reads, 0, 1)
        g.addWidget(QLabel("checkpoints"), 1, 0)
        g.addWidget(self.rd_points, 1, 1)
        g.addWidget(self.rd_btn, 2, 0, 1, 2)

        self.days = QDoubleSpinBox()
        self.days.setRange(0.001, experiments.MAX_DRIFT_DAYS)
        self.days.setDecimals(3)
        self.days.setValue(30.0)
        self.days.setSuffix(" days")
        self.dr_btn = QPushButton("Start drift")
        self.dr_btn.setProperty("primary", "true")
        self.dr_btn.clicked.connect(self.start_drift)
        dr = QGroupBox("Retention drift (virtual clock on the simulator)")
        g = QGridLayout(dr)
        g.addWidget(QLabel("duration"), 0, 0)
        g.addWidget(self.days, 0, 1)
        g.addWidget(muted("snapshots at 1 s, 10 min, 1 h, 1 d, 7 d, 30 d (up to the duration)"), 1, 0, 1, 2)
        self.clock_note = muted("")
        self.days.valueChanged.connect(lambda _: self.refresh())
        g.addWidget(self.clock_note, 3, 0, 1, 2)
        g.addWidget(self.dr_btn, 2, 0, 1, 2)

        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.message = muted("")
        top = QHBoxLayout()
        cells_box = QGroupBox("Cells")
        cl = QVBoxLayout(cells_box)
        cl.addWidget(self.cells_label)
        cl.addWidget(self.target_label)
        cl.addWidget(self.stale_label)
        cl.addWidget(self.retarget_btn)
        fl = QHBoxLayout()
        fl.addWidget(QLabel("run folder"))
        fl.addWidget(self.folder)
        cl.addLayout(fl)
        cl.addWidget(self.bar)
        cl.addWidget(self.message)
        top.addWidget(cells_box, 2)
        top.addWidget(rd, 1)
        top.addWidget(dr, 1)

        self.rd_view = _ExperimentView("Read disturb: cells out of band", "read pulses", "out of band")
        self.dr_view = _ExperimentView("Drift: cells in band", "time after programming (s)", "in band")
        plots = QGridLayout()
        plots.addWidget(self.rd_view.metric, 0, 0)
        plots.addWidget(self.rd_view.dist, 0, 1)
        plots.addWidget(self.dr_view.metric, 1, 0)
        plots.addWidget(self.dr_view.dist, 1, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(plots, 1)

        self.result = None
        self.out: Optional[Path] = None
        self.target = None               # gui.chipstate.Write whose targets the experiments compare against
        self.s.plan_changed.connect(self._plan_changed)
        self.s.chip.changed.connect(self.refresh)
        self.s.connection_changed.connect(self.refresh)
        self.s.busy_changed.connect(lambda _: self.refresh())
        self.refresh()

    def _plan_changed(self) -> None:
        """A programming run finished (or the station changed): compare against it."""
        self.target = self.s.chip.write_of(self.s.plan_record, "programming") if self.s.plan else None
        self.refresh()

    def retarget(self) -> None:
        """Compare against the targets of the newest write still on the chip."""
        self.target = self.s.chip.current_targets()
        if self.target is not None:
            log.info("experiments now compare against %s", self.target.label)
        self.refresh()

    def stale_cells(self) -> np.ndarray:
        """Cells of the target written again since (their targets are not the chip's)."""
        return np.zeros(0, np.int64) if self.target is None else self.s.chip.overwritten(self.target)

    def _why_not(self) -> str:
        if not self.s.connected:
            return "Connect a station first (Station tab)."
        if self.target is None:
            return "Program cells first (Programming tab): experiments follow programmed cells."
        if self.s.busy:
            return "A job is running."
        if self.stale_cells().size:
            return "The targets are stale: re-target first."
        return ""

    def refresh(self) -> None:
        if not self.s.chip.holds(self.target):     # a write of the station connected before
            self.target = None
        why = self._why_not()
        for b in (self.rd_btn, self.dr_btn):
            b.setEnabled(not why)
            b.setToolTip(why)
        chip = self.s.chip
        self.cells_label.setText("On the chip: " + chip.describe_regions() if self.s.connected else
                                 "Not connected.")
        t = self.target
        self.target_label.setText("No programmed cells yet — program some on the Programming tab." if t is None
                                  else f"Experiments compare against: {t.label} ({t.flat.size:,} cells)")
        stale = self.stale_cells()
        newer = chip.current_targets()
        if stale.size:
            by = sorted({chip.writes[i].label for i in chip.last_writer[stale]})
            self.stale_label.setText(f"⚠ Stale targets: {stale.size:,} of {t.flat.size:,} cells were written "
                                     f"again since, by {', '.join(by)}.")
        self.stale_label.setVisible(bool(stale.size))
        self.retarget_btn.setVisible(bool(stale.size) and newer is not None and newer is not t)
        self.retarget_btn.setEnabled(not self.s.busy)
        written = int(np.count_nonzero(chip.last_writer >= 0)) if chip.last_writer is not None else 0
        self.clock_note.setText(f"advances the station clock by {experiments.format_duration(self.days.value() * DAY)}: "
                                f"every cell on the chip ages ({written:,} written cells)")

    # ---- jobs ----------------------------------------------------------------------------
    def _start(self, kind: str, cfg, xs: list, labels: list, view: _ExperimentView, metric) -> bool:
        why = self._why_not()
        if why:
            self.s.error.emit("Cannot start", why)
            return False
        target = self.target
        plan = target.plan
        xbar = self.s.xbar
        out = unique_path(Path(self.folder.text().strip() or "runs"), kind)
        snapshot = station_snapshot(self.s)
        tol_us = plan.tolerance_s * US_PER_S
        span = DEV_SPAN_TOL * tol_us
        bins = np.linspace(-span, span, HIST_BINS + 1)
        n = len(xs)

        def job(ctx):
            with run_record(out, kind, station=snapshot) as writer:
                if target.kind == "programming":     # the record carries the programming, as `hil experiment`
                    carry_programming(writer, read_content(target.record))
                else:                                # re-targeted: name the record holding the targets
                    writer.set_attrs("experiment", targets_record=str(target.record), targets_of=target.kind)
                return experiments.experiment(xbar, writer, cfg, plan, progress=ctx.progress, cancel=ctx.cancel,
                                              on_snapshot=lambda k, label, g: ctx.partial((k, g.copy())))

        def partial(data):
            k, g = data
            if 0 <= k < n:
                view.add(xs[k], 100 * metric(g, plan), (g - plan.targets_s) * US_PER_S, labels[k], k, n, bins)

        def progress(p):
            self.bar.setValue(int(1000 * p.fraction))
            self.message.setText(p.message)

        def done(res):
            self.result = res

        def end(outcome):
            if outcome == "done":
                self.message.setText(f"{kind} finished — record {out}")
            elif outcome == "cancelled":
                self.message.setText(f"{kind} aborted — partial record {out}")

        view.reset(tol_us)
        self.out = out
        self.bar.setValue(0)
        return self.s.start_job(kind, job, on_result=done, on_progress=progress, on_partial=partial,
                                on_end=end, needs_station=True)

    def start_read_disturb(self) -> bool:
        reads = self.reads.value()
        cps = disturb_checkpoints(reads, self.rd_points.value())
        xs = [0] + cps
        labels = [experiments.format_count(c) for c in xs]
        cfg = experiments.ReadDisturbConfig(reads=reads, checkpoints=tuple(cps))
        return self._start("read-disturb", cfg, xs, labels, self.rd_view, _out_of_band)

    def start_drift(self) -> bool:
        ts = drift_times(self.days.value())
        labels = [experiments.format_duration(t) for t in ts]
        cfg = experiments.DriftConfig(days=self.days.value(), times_s=tuple(ts))
        return self._start("drift", cfg, ts, labels, self.dr_view, lambda g, p: 1 - _out_of_band(g, p))


def _out_of_band(g: np.ndarray, plan) -> float:
    return float(np.mean(np.abs(g - plan.targets_s) > plan.tolerance_s))
