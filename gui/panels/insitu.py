"""In-situ training tab (Wang 2019): yield scan of one 128 × 64 PE, then in-situ training of the
CNN or the ConvLSTM on its good lines (`hil.wang2019.stages`), watched live: the yield map, the
conductance map of the PE (µS), the gate-voltage histogram, loss and test accuracy per batch (per
time step for the ConvLSTM) and a status line (batch, pulses, ETA). Abort stops at the next batch
(the record ends "stopped"); Resume continues that record at the next batch. Records (kind
"wang2019") are made as `hil wang yield` and `hil wang train` make them."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFrame, QGridLayout, QGroupBox, QHBoxLayout,
                               QLabel, QLineEdit, QProgressBar, QPushButton, QScrollArea, QSpinBox,
                               QVBoxLayout, QWidget)

from hil import options as opt
from hil.errors import ConfigError
from hil.geometry import WANG
from hil.runstore import read_content
from hil.runstore.lifecycle import run_record
from hil.wang2019 import stages
from hil.wang2019.demo import PAPER

from .. import theme
from ..session import Session, describe_error
from ..widgets import accuracy_text, muted, plot_widget
from .programming import _fmt_s, station_snapshot, unique_path

US_PER_S = 1e6
#: jobs of this panel (the Abort button and the status line follow them)
JOBS = ("yield scan", "in-situ training")
#: columns of the stage's `insitu/<net>/checkpoint` rows (one per weight): conductances (S) of
#: g+ copy 1, g+ copy 2, g- copy 1, g- copy 2, then the gate voltages (V) in the same order
CKPT_G, CKPT_VG = slice(0, 4), slice(4, 8)
VG_BIN_V = 0.05
#: yield-map colours: passing cell on good lines, failing cell on good lines, cell of a bad line
YIELD_COLORS = {"good": "#3ecf8e", "stuck": theme.WARN, "bad": "#8a3a40"}
NET_NAMES = {"cnn": "CNN", "convlstm": "ConvLSTM"}


def _rgb(color: str) -> np.ndarray:
    return np.array(pg.mkColor(color).getRgb()[:3], np.uint8)


def yield_image(ymap) -> np.ndarray:
    """(rows, cols, 3) RGB picture of a YieldMap: bad rows and columns dark red over the array,
    on the good crossings a passing cell green and a failing one amber."""
    on_good = ymap.rows[:, None] & ymap.cols[None, :]
    img = np.empty(ymap.passed.shape + (3,), np.uint8)
    img[:] = _rgb(YIELD_COLORS["bad"])
    img[on_good & ymap.passed] = _rgb(YIELD_COLORS["good"])
    img[on_good & ~ymap.passed] = _rgb(YIELD_COLORS["stuck"])
    return img


def _legend(items) -> str:
    return "  ".join(f"<span style='color:{c}'>■</span> {t}" for t, c in items)


class _Live:
    """What a running training hands the UI: its new batch rows, the latest checkpoint rows and the
    cells of every weight (rows, cols, each (weights, 4) in checkpoint column order), read from the
    record being written. Filled in the worker, taken on the UI thread."""

    def __init__(self, net: str) -> None:
        self.net = net
        self.rows: list = []
        self.ckpt: Optional[np.ndarray] = None
        self.cells: Optional[tuple] = None
        self.started = False               # the config passed its checks: the record holds this training
        self.n_test = 0                    # test samples each accuracy is measured on
        self._lock = threading.Lock()

    def add(self, row: dict, content) -> None:
        prefix = f"insitu/{self.net}"
        with self._lock:
            if self.cells is None:
                names = [n for n, _ in stages.make_net(self.net).weight_specs()]
                self.cells = tuple(np.concatenate([content.datasets[f"{prefix}/placement/{n}/{k}"][0].reshape(-1, 4)
                                                   for n in names]) for k in ("rows", "cols"))
            self.rows.append(dict(row))
            self.ckpt = content.datasets[f"{prefix}/checkpoint"][0]

    def take(self) -> dict:
        with self._lock:
            rows, self.rows = self.rows, []
            return {"rows": rows, "ckpt": self.ckpt, "cells": self.cells}


class InsituPanel(QWidget):
    title = "In-situ training"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.reason = QLabel("")
        self.reason.setProperty("reason", "true")
        self.reason.setWordWrap(True)

        self.yield_btn = QPushButton("Yield scan")
        self.yield_btn.setToolTip("RESET, SET at a mid gate, RESET again and a read after each, on every cell; "
                                  "starts a new run record")
        self.yield_btn.clicked.connect(lambda: self.run_yield_scan())
        self.yield_label = muted("No yield map yet: the scan finds the good rows and columns.")

        self.net = QComboBox()
        for key in stages.NETS:
            self.net.addItem(f"{NET_NAMES[key]} — {stages.make_net(key).n_weights:,} weights", key)
        self.net.currentIndexChanged.connect(lambda _: self._net_changed())
        self.epochs = QSpinBox()
        self.epochs.setRange(0, opt.MAX_TRAIN_EPOCHS)
        self.epochs.setSpecialValueText("paper")
        self.epochs.setToolTip("0 = the paper's: CNN as many as give 1,200 updates, ConvLSTM 2")
        self.batch = QSpinBox()
        self.batch.setRange(0, 100_000)
        self.batch.setSpecialValueText("paper")
        self.batch.setToolTip("mini-batch size; 0 = the paper's (CNN 100, ConvLSTM 50)")
        self.train_samples = QSpinBox()
        self.train_samples.setRange(0, 10_000_000)
        self.train_samples.setSpecialValueText("all")
        self.train_samples.setToolTip("train on the first N training samples only; 0 = all")
        self.test_samples = QSpinBox()
        self.test_samples.setRange(0, 10_000_000)
        self.test_samples.setSpecialValueText("all")
        self.test_samples.setToolTip("evaluate on the first N test samples only; 0 = all")
        self.eval_every = QSpinBox()
        self.eval_every.setRange(1, 10_000_000)
        self.eval_every.setValue(20)
        self.eval_every.setSuffix(" batches")
        self.eval_every.setToolTip("batches between test evaluations on the array (and after the last)")
        self.data_seed = QDoubleSpinBox()            # holds every 32-bit seed exactly, as the CLI takes
        self.data_seed.setDecimals(0)
        self.data_seed.setRange(0, opt.MAX_SEED)
        self.data_seed.setToolTip(f"seed of the train/test split and of the sequences, 0..{opt.MAX_SEED}")
        self.data = QLineEdit()
        self.data.setPlaceholderText("embedded 8×8 digits")
        self.data.setToolTip("a folder of MNIST IDX files or an 8×8 .npz data file; empty: the embedded "
                             "5,000 digits (4,000 train / 1,000 test)")
        self.folder = QLineEdit("runs")

        self.start_btn = QPushButton("▶  Start")
        self.start_btn.setProperty("primary", "true")
        self.start_btn.clicked.connect(lambda: self.start())
        self.stop_btn = QPushButton("■  Abort")
        self.stop_btn.setToolTip("Stop at the next batch (Esc); the finished batches stay in the record")
        self.stop_btn.clicked.connect(lambda: self.s.abort("in-situ training stopped by the user"))
        self.resume_btn = QPushButton("⟳  Resume")
        self.resume_btn.setToolTip("Continue the stopped training in its record at the next batch")
        self.resume_btn.clicked.connect(lambda: self.resume())
        self.start_why = QLabel("")         # why Start is refused after the scan (misfit, already trained)
        self.start_why.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.status = QLabel("idle")
        self.status.setStyleSheet("font-family: monospace;")
        self.status.setWordWrap(True)
        self.message = muted("")

        yg = QGroupBox("Array")
        yl = QVBoxLayout(yg)
        yl.addWidget(self.reason)
        yl.addWidget(self.yield_btn)
        yl.addWidget(self.yield_label)
        tg = QGroupBox("Training")
        g = QGridLayout(tg)
        for i, (name, w) in enumerate((("network", self.net), ("epochs", self.epochs), ("batch", self.batch),
                                       ("train samples", self.train_samples), ("test samples", self.test_samples),
                                       ("test every", self.eval_every), ("data seed", self.data_seed),
                                       ("data", self.data), ("run folder", self.folder))):
            g.addWidget(QLabel(name), i, 0, alignment=Qt.AlignRight)
            g.addWidget(w, i, 1)
        g.setColumnStretch(1, 1)
        rg = QGroupBox("Run")
        rl = QVBoxLayout(rg)
        b = QHBoxLayout()
        b.addWidget(self.start_btn, 2)
        b.addWidget(self.stop_btn, 1)
        b.addWidget(self.resume_btn, 1)
        rl.addLayout(b)
        rl.addWidget(self.start_why)
        rl.addWidget(self.bar)
        rl.addWidget(self.status)
        rl.addWidget(self.message)
        controls = QWidget()
        cl = QVBoxLayout(controls)
        cl.setContentsMargins(0, 0, 4, 0)
        for w in (yg, tg, rg):
            cl.addWidget(w)
        cl.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(controls)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(controls.sizeHint().width() + 16)

        # the two maps of the PE side by side, titles above (Qt labels wrap instead of clipping)
        self.yield_title = self._map_title("Yield map")
        self.g_title = self._map_title("Conductance (µS)")
        self.yield_view, self.yield_vb = self._map_view()
        self.g_view, self.g_vb = self._map_view()
        self.yield_img = pg.ImageItem()
        self.yield_vb.addItem(self.yield_img)
        self.g_img = pg.ImageItem()
        self.g_vb.addItem(self.g_img)
        self.g_bar = pg.ColorBarItem(values=(0, 300), colorMap=pg.colormap.get(theme.MAP_CMAP), label="G (µS)",
                                     interactive=False, width=14)
        self.g_bar.getAxis("right").setTextPen(theme.MUTED)
        self.g_bar.setImageItem(self.g_img)
        self.g_view.addItem(self.g_bar, row=0, col=1)
        yield_legend = muted(_legend([("good", YIELD_COLORS["good"]), ("failed cell", YIELD_COLORS["stuck"]),
                                      ("bad line", YIELD_COLORS["bad"])]))
        maps = QGridLayout()
        maps.addWidget(self.yield_title, 0, 0)
        maps.addWidget(self.g_title, 0, 1)
        maps.addWidget(self.yield_view, 1, 0)
        maps.addWidget(self.g_view, 1, 1)
        maps.addWidget(yield_legend, 2, 0, 1, 2)
        maps.setColumnStretch(0, 4)
        maps.setColumnStretch(1, 5)
        maps.setRowStretch(1, 1)

        self.vg_plot = plot_widget("Gate voltages", ("V_g", "V"), ("cells", ""), min_height=120)
        self.vg_plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.vg_curve = self.vg_plot.plot([], [], stepMode="center", fillLevel=0, pen=pg.mkPen(theme.ACCENT),
                                          brush=pg.mkBrush(74, 163, 255, 110))
        self.loss_plot = plot_widget("Loss per batch", ("batch", ""), ("cross-entropy", "summed"), min_height=120)
        self.loss_plot.getAxis("left").enableAutoSIPrefix(False)
        self.loss_curve = self.loss_plot.plot([], [], pen=pg.mkPen(theme.CURVE_COLORS[2], width=2))
        self.acc_plot = plot_widget("Test accuracy", ("batch", ""), ("accuracy", "%"), min_height=120)
        self.acc_plot.setYRange(0, 100, padding=0.02)
        steps = stages.NETS["convlstm"].IN_SHAPE[0]
        self.acc_curves = [self.acc_plot.plot([], [], pen=pg.mkPen(theme.CURVE_COLORS[t], width=2), symbol="o",
                                              symbolSize=5, symbolBrush=theme.CURVE_COLORS[t]) for t in range(steps)]
        self.paper_line = pg.InfiniteLine(100 * PAPER["cnn_acc"], angle=0,
                                          pen=pg.mkPen(theme.MUTED, width=1, style=Qt.DashLine))
        self.acc_plot.addItem(self.paper_line)
        middle = QVBoxLayout()
        middle.addLayout(maps, 3)
        middle.addWidget(self.vg_plot, 2)
        curves = QVBoxLayout()
        curves.addWidget(self.loss_plot, 1)
        curves.addWidget(self.acc_plot, 1)

        lay = QHBoxLayout(self)
        lay.addWidget(scroll, 0)
        lay.addLayout(middle, 5)
        lay.addLayout(curves, 4)

        self.ymap = None                    # YieldMap of the current record
        self.out: Optional[Path] = None     # current run record
        self.cfg: Optional[stages.InsituConfig] = None      # config of the training shown
        self.trained: set = set()           # networks whose training the record holds
        self.misfit: dict = {}              # network -> why it does not fit the good lines
        self.resumable = False              # the training shown stopped before its last batch
        self.rows: list = []
        self.total, self.resumed_from = 0, 0
        self.g_map_us: Optional[np.ndarray] = None          # (rows, cols) of the PE, µS
        self.vg: Optional[np.ndarray] = None                # gate voltages of every cell (V)
        self.station_why = ""
        self._live: Optional[_Live] = None
        self._t0, self._b0 = 0.0, 0
        self.s.connection_changed.connect(self._station_changed)
        self.s.busy_changed.connect(lambda _: self._enable())
        self._station_changed()

    @staticmethod
    def _map_title(text: str) -> QLabel:
        lab = QLabel(text)
        lab.setWordWrap(True)
        lab.setStyleSheet("font-weight: 600;")
        return lab

    @staticmethod
    def _map_view() -> tuple[pg.GraphicsLayoutWidget, pg.ViewBox]:
        w = pg.GraphicsLayoutWidget()
        w.setBackground(theme.PANEL)
        w.setMinimumSize(120, 200)
        vb = w.addViewBox(row=0, col=0, lockAspect=True, invertY=True, enableMouse=False, enableMenu=False)
        vb.setBorder(pg.mkPen("#3a3f47"))
        return w, vb

    # ---- state ------------------------------------------------------------------------------
    def station_reason(self) -> str:
        """Why this station cannot train the Wang networks ('' when it can), one sentence."""
        s = self.s
        if not s.connected:
            return "Connect a Wang-geometry station (e.g. stations/sim-wang.toml) on the Station tab."
        g = s.geometry
        for name in stages.NETS:
            try:
                stages.check_fits(g, stages.make_net(name))
            except ConfigError:
                return (f"Needs a Wang-geometry station ({WANG.n_pe} PE of {WANG.rows} × {WANG.cols}): this one has "
                        f"{g.n_pe} PE{'s' if g.n_pe > 1 else ''} of {g.rows} × {g.cols} ({g.name}), where the "
                        f"{NET_NAMES[name]} does not fit.")
        return ""

    def _station_changed(self) -> None:
        self.station_why = self.station_reason()
        self.ymap, self.out, self.cfg, self.trained, self.resumable = None, None, None, set(), False
        self.misfit, self.rows, self.total, self.vg = {}, [], 0, None
        g = self.s.geometry if self.s.connected else None
        self.g_map_us = np.full((g.rows, g.cols), np.nan) if g is not None and not self.station_why else None
        self.yield_label.setText("No yield map yet: the scan finds the good rows and columns.")
        self.status.setText("idle")
        self.message.setText("")
        self.bar.setValue(0)
        self._draw_yield()
        self._draw_state()
        self._draw_curves()
        self._enable()

    def selected_net(self) -> str:
        return self.net.currentData()

    def start_refusal(self) -> str:
        """Why Start is refused now ('' when allowed)."""
        if self.station_why:
            return self.station_why
        if self.s.busy:
            return "A job is running"
        if self.ymap is None:
            return "Run the yield scan first: training uses its good lines."
        net = self.selected_net()
        if self.misfit.get(net):
            return self.misfit[net]
        if net in self.trained:
            return (f"This record already holds a {NET_NAMES[net]} training"
                    f"{': Resume it' if self.resumable and self.cfg.net == net else ''}; run a new yield scan "
                    f"for a new record.")
        return ""

    def _net_changed(self) -> None:
        if not self.rows:
            self._draw_curves()
        self._enable()

    def _enable(self) -> None:
        busy = self.s.busy
        self.reason.setText(self.station_why)
        self.reason.setVisible(bool(self.station_why))
        self.yield_btn.setEnabled(not self.station_why and not busy)
        why = self.start_refusal()
        self.start_btn.setEnabled(not why)
        self.start_btn.setToolTip(why)
        after_scan = self.ymap is not None and not busy and not self.station_why
        self.start_why.setText(why if after_scan else "")
        self.start_why.setStyleSheet(f"color: {theme.BAD if self.misfit.get(self.selected_net()) else theme.MUTED};")
        self.start_why.setVisible(bool(why) and after_scan)
        self.resume_btn.setEnabled(not busy and self.resumable)
        self.stop_btn.setEnabled(busy and self.s.job is not None and self.s.job.name in JOBS)

    # ---- yield scan -------------------------------------------------------------------------
    def run_yield_scan(self) -> bool:
        """The yield-scan stage in a worker, into a new run record (as `hil wang yield`)."""
        if self.station_why:
            self.s.error.emit("Not a Wang station", self.station_why)
            return False
        out = unique_path(Path(self.folder.text().strip() or "runs"), "wang")
        xbar, snapshot, seed = self.s.xbar, station_snapshot(self.s), self.s.station_seed
        cfg = stages.YieldScanConfig()

        def job(ctx):
            with run_record(out, stages.KIND, station=snapshot, meta={"seed": seed},
                            done=stages.STAGE_DONE["yield"]) as w:
                return stages.yield_scan(xbar, w, cfg, ctx.progress, ctx.cancel)

        self._t0 = time.monotonic()
        self.bar.setValue(0)
        self.status.setText("yield scan…")
        return self.s.start_job("yield scan", job, on_result=lambda m: self._scanned(m, out),
                                on_progress=self._progress, on_end=self._end, needs_station=True)

    def _scanned(self, ymap, out: Path) -> None:
        self.ymap, self.out, self.cfg, self.trained, self.resumable = ymap, out, None, set(), False
        self.misfit = {}
        for name in stages.NETS:
            try:
                stages.placement_for(self.s.xbar, ymap, stages.make_net(name))
            except ConfigError as e:
                self.misfit[name] = str(e)
        self.rows, self.total, self.vg = [], 0, None
        self.g_map_us = ymap.g_reset_s * US_PER_S
        sm = ymap.summary()
        self.yield_label.setText(f"good rows {sm['good_rows']}/{sm['n_rows']} · good columns "
                                 f"{sm['good_cols']}/{sm['n_cols']} · passing cells {sm['passed_cells']:,}/"
                                 f"{sm['n_cells']:,}")
        self.message.setText(f"record {out}")
        g_all = np.array(self.s.g_map, float) if self.s.g_map is not None else None
        if g_all is not None:
            g_all[ymap.pe] = ymap.g_reset_s
            self.s.set_map(g_all)
        self._draw_yield()
        self._draw_state("after the yield scan")
        self._draw_curves()

    # ---- training ---------------------------------------------------------------------------
    def config(self) -> stages.InsituConfig:
        """The training settings as the stage's config (ConfigError naming a bad one)."""
        src = self.data.text().strip() or None
        if src is not None:
            check = opt.existing_file("8x8 data file") if src.endswith(".npz") else opt.existing_dir
            opt.parse_value(check, src, "data")
        data = stages.DataConfig(source=src, seed=int(self.data_seed.value()))
        return stages.InsituConfig(net=self.selected_net(), data=data, epochs=self.epochs.value() or None,
                                   batch=self.batch.value() or None,
                                   train_samples=self.train_samples.value() or None,
                                   test_samples=self.test_samples.value() or None,
                                   eval_every=self.eval_every.value())

    def start(self) -> bool:
        """The in-situ training stage in a worker, continuing the yield scan's record."""
        why = self.start_refusal()
        if why:
            self.s.error.emit("Cannot start the training", why)
            return False
        try:
            cfg = self.config()
        except ConfigError as e:
            self.s.error.emit(*describe_error(e))
            return False
        self.cfg, self.rows, self.total, self.vg = cfg, [], 0, None
        self.trained.add(cfg.net)
        return self._train("in-situ training")

    def resume(self) -> bool:
        """Continue the stopped training of the record at its next batch."""
        if not self.resumable or self.s.busy:
            self.s.error.emit("Nothing to resume", "No stopped training in this panel's record."
                              if not self.s.busy else "A job is running.")
            return False
        return self._train("in-situ training")

    def _train(self, name: str) -> bool:
        cfg, out, xbar, snapshot = self.cfg, self.out, self.s.xbar, station_snapshot(self.s)
        live = _Live(cfg.net)

        def job(ctx):
            data = stages.check_train(xbar, read_content(out), cfg)     # before the record changes
            live.started, live.n_test = True, len(stages.subset(data, cfg)[3])
            with run_record(out, stages.KIND, station=snapshot, resume=True, done=stages.STAGE_DONE["train"]) as w:
                def on_batch(row):
                    live.add(row, w.content)
                    if ctx.want_partial():
                        ctx.partial(live.take())
                return stages.train_insitu(xbar, w, cfg, ctx.progress, ctx.cancel, data, on_batch=on_batch)

        self._live, self._t0, self._b0 = live, time.monotonic(), len(self.rows)
        self.resumable = False
        self.bar.setValue(0)
        self.status.setText(f"{'resuming' if self.rows else 'initializing'} the {cfg.net} on the array…")
        self.message.setText(f"recording to {out}")
        self._draw_curves()
        return self.s.start_job(name, job, on_result=self._trained, on_progress=self._progress,
                                on_partial=self._partial, on_end=self._end, needs_station=True)

    def _progress(self, p) -> None:
        self.bar.setValue(int(1000 * p.fraction))
        el = time.monotonic() - self._t0
        if p.unit != "batches":
            self.status.setText(f"{p.message} · {_fmt_s(el)}")
            return
        self.total = int(p.total)
        done = int(p.done)
        eta = el / max(done - self._b0, 1) * (self.total - done)
        pulses = self.rows[-1]["pulses_total"] if self.rows else 0
        left = f"ETA {_fmt_s(eta)}" if done < self.total else "finishing…"
        self.status.setText(f"batch {done:,}/{self.total:,} · {pulses:,} pulses · {left}")

    def _partial(self, d: dict) -> None:
        self.rows.extend(d["rows"])
        if d["ckpt"] is not None:
            self._set_state(d["cells"], d["ckpt"])
        self._draw_curves()

    def _set_state(self, cells, ckpt: np.ndarray) -> None:
        rows, cols = cells
        self.g_map_us[rows, cols] = ckpt[:, CKPT_G] * US_PER_S
        self.vg = np.array(ckpt[:, CKPT_VG]).ravel()
        last = self.rows[-1]["batch"] if self.rows else 0
        self._draw_state(f"after batch {last}")

    def _trained(self, res) -> None:
        self.rows = [dict(r) for r in res.rows]
        self.total, self.resumed_from = res.updates, res.resumed_from

    def _end(self, outcome: str) -> None:
        live, self._live = self._live, None
        if live is not None:                                  # a training: what the last signal missed
            d = live.take()
            if outcome == "done":
                d["rows"] = []                                # the result held every row
            self._partial(d)
            if not live.started:
                self.trained.discard(live.net)
            if live.cells is not None:
                rows, cols = live.cells
                self.s.set_map_values(np.ravel_multi_index((self.ymap.pe, rows, cols), self.s.g_map.shape),
                                      self.g_map_us[rows, cols] / US_PER_S)
            self.resumable = live.started and outcome != "done"
        el = _fmt_s(time.monotonic() - self._t0)
        last = self.rows[-1] if self.rows else None
        if live is None:
            self.status.setText({"done": f"yield scan finished in {el}", "cancelled": "yield scan stopped",
                                 "failed": "yield scan failed"}[outcome])
        elif outcome == "done":
            again = f" (resumed at batch {self.resumed_from:,})" if self.resumed_from else ""
            self.status.setText(f"finished {self.total:,} batches{again} in {el} · {last['pulses_total']:,} "
                                f"pulses · test {self._acc_text(last, live.n_test)} on {live.n_test:,} samples")
            self.message.setText(f"record {self.out}")
        else:
            done = last["batch"] if last else 0
            self.status.setText(f"{'stopped' if outcome == 'cancelled' else 'failed'} after batch {done:,}"
                                f"{f'/{self.total:,}' if self.total else ''} · Resume continues at batch {done + 1:,}")
            self.message.setText(f"the finished batches are in {self.out}")
        self._enable()

    def _acc_text(self, row: dict, n: int) -> str:
        if self.cfg.net == "convlstm":
            return ", ".join(f"frame {t + 1}: {accuracy_text(row[f'test_acc_{t + 1}'], n)}"
                             for t in range(len(self.acc_curves)))
        return accuracy_text(row["test_acc"], n)

    # ---- drawing ----------------------------------------------------------------------------
    def _draw_yield(self) -> None:
        m = self.ymap
        if m is None:
            self.yield_img.clear()
            self.yield_title.setText("Yield map")
            return
        self.yield_img.setImage(yield_image(m), autoLevels=False, levels=(0, 255))
        self.yield_vb.setRange(xRange=(0, m.cols.size), yRange=(0, m.rows.size), padding=0.02)
        self.yield_title.setText(f"Yield map: {int(m.rows.sum())}/{m.rows.size} rows, "
                                 f"{int(m.cols.sum())}/{m.cols.size} columns good")

    def _draw_state(self, when: str = "") -> None:
        g = self.g_map_us
        if g is None:
            self.g_img.clear()
        else:
            top = np.nanmax(g) if np.isfinite(g).any() else 0.0
            hi = max(50.0, 50.0 * np.ceil(top / 50.0))
            self.g_img.setImage(g.astype(np.float32), autoLevels=False, levels=(0.0, hi))
            self.g_bar.setLevels((0.0, hi))
            self.g_vb.setRange(xRange=(0, g.shape[1]), yRange=(0, g.shape[0]), padding=0.02)
        self.g_title.setText(f"Conductance (µS){f', {when}' if when else ''}")
        if self.vg is None:
            self.vg_curve.setData([], [])
            self.vg_plot.setTitle(None)
            theme.style_plot(self.vg_plot.getPlotItem(), "Gate voltages")
            return
        policy = self.cfg.policy(stages.make_net(self.cfg.net))
        edges = np.arange(policy.gate_min, policy.gate_max + VG_BIN_V / 2, VG_BIN_V)
        counts, edges = np.histogram(self.vg, bins=edges)
        self.vg_curve.setData(edges, counts)
        theme.style_plot(self.vg_plot.getPlotItem(), f"Gate voltages of {self.vg.size:,} cells, {when}")

    def _draw_curves(self) -> None:
        rows = self.rows
        net = self.cfg.net if self.cfg is not None else self.selected_net()
        b = np.array([r["batch"] for r in rows], float)
        self.loss_curve.setData(b, [r["loss"] for r in rows])
        keys = ["test_acc"] if net == "cnn" else [f"test_acc_{t + 1}" for t in range(len(self.acc_curves))]
        for t, curve in enumerate(self.acc_curves):
            if t < len(keys):
                acc = np.array([r[keys[t]] for r in rows], float)
                ok = np.isfinite(acc)
                curve.setData(b[ok], 100 * acc[ok])
            else:
                curve.setData([], [])
        self.paper_line.setVisible(net == "cnn")
        if net == "cnn":
            legend = _legend([("test", theme.CURVE_COLORS[0]),
                              (f"paper {100 * PAPER['cnn_acc']:.2f} %", theme.MUTED)])
        else:
            legend = "after frame &nbsp;" + _legend([(f"{t + 1}", theme.CURVE_COLORS[t]) for t in range(len(keys))])
        theme.style_plot(self.acc_plot.getPlotItem(), f"Test accuracy &nbsp; {legend}")
