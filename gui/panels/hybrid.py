"""Hybrid-training tab: after weight transfer, train the FC layer in situ (`hil.yao2020.hybrid`).

The convolver outputs of the training subset and of the test images are measured once on the
chip (with progress), then the epochs run with live accuracy and loss; per-group test accuracy
bars before and after, and the final table beside the paper's numbers (`hil.yao2020.demo.PAPER`).
Every run is recorded (kind "mcnn": model, plan, `hybrid/epochs`) like `hil hybrid`."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from hil.runstore.lifecycle import run_record
from hil.stats import accuracy_interval
from hil.yao2020.hybrid import HybridConfig
from hil.yao2020.stages import train_accuracy

from .. import theme
from ..session import Session, describe_error
from ..widgets import accuracy_text, muted, plot_widget
from .network import _table, cnn_state, fill_table, int_ticks
from .programming import _fmt_s, station_snapshot, unique_path

log = logging.getLogger(__name__)
BAR_BEFORE = "#6b7480"
BAR_AFTER = theme.ACCENT
NO_NETWORK = "Transfer the network on the Network tab first."


def _pct(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.2f} %"


class HybridPanel(QWidget):
    title = "Hybrid training"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.cnn = cnn_state(session)

        self.fraction = QDoubleSpinBox()
        self.fraction.setRange(0.005, 1.0)
        self.fraction.setDecimals(3)
        self.fraction.setSingleStep(0.05)
        self.fraction.setValue(HybridConfig.fraction)
        self.fraction.setToolTip("fraction of the training digits run through the chip's convolvers")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        self.epochs.setValue(HybridConfig.epochs)
        self.lr = QDoubleSpinBox()
        self.lr.setRange(0.005, 5.0)
        self.lr.setDecimals(3)
        self.lr.setSingleStep(0.01)
        self.lr.setValue(HybridConfig.lr_levels)
        self.lr.setSuffix(" levels")
        self.lr.setToolTip("normalized gradient step per mini-batch, in weight levels")
        self.test_images = QSpinBox()
        self.test_images.setRange(10, 100_000)
        self.test_images.setValue(1000)
        self.test_images.setSingleStep(100)
        self.mode = QComboBox()
        self.seed = QSpinBox()
        self.seed.setRange(0, 2 ** 31 - 1)
        self.reset_fc = QCheckBox("reset the FC layer to the ex-situ weights first")
        self.folder = QLineEdit("runs")
        self.start_btn = QPushButton("▶  Start hybrid training")
        self.start_btn.setProperty("primary", "true")
        self.start_btn.clicked.connect(lambda: self.start())
        self.stop_btn = QPushButton("■  Stop")
        self.stop_btn.setToolTip("Abort: stops at the next mini-batch; finished epochs stay in the record")
        self.stop_btn.clicked.connect(lambda: self.s.abort("hybrid training stopped by the user"))
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.phase = QLabel("idle")
        self.phase.setWordWrap(True)
        self.phase.setStyleSheet("font-family: monospace;")
        self.message = muted("")

        sg = QGroupBox("Settings")
        g = QGridLayout(sg)
        rows = (("training fraction", self.fraction), ("epochs", self.epochs), ("step (lr)", self.lr),
                ("test images", self.test_images), ("convolvers", self.mode), ("seed", self.seed))
        for i, (name, w) in enumerate(rows):
            g.addWidget(QLabel(name), i // 2, 2 * (i % 2), alignment=Qt.AlignRight)
            g.addWidget(w, i // 2, 2 * (i % 2) + 1)
        g.addWidget(self.reset_fc, 3, 0, 1, 4)
        g.addWidget(QLabel("run folder"), 4, 0, alignment=Qt.AlignRight)
        g.addWidget(self.folder, 4, 1, 1, 3)
        rg = QGroupBox("Run")
        rl = QVBoxLayout(rg)
        b = QHBoxLayout()
        b.addWidget(self.start_btn, 2)
        b.addWidget(self.stop_btn, 1)
        rl.addLayout(b)
        rl.addWidget(self.bar)
        rl.addWidget(self.phase)
        rl.addWidget(self.message)
        self.table = _table(4, ["", "test accuracy\n[95% Wilson]", "test\nimages", "Yao 2020"], 10)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        for col in (1, 2, 3):
            self.table.horizontalHeader().setSectionResizeMode(col, QHeaderView.ResizeToContents)
        tg = QGroupBox("Result beside the paper")
        QVBoxLayout(tg).addWidget(self.table)

        self.acc_plot = plot_widget("Accuracy per epoch (live)", ("epoch", ""), ("accuracy", "%"), legend=True)
        self.curve_test = self.acc_plot.plot([], [], pen=pg.mkPen(theme.CURVE_COLORS[0], width=2), symbol="o",
                                             symbolSize=7, symbolBrush=theme.CURVE_COLORS[0], name="test")
        self.curve_train = self.acc_plot.plot([], [], pen=pg.mkPen(theme.CURVE_COLORS[1], width=2), symbol="o",
                                              symbolSize=7, symbolBrush=theme.CURVE_COLORS[1],
                                              name="training subset")
        self.loss_plot = plot_widget("Training loss per epoch (live)", ("epoch", ""), ("cross-entropy", ""))
        self.loss_plot.getAxis("left").enableAutoSIPrefix(False)
        self.curve_loss = self.loss_plot.plot([], [], pen=pg.mkPen(theme.CURVE_COLORS[2], width=2), symbol="o",
                                              symbolSize=7, symbolBrush=theme.CURVE_COLORS[2])
        self.bar_plot = plot_widget(
            f"Test accuracy per group (95% Wilson): <span style='color:{BAR_BEFORE}'>■</span> transfer "
            f"<span style='color:{BAR_AFTER}'>■</span> hybrid", ("", ""), ("accuracy", "%"))
        self.bars_before = pg.BarGraphItem(x=[], height=[], width=0.36, brush=BAR_BEFORE, pen=pg.mkPen(None))
        self.bars_after = pg.BarGraphItem(x=[], height=[], width=0.36, brush=BAR_AFTER, pen=pg.mkPen(None))
        self.bar_plot.addItem(self.bars_before)
        self.bar_plot.addItem(self.bars_after)
        self.error_bars = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), pen=pg.mkPen(theme.TEXT, width=1.2), beam=0.12)
        self.bar_plot.addItem(self.error_bars)
        self.bar_labels: list[pg.TextItem] = []

        left = QVBoxLayout()
        left.addWidget(sg)
        left.addWidget(rg)
        left.addWidget(tg, 1)
        plots = QGridLayout()
        plots.addWidget(self.acc_plot, 0, 0, 1, 2)
        plots.addWidget(self.loss_plot, 1, 0)
        plots.addWidget(self.bar_plot, 1, 1)
        plots.setRowStretch(0, 3)
        plots.setRowStretch(1, 2)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 5)
        lay.addLayout(plots, 7)

        self.history: list[dict] = []
        self.software_acc: Optional[float] = None
        self.n_software = 0                  # test digits the software accuracy is measured on
        self.groups_used: list[int] = []
        self.train_sizes: dict = {}          # group (1-based) -> training digits it measured
        self.n_groups = 0
        self.n_test = 0                      # test digits each group's accuracy is measured on
        self.out: Optional[Path] = None
        self._t0 = 0.0
        self.cnn.changed.connect(self._cnn_changed)
        self.s.busy_changed.connect(lambda _: self._enable())
        self.s.connection_changed.connect(self._enable)
        self._cnn_changed()

    # ---- state ------------------------------------------------------------------------------
    def _cnn_changed(self) -> None:
        n = self.cnn.plan.groups if self.cnn.plan is not None else 1
        cur = self.mode.currentIndex()
        self.mode.clear()
        self.mode.addItems([f"G1–G{n} (dispatched)" if n > 1 else "G1"] +
                           ([f"G{g + 1} only" for g in range(n)] if n > 1 else []))
        self.mode.setCurrentIndex(max(0, min(cur, self.mode.count() - 1)))
        self._enable()

    def _enable(self) -> None:
        why = ("A job is running" if self.s.busy else
               "Transfer the network on the Network tab first" if self.cnn.hw is None else "")
        self.start_btn.setEnabled(not why)
        self.start_btn.setToolTip(why)
        running = self.s.busy and self.s.job is not None and self.s.job.name == "hybrid training"
        self.stop_btn.setEnabled(running)
        if self.s.busy or self.history:
            return
        if self.cnn.hw is None:
            self.phase.setText(NO_NETWORK)
        elif self.phase.text() in (NO_NETWORK, "idle"):
            self.phase.setText(f"ready: the network is on the chip ({self.cnn.plan.groups} convolver group(s))")

    def selected_groups(self) -> list[int]:
        n = self.cnn.plan.groups if self.cnn.plan is not None else 1
        k = self.mode.currentIndex()
        if n == 1 or k <= 0:
            return list(range(n))
        return [k - 1]

    # ---- job --------------------------------------------------------------------------------
    def start(self) -> bool:
        """The hybrid stage in a worker: into the transfer's record while it holds no hybrid
        training yet (as `hil hybrid --run`), else into a new record of the same network."""
        from hil.yao2020 import stages
        from hil.runstore import read_content
        c = self.cnn
        if c.hw is None or c.dataset is None:
            self.s.error.emit("No network on the chip", "Train or load a model and transfer it on the Network "
                                                        "tab first.")
            return False
        hw, ds, plan, xbar = c.hw, c.dataset, c.plan, self.s.xbar
        groups = self.selected_groups()
        try:
            cfg = stages.HybridStageConfig(
                hybrid=HybridConfig(fraction=self.fraction.value(), epochs=self.epochs.value(),
                                    lr_levels=self.lr.value(), seed=self.seed.value()),
                data=c.data_config, groups=() if len(groups) == plan.groups else tuple(g + 1 for g in groups),
                test_images=min(self.test_images.value(), ds.n_test), reset_fc=self.reset_fc.isChecked())
            content = read_content(c.record)
            cont = "stage_config" not in stages.group_attrs(content, "hybrid") and \
                content.attrs.get("/", {}).get("status") != "complete"
            if cont:
                stages.check_hybrid(xbar, content, cfg)
            out = c.record if cont else unique_path(Path(self.folder.text().strip() or "runs"), "hybrid")
        except Exception as e:
            self.s.error.emit(*describe_error(e))
            return False
        snapshot = station_snapshot(self.s)
        n_sub = len(ds.subset(cfg.hybrid.fraction, cfg.hybrid.seed).x_train)
        which = hw.dispatch(n_sub, groups)
        self.train_sizes = {g + 1: int(np.sum(which == g)) for g in groups}

        def job(ctx):
            with run_record(out, stages.KIND, station=snapshot, resume=cont,
                            meta=None if cont else {"seed": cfg.hybrid.seed}, done=stages.STAGE_DONE["hybrid"]) as w:
                if not cont:
                    stages.carry_network(w, content)
                return stages.hybrid(xbar, w, cfg, ctx.progress, ctx.cancel, ds,
                                     on_epoch=lambda row: ctx.partial(dict(row))).history

        self.history, self.groups_used, self.n_groups = [], groups, plan.groups
        self.n_test = cfg.test_images
        self.software_acc, self.n_software = c.software_acc, ds.n_test
        self.out = out
        self._t0 = time.monotonic()
        self.bar.setValue(0)
        self.phase.setText("measuring the convolver outputs…")
        self.message.setText(f"convolver outputs measured once: {n_sub:,} training digits, {cfg.test_images:,} test "
                             f"digits × {plan.groups} group(s); recording to {out}")
        for curve in (self.curve_test, self.curve_train, self.curve_loss):
            curve.setData([], [])
        self._draw_bars()
        self.table.setRowCount(0)
        return self.s.start_job("hybrid training", job, on_result=self._done, on_progress=self._progress,
                                on_partial=self._partial, on_end=self._end, needs_station=True)

    def _progress(self, p) -> None:
        self.bar.setValue(int(1000 * p.fraction))
        el = time.monotonic() - self._t0
        self.phase.setText(f"{p.message or ''} · {int(p.done):,}/{int(p.total):,} {p.unit} · {_fmt_s(el)}")

    def _partial(self, row) -> None:
        self.history.append(row)
        self._draw()

    def _draw(self) -> None:
        h = self.history
        ep = np.array([r["epoch"] for r in h], float)
        self.curve_test.setData(ep, [100 * r["acc_test"] for r in h])
        self.curve_train.setData(ep, [100 * train_accuracy(r, self.train_sizes) for r in h])
        for plot in (self.acc_plot, self.loss_plot):
            int_ticks(plot, len(h))
        trained = [r for r in h if np.isfinite(r["loss"])]
        self.curve_loss.setData([r["epoch"] for r in trained], [r["loss"] for r in trained])
        self._draw_bars()
        self._fill_table()

    def group_accuracy(self) -> tuple[list, list]:
        """Per-group test accuracy after transfer (epoch 0) and after the latest epoch."""
        if not self.history:
            return [], []
        first, last = self.history[0], self.history[-1]
        gs = range(self.n_groups)
        return [first[f"acc_g{g + 1}"] for g in gs], [last[f"acc_g{g + 1}"] for g in gs]

    def _draw_bars(self) -> None:
        before, after = self.group_accuracy()
        for t in self.bar_labels:
            self.bar_plot.removeItem(t)
        self.bar_labels = []
        x = np.arange(len(before), dtype=float)
        trained = len(self.history) > 1
        self.bars_before.setOpts(x=x - 0.19, height=100 * np.array(before, float), width=0.36)
        if trained:
            self.bars_after.setOpts(x=x + 0.19, height=100 * np.array(after, float), width=0.36)
        else:
            self.bars_after.setOpts(x=[], height=[], width=0.36)
        self.bar_plot.getAxis("bottom").setTicks([[(i, f"G{i + 1}") for i in range(len(before))]])
        vals = list(before) + (list(after) if trained else [])
        xs = list(x - 0.19) + (list(x + 0.19) if trained else [])
        ivs = [accuracy_interval(v, self.n_test) for v in vals] if self.n_test else []
        self.error_bars.setData(x=np.array(xs if ivs else [], float), y=np.array([100 * v for v in vals] if ivs else []),
                                top=np.array([100 * (i.hi - i.value) for i in ivs]),
                                bottom=np.array([100 * (i.value - i.lo) for i in ivs]))
        for xi, v, top in zip(xs, vals, [i.hi for i in ivs] or vals):
            t = pg.TextItem(f"{100 * v:.1f}", color=theme.TEXT, anchor=(0.5, 1.0))
            t.setPos(xi, 100 * top)
            self.bar_plot.addItem(t)
            self.bar_labels.append(t)
        if vals:                          # from 0: bar heights compare honestly
            self.bar_plot.setYRange(0, 112, padding=0)
            self.bar_plot.setXRange(-0.6, len(before) - 0.4, padding=0)

    def _fill_table(self) -> None:
        from hil.yao2020.demo import PAPER
        h = self.history
        if not h:
            self.table.setRowCount(0)
            return
        single = len(self.groups_used) == 1
        where = f"G{self.groups_used[0] + 1}" if single else "parallel"
        n = len(h) - 1
        nt, ns = f"{self.n_test:,}", f"{self.n_software:,}"
        rows = [("software (quantized)", accuracy_text(self.software_acc, self.n_software), ns,
                 _pct(PAPER["software_acc"])),
                (f"transfer, {where}", accuracy_text(h[0]["acc_test"], self.n_test), nt,
                 _pct(PAPER["transfer_acc"]) if single else "—"),
                (f"hybrid ({n} ep.), {where}", accuracy_text(h[-1]["acc_test"] if n else None, self.n_test), nt,
                 _pct(PAPER["hybrid_acc"] if single else PAPER["parallel_acc"]))]
        before, after = self.group_accuracy()
        pt, ph = PAPER["group_train_err_transfer"], PAPER["group_train_err_hybrid"]
        for g in range(self.n_groups):
            rows.append((f"G{g + 1} transfer", accuracy_text(before[g], self.n_test), nt,
                         f"train {_pct(1 - pt[g])}" if g < len(pt) else "—"))
            rows.append((f"G{g + 1} hybrid", accuracy_text(after[g] if n else None, self.n_test), nt,
                         f"train {_pct(1 - ph[g])}" if g < len(ph) else "—"))
        rows.append(("in-situ pulses / updates", f"{h[-1]['pulses']:,} / {h[-1]['updates']:,}", "", "—"))
        fill_table(self.table, rows)

    def _done(self, hist) -> None:
        self.history = list(hist)
        self._draw()

    def _end(self, outcome: str) -> None:
        done = max(0, len(self.history) - 1)
        if outcome == "done":
            last = self.history[-1] if self.history else {}
            self.phase.setText(f"finished {done} epoch(s) in {_fmt_s(time.monotonic() - self._t0)} · test "
                               f"{accuracy_text(last.get('acc_test'), self.n_test)} on {self.n_test:,} images")
            self.message.setText(f"record {self.out}")
        elif outcome == "cancelled":
            self.phase.setText(f"stopped after {done} epoch(s)")
            self.message.setText(f"stopped — the finished epochs are in {self.out}; the FC weights on the chip "
                                 f"are as trained so far")
        else:
            self.phase.setText("failed")
        self._enable()
