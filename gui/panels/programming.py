"""Programming tab: pick a target (level pattern, weights file, a previous run's snapshot),
run write-verify in a worker with progress and ETA, watch the per-level CDF and pulse-count
histogram grow, and read the summary at the end."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout,
                               QGroupBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QRadioButton, QSpinBox, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from hil.errors import ConfigError
from hil.ops.jobs import (CELLS, ProgramConfig, ProgramPlan, plan_for, plan_from_content, program,
                          stored_program_config)
from hil.programming import ProgramReport, WriteVerifyPolicy, policy_within
from hil.runstore import lifecycle
from hil.runstore.lifecycle import resumable_content, run_record

from .. import theme
from ..history import RunHistory
from ..session import Session, describe_error
from ..widgets import muted, plot_widget

log = logging.getLogger(__name__)
US_PER_S = 1e6
PATTERNS = ("levels32", "checker", "random")
def unique_path(folder: Path, stem: str) -> Path:
    """folder/stem-YYYYmmdd-HHMMSS.h5, with a counter if that exists (with or without journal)."""
    base = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, k = base.with_suffix(".h5"), 1
    while out.exists() or Path(str(out) + ".journal").exists():
        out = Path(f"{base}-{k}.h5")
        k += 1
    return out


def parse_pes(text: str, n_pe: int) -> list[int]:
    """'all', '0', '0,2' or '0-3' -> PE list; ConfigError naming the problem."""
    t = text.strip().lower()
    if t in ("", "all"):
        return list(range(n_pe))
    pes: list[int] = []
    try:
        for part in t.split(","):
            if "-" in part:
                a, b = (int(x) for x in part.split("-"))
                pes.extend(range(a, b + 1))
            else:
                pes.append(int(part))
    except ValueError:
        raise ConfigError(f"PEs must be 'all' or numbers like '0', '0,2' or '0-3', got {text!r}") from None
    bad = [p for p in pes if not 0 <= p < n_pe]
    if bad:
        raise ConfigError(f"PE {bad[0]} does not exist: this station has PEs 0..{n_pe - 1}")
    return sorted(set(pes))


def station_snapshot(session: Session) -> dict:
    """The station snapshot of a record made in the GUI (`hil.runstore.lifecycle.station_snapshot`)."""
    return lifecycle.station_snapshot(session.xbar, client="gui", spec=session.station_spec,
                                      seed=session.station_seed, label=session.station_label,
                                      describe=session.identity)


class ProgrammingPanel(QWidget):
    title = "Programming"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        # target
        self.src_pattern = QRadioButton("Level pattern")
        self.src_weights = QRadioButton("Weights file (.npy, siemens)")
        self.src_snapshot = QRadioButton("Snapshot of a previous run (.h5)")
        grp = QButtonGroup(self)
        for b in (self.src_pattern, self.src_weights, self.src_snapshot):
            grp.addButton(b)
        self.src_pattern.setChecked(True)
        self.pattern = QComboBox()
        self.pattern.addItems(PATTERNS)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2 ** 31 - 1)
        self.weights_edit, self.snapshot_edit = QLineEdit(), QLineEdit()
        self.weights_edit.setPlaceholderText("targets.npy — one conductance per cell of the chosen PEs")
        self.snapshot_edit.setPlaceholderText("runs/program-….h5 — its snapshots/after_programming")
        wb, sb = QPushButton("Browse…"), QPushButton("Browse…")
        wb.clicked.connect(lambda: self._browse(self.weights_edit, "Weights (*.npy)", self.src_weights))
        sb.clicked.connect(lambda: self._browse(self.snapshot_edit, "Run records (*.h5)", self.src_snapshot))
        self.n_levels = QSpinBox()
        self.n_levels.setRange(2, 128)
        self.n_levels.setValue(32)
        self.g_min, self.g_max = QDoubleSpinBox(), QDoubleSpinBox()
        for box, v in ((self.g_min, 2.0), (self.g_max, 20.0)):
            box.setRange(0.0, 500.0)
            box.setDecimals(1)
            box.setSuffix(" µS")
            box.setValue(v)
        self.pes = QLineEdit("0")
        self.pes.setToolTip("'all', '0', '0,2' or '0-3'")
        self.max_pulses = QSpinBox()
        self.max_pulses.setRange(1, 100_000)
        self.max_pulses.setValue(WriteVerifyPolicy.max_pulses)
        self.folder = QLineEdit("runs")
        self.start_btn = QPushButton("Start write-verify")
        self.start_btn.setProperty("primary", "true")
        self.start_btn.clicked.connect(self.start)
        self.resume_btn = QPushButton("Resume a run…")
        self.resume_btn.setToolTip("continue an interrupted programming run: finished cells are kept")
        self.resume_btn.clicked.connect(self._pick_resume)

        tgt = QGroupBox("Target")
        g = QGridLayout(tgt)
        g.addWidget(self.src_pattern, 0, 0)
        g.addWidget(self.pattern, 0, 1)
        g.addWidget(QLabel("seed"), 0, 2, alignment=Qt.AlignRight)
        g.addWidget(self.seed, 0, 3)
        g.addWidget(self.src_weights, 1, 0)
        g.addWidget(self.weights_edit, 1, 1, 1, 2)
        g.addWidget(wb, 1, 3)
        g.addWidget(self.src_snapshot, 2, 0)
        g.addWidget(self.snapshot_edit, 2, 1, 1, 2)
        g.addWidget(sb, 2, 3)
        opts = QGroupBox("Levels and job")
        o = QGridLayout(opts)
        rows = (("levels", self.n_levels), ("G min", self.g_min), ("G max", self.g_max),
                ("PEs", self.pes), ("max pulses / cell", self.max_pulses), ("run folder", self.folder))
        for i, (name, w) in enumerate(rows):
            o.addWidget(QLabel(name), i // 2, 2 * (i % 2), alignment=Qt.AlignRight)
            o.addWidget(w, i // 2, 2 * (i % 2) + 1)
        self.policy_note = muted("")
        o.addWidget(self.policy_note, len(rows) // 2 + 1, 0, 1, 4)

        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.eta = QLabel("idle")
        self.eta.setWordWrap(True)
        self.eta.setStyleSheet("font-family: monospace;")
        self.message = muted("")
        run = QGroupBox("Run")
        rl = QVBoxLayout(run)
        bl = QHBoxLayout()
        bl.addWidget(self.start_btn)
        bl.addWidget(self.resume_btn)
        bl.addWidget(self.bar, 1)
        rl.addLayout(bl)
        rl.addWidget(self.eta)
        rl.addWidget(self.message)

        self.summary = QTableWidget(0, 2)
        self.summary.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.summary.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.summary.horizontalHeader().setVisible(False)
        self.summary.verticalHeader().setVisible(False)
        self.summary.verticalHeader().setDefaultSectionSize(22)
        self.summary.setMinimumHeight(8 * 22 + 6)
        self.summary.setEditTriggers(QTableWidget.NoEditTriggers)
        summ = QGroupBox("Summary")
        QVBoxLayout(summ).addWidget(self.summary)

        self.cdf_plot = plot_widget("Cumulative distribution per level (live)", ("G", "µS"),
                                    ("fraction of the level's cells", ""))
        self.cdf_plot.setYRange(0, 1.02)
        self.hist_plot = plot_widget("Pulses per finished cell (live)", ("pulses", ""), ("cells", ""))
        self.hist_curve = self.hist_plot.plot([0, 1], [0], stepMode="center", fillLevel=0,
                                              brush=pg.mkBrush(74, 163, 255, 150), pen=pg.mkPen(theme.ACCENT))
        self.cdf_curves: list = []

        left = QVBoxLayout()
        left.addWidget(tgt)
        left.addWidget(opts)
        left.addWidget(run)
        left.addWidget(summ, 1)
        right = QVBoxLayout()
        right.addWidget(self.cdf_plot, 3)
        right.addWidget(self.hist_plot, 2)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 2)
        lay.addLayout(right, 3)

        self.plan: Optional[ProgramPlan] = None
        self.report = None
        self._history = None
        self.out: Optional[Path] = None
        self._t0 = 0.0
        self._inv: Optional[np.ndarray] = None
        self._writer = None            # RunWriter of the running (or last) job
        self._seen = 0
        self.s.connection_changed.connect(self._enable)
        self.s.busy_changed.connect(lambda _: self._enable())
        self._enable()

    def _browse(self, edit: QLineEdit, filt: str, radio: QRadioButton) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open", edit.text() or ".", filt)
        if path:
            edit.setText(path)
            radio.setChecked(True)

    def _enable(self) -> None:
        notes = policy_within(self.s.xbar.limits)[1] if self.s.connected else []
        self.policy_note.setText("Write-verify defaults capped at this station's limits: " + "; ".join(notes)
                                 if notes else "")
        self.policy_note.setVisible(bool(notes))
        ok = self.s.connected and not self.s.busy
        self.start_btn.setEnabled(ok)
        self.resume_btn.setEnabled(ok)
        self.start_btn.setToolTip("" if ok else ("Connect a station first" if not self.s.connected
                                                 else "A job is running"))

    # ---- plan --------------------------------------------------------------------------------
    def config(self) -> ProgramConfig:
        """The ProgramConfig of the current settings (ConfigError says what is wrong)."""
        if self.src_pattern.isChecked():
            source, target = self.pattern.currentText(), None
        else:
            source = "weights" if self.src_weights.isChecked() else "snapshot"
            target = (self.weights_edit if self.src_weights.isChecked() else self.snapshot_edit).text().strip()
        return ProgramConfig(source=source, target_file=target, levels=self.n_levels.value(),
                             g_min_s=self.g_min.value() / US_PER_S, g_max_s=self.g_max.value() / US_PER_S,
                             pes=tuple(parse_pes(self.pes.text(), self.s.geometry.n_pe)), seed=self.seed.value(),
                             max_pulses=self.max_pulses.value())

    def build_plan(self) -> ProgramPlan:
        """The plan of the current settings (ConfigError / DataError say what is wrong)."""
        return plan_for(self.config(), self.s.geometry)

    # ---- run ---------------------------------------------------------------------------------
    def start(self) -> bool:
        if not self.s.connected:
            self.s.error.emit("No station", "Connect a station on the Station tab first.")
            return False
        try:
            cfg = self.config()
            plan = plan_for(cfg, self.s.geometry)
            cfg.policy(self.s.xbar.limits).validate(self.s.xbar.limits)
            out = unique_path(Path(self.folder.text().strip() or "runs"), "program")
        except Exception as e:
            self.s.error.emit(*describe_error(e))
            return False
        return self._run(cfg, plan, out, resume=False)

    def _pick_resume(self) -> None:
        start = str(self.out) if self.out is not None else (self.folder.text() or "runs")
        path, _ = QFileDialog.getOpenFileName(self, "Resume a programming run", start,
                                              "Run records (*.h5 *.journal)")
        if path:
            self.resume(Path(path.removesuffix(".journal")))

    def resume(self, path) -> bool:
        """Continue an interrupted programming run with the config and plan it holds: cells it
        finished are not touched again."""
        if not self.s.connected:
            self.s.error.emit("No station", "Connect a station on the Station tab first.")
            return False
        try:
            path = Path(path)
            content = resumable_content(path, "programming", "programming run")
            cfg = stored_program_config(content, where=path.name)
            plan = plan_from_content(content, where=path.name)
            if plan.flat.size and plan.flat.max() >= self.s.geometry.n_cells:
                raise ConfigError(f"{path.name} addresses cells this station does not have")
            cfg.policy(self.s.xbar.limits).validate(self.s.xbar.limits)
        except Exception as e:
            self.s.error.emit(*describe_error(e))
            return False
        return self._run(cfg, plan, path, resume=True)

    def _run(self, cfg: ProgramConfig, plan: ProgramPlan, out: Path, *,
             resume: bool) -> bool:
        xbar, snapshot = self.s.xbar, station_snapshot(self.s)

        self._writer = None

        def job(ctx):
            with run_record(out, "programming", station=snapshot, resume=resume) as writer:
                self._writer = writer                  # its cells table fills the Summary after an abort

                def progress(p):
                    ctx.progress(p)
                    if ctx.want_partial(force=p.done >= p.total):
                        t = writer.content.tables.get(CELLS)
                        if t:
                            ctx.partial((t["cell"].copy(), t["final_g_s"].copy(), t["pulses"].copy()))
                report = program(xbar, writer, cfg, plan=plan, resume=resume, progress=progress, cancel=ctx.cancel)
                after = writer.content.datasets["snapshots/after_programming"][0]
            return report, after, RunHistory(out, writer.content)

        self._prepare(plan, out)
        return self.s.start_job("write-verify", job, on_result=self._done, on_progress=self._progress,
                                on_partial=self._partial, on_end=self._end, needs_station=True)

    def _prepare(self, plan: ProgramPlan, out: Path) -> None:
        self.plan, self.out, self.report, self._history = plan, out, None, None
        self._t0 = time.monotonic()
        self._seen = 0
        self._inv = np.full(self.s.geometry.n_cells, -1, np.int64)
        self._inv[plan.flat] = np.arange(plan.flat.size)
        self.bar.setValue(0)
        self.eta.setText(f"0 / {plan.flat.size:,} cells")
        self.message.setText(f"recording to {out}")
        self.summary.setRowCount(0)
        levels = np.unique(plan.level_index)
        self._level_ids = levels
        self._level_count = np.bincount(np.searchsorted(levels, plan.level_index), minlength=levels.size)
        if len(self.cdf_curves) == levels.size:            # reuse the curves (cheaper than rebuilding)
            for c in self.cdf_curves:
                c.setData([], [])
        else:
            self.cdf_plot.clear()
            cols = theme.level_colors(levels.size)
            self.cdf_curves = [self.cdf_plot.plot([], [], pen=pg.mkPen(c, width=1.6)) for c in cols]
        lo, hi = plan.targets_s.min() * US_PER_S, plan.targets_s.max() * US_PER_S
        pad = max(0.5, 0.05 * (hi - lo))
        self.cdf_plot.setXRange(lo - pad, hi + pad)
        self.hist_curve.setData([0, 1], [0])

    def _progress(self, p) -> None:
        self.bar.setValue(int(1000 * p.fraction))
        el = time.monotonic() - self._t0
        self.eta.setText(f"{int(p.done):,} / {int(p.total):,} cells · {_fmt_s(el)} elapsed · {eta_text(p, el)}")
        if p.message:
            self.message.setText(p.message)

    def _partial(self, data) -> None:
        cell, g, pulses = data
        if self._inv is None:
            return
        new = slice(self._seen, cell.size)
        self.s.set_map_values(cell[new], g[new])
        self._seen = cell.size
        pos = self._inv[cell]
        li = np.searchsorted(self._level_ids, self.plan.level_index[pos])
        order = np.lexsort((g, li))
        g_sorted, li_sorted = g[order] * US_PER_S, li[order]
        starts = np.searchsorted(li_sorted, np.arange(self._level_ids.size + 1))
        for k, curve in enumerate(self.cdf_curves):
            a, b = starts[k], starts[k + 1]
            y = np.arange(1, b - a + 1) / max(1, self._level_count[k])
            curve.setData(g_sorted[a:b], y)
        counts = np.bincount(pulses)
        self.hist_curve.setData(np.arange(counts.size + 1) - 0.5, counts)

    def _done(self, result) -> None:
        report, after, self._history = result
        self.report = report
        self.s.set_map(after)
        self._fill_summary(report.summary())

    def _fill_summary(self, s: dict, finished_of: Optional[int] = None) -> None:
        done = f"{s['cells']:,}" + ("" if finished_of is None else f" finished of {finished_of:,} (aborted)")
        rows = (("cells", done), ("in band", f"{100 * s['in_band_fraction']:.2f} %"),
                ("write errors", f"{s['write_errors']} ({s['unresponsive']} unresponsive, "
                                 f"{s['max_pulses_errors']} at max pulses)"),
                ("pulses / cell", f"mean {s['mean_pulses']:.1f} · median {s['median_pulses']:.0f} · "
                                  f"max {s['max_pulses']}"),
                ("iterations", str(s.get("iterations", "—"))), ("wall time", _fmt_s(s["seconds"])),
                ("time at the station", _fmt_s(s["backend_seconds"]) if s["backend_seconds"] else "—"),
                ("run record", str(self.out)))
        self._set_rows(rows)

    def _set_rows(self, rows) -> None:
        self.summary.setRowCount(len(rows))
        for i, (k, v) in enumerate(rows):
            self.summary.setItem(i, 0, QTableWidgetItem(k))
            self.summary.setItem(i, 1, QTableWidgetItem(v))

    def _summary_of_finished(self) -> None:
        """After an abort: the Summary of the cells finished before it (from the record's cells
        table); the chip model learns that they were written."""
        t = self._writer.content.tables.get(CELLS) if self._writer is not None else None
        if self.plan is None:
            return
        if not t:
            self._set_rows((("cells", f"0 finished of {self.plan.flat.size:,} (aborted)"), ("run record", str(self.out))))
            return
        pos = self._inv[t["cell"]]
        rep = ProgramReport(self.plan.targets_s[pos], t["final_g_s"], t["pulses"], t["status"],
                            wall_seconds=time.monotonic() - self._t0)
        self._fill_summary(rep.summary(), finished_of=self.plan.flat.size)
        p = self.plan
        part = ProgramPlan(p.flat[pos], p.level_index[pos], p.targets_s[pos], p.tolerance_s)
        self.s.chip.add_write("programming", part.flat, record=self.out, plan=part,
                              history=RunHistory(self.out, self._writer.content),
                              label=f"programming run {self.out.name} (aborted)")

    def _end(self, outcome: str) -> None:
        if self.out is None or not self.out.exists():
            return
        if outcome == "done":
            self.message.setText(f"finished — record {self.out}")
            self.s.set_plan(self.plan, self.out, self._history)
        elif outcome == "cancelled":
            self.message.setText(f"aborted — finished cells are kept in {self.out}; continue with "
                                 f"'Resume a run…' or `hil program --resume {self.out}`")
            self.eta.setText(self.eta.text().split(" · ETA")[0].split(" · finishing")[0] + " · aborted")
            self._summary_of_finished()
        self.s.set_run(self.out, self._history)


def eta_text(p, elapsed_s: float) -> str:
    """'ETA 1:20 min' from progress `p` after `elapsed_s`; 'ETA —' before the first unit, never 'ETA 0'."""
    if p.done >= p.total:
        return "finishing…"
    return "ETA —" if p.done <= 0 else f"ETA {_fmt_s(elapsed_s * (p.total - p.done) / p.done)}"


def _fmt_s(t: float) -> str:
    t = float(t)
    if t <= 0:
        return "0 s"
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs" if t >= 0.5e-6 else "< 1 µs"
    if t < 1:
        return f"{t * 1e3:.0f} ms"
    if t < 120:
        return f"{t:.1f} s"
    m, s = divmod(int(round(t)), 60)
    return f"{m}:{s:02d} min" if m < 60 else f"{m // 60}:{m % 60:02d} h"
