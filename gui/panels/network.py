"""Network tab: train the mCNN (or load a trained model from a run record), choose the number
of convolver groups, see the allocation plan drawn on the PEs, and transfer the weights by
write-verify with progress; the transfer summary gives in-band % and RMS weight error per layer.

The model, dataset, plan and the hardware network live in a `CnnState` shared by the Network,
Convolver and Hybrid-training tabs (`cnn_state(session)`)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (QDoubleSpinBox, QFileDialog, QGridLayout, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from hil.errors import ConfigError, DataError
from hil.runstore.lifecycle import run_record

from .. import theme
from ..history import RunHistory
from ..session import Session, describe_error
from ..widgets import accuracy_text, muted, plot_widget
from .programming import _fmt_s, eta_text, station_snapshot, unique_path

log = logging.getLogger(__name__)
GAP = 3                      # blank columns between PEs in the plan mosaic
MAX_GROUPS = 3
#: (light, full) colour of each convolver group: c1 light, c3 full
GROUP_COLORS = (("#9ccfff", "#2f86e6"), ("#93ecc4", "#23a86c"), ("#f9dc8c", "#d6940f"))
FC_COLOR = "#b48cff"
UNUSED_COLOR = "#2b2f36"
GAP_COLOR = theme.PANEL


class CnnState(QObject):
    """The CNN objects shared by tabs 5-7: dataset, model, plan, transfer and hardware network."""

    changed = Signal()           # model, plan or hardware network changed

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.s = session
        self.dataset = None          # hil.nn.datasets.Dataset
        self.model = None            # hil.yao2020.mcnn.MCNN
        self.model_info = ""
        self.software_acc: Optional[float] = None
        self.train_history: list[dict] = []
        self.plan = None             # hil.analog.mapping.AllocationPlan (transferred, with hw)
        self.hw = None               # hil.yao2020.hwnet.HardwareMCNN on the connected station
        self.transfer = None         # hil.yao2020.hwnet.TransferReport
        self.data_config = None      # hil.yao2020.stages.DataConfig of `dataset`
        self.record: Optional[Path] = None   # run record holding the model (and, after transfer, the network)
        session.connection_changed.connect(self._station_changed)
        session.plan_changed.connect(self._cells_reprogrammed)

    def set_model(self, model, dataset, info: str, software_acc: Optional[float], history=(),
                  data_config=None, record: Optional[Path] = None) -> None:
        self.model, self.dataset, self.model_info = model, dataset, info
        self.software_acc, self.train_history = software_acc, list(history)
        self.data_config, self.record = data_config, record
        self.plan = self.hw = self.transfer = None          # weights on the chip are the old model's
        self.changed.emit()

    def set_hardware(self, plan, hw, transfer, record: Optional[Path]) -> None:
        self.plan, self.hw, self.transfer, self.record = plan, hw, transfer, record
        self.changed.emit()

    def _station_changed(self) -> None:
        if self.hw is not None and self.hw.xbar is not self.s.xbar:
            log.info("station changed: the transferred network is no longer on the chip")
            self.plan = self.hw = self.transfer = None
            self.changed.emit()


    def _cells_reprogrammed(self) -> None:
        """Programming on tab 4 that overwrote weight cells removes the network from the chip."""
        prog = self.s.plan
        if self.hw is None or prog is None:
            return
        used = np.flatnonzero((self.plan.label_map() != "").ravel())
        if np.intersect1d(used, np.asarray(prog.flat)).size:
            log.warning("programming overwrote weight cells: transfer the network again")
            self.plan = self.hw = self.transfer = None
            self.changed.emit()


def _open_content(record: Optional[Path]):
    """The content of `record` when a transfer may continue it (an mCNN run holding no transfer
    yet, not complete), else None (a new record is made)."""
    from hil.runstore import read_content
    if record is None or not (record.exists() or Path(str(record) + ".journal").exists()):
        return None
    content = read_content(record)
    root = content.attrs.get("/", {})
    if root.get("kind") != "mcnn" or root.get("status") == "complete" or "transfer/targets" in content.datasets:
        return None
    return content


def cnn_state(session: Session) -> CnnState:
    """The session's CnnState (created on first use)."""
    st = getattr(session, "_cnn_state", None)
    if st is None:
        st = CnnState(session)
        session._cnn_state = st
    return st


# ---- plan drawing ----------------------------------------------------------------------------
def int_ticks(plot, n: int) -> None:
    """Whole-number ticks on the bottom axis (epochs)."""
    step = max(1, int(np.ceil(n / 10)))
    plot.getAxis("bottom").setTickSpacing(major=step, minor=step)


def tag_color(tag: str) -> str:
    """Colour of an allocation label 'c1/g1', 'c3/g2', 'fc' ('' = unused)."""
    if not tag:
        return UNUSED_COLOR
    if "/g" in tag:
        layer, g = tag.split("/g")
        light, full = GROUP_COLORS[(int(g) - 1) % len(GROUP_COLORS)]
        return light if layer == "c1" else full
    return FC_COLOR


def plan_mosaic(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(n_pe, rows, cols) labels -> (rows, n_pe*cols + gaps, 3) uint8 image and the tags present."""
    n, r, c = labels.shape
    tags = sorted({t for t in np.unique(labels) if t}, key=_tag_order)
    lut = {t: np.array(pg.mkColor(tag_color(t)).getRgb()[:3], np.uint8) for t in tags + [""]}
    img = np.empty((r, n * c + (n - 1) * GAP, 3), np.uint8)
    img[:] = pg.mkColor(GAP_COLOR).getRgb()[:3]
    for p in range(n):
        block = np.empty((r, c, 3), np.uint8)
        block[:] = lut[""]
        for t in tags:
            block[labels[p] == t] = lut[t]
        img[:, p * (c + GAP):p * (c + GAP) + c] = block
    return img, tags


def _tag_order(tag: str):
    if "/g" in tag:
        layer, g = tag.split("/g")
        return (int(g), layer)
    return (99, tag)


def tag_name(tag: str) -> str:
    if "/g" in tag:
        layer, g = tag.split("/g")
        return f"{layer} · G{g}"
    return f"{tag} · shared"


class PlanView(pg.GraphicsLayoutWidget):
    """The PEs side by side, every cell coloured by the layer and replica group it holds;
    hovering emits the cell under the mouse (pe, row, col; -1 outside a PE)."""

    hovered = Signal(int, int, int)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.shape: Optional[tuple] = None
        self.scene().sigMouseMoved.connect(self._mouse_moved)
        self.setBackground(theme.PANEL)
        self.vb = self.addViewBox(lockAspect=True, invertY=True, enableMouse=False, enableMenu=False)
        self.img = pg.ImageItem()
        self.vb.addItem(self.img)
        self.texts: list[pg.TextItem] = []
        self.image: Optional[np.ndarray] = None
        self.tags: list[str] = []

    def show_geometry(self, geometry, labels: Optional[np.ndarray] = None) -> None:
        """Draw `labels` (or an empty chip of `geometry`)."""
        for t in self.texts:
            self.vb.removeItem(t)
        self.texts = []
        if geometry is None:
            self.img.clear()
            self.image, self.tags, self.shape = None, [], None
            return
        if labels is None:
            labels = np.full(geometry.shape, "", dtype=object)
        self.image, self.tags = plan_mosaic(labels)
        self.img.setImage(self.image, autoLevels=False, levels=(0, 255))
        self.shape = geometry.shape
        n, r, c = geometry.shape
        for p in range(n):
            t = pg.TextItem(f"PE {p}", color=theme.MUTED, anchor=(0.5, 1.0))
            t.setPos(p * (c + GAP) + c / 2, -1)
            self.vb.addItem(t)
            self.texts.append(t)
        self.vb.setRange(xRange=(0, self.image.shape[1]), yRange=(-r * 0.06, r), padding=0.02)


    def cell_at(self, x: float, y: float) -> tuple[int, int, int]:
        """(pe, row, col) of mosaic coordinates, (-1, -1, -1) outside every PE."""
        if self.shape is None:
            return -1, -1, -1
        n, r, c = self.shape
        xi, yi = int(np.floor(x)), int(np.floor(y))
        pe, col = divmod(xi, c + GAP)
        if not (0 <= pe < n and 0 <= col < c and 0 <= yi < r):
            return -1, -1, -1
        return pe, yi, col

    def _mouse_moved(self, pos) -> None:
        p = self.vb.mapSceneToView(pos)
        self.hovered.emit(*self.cell_at(p.x(), p.y()))


def describe_cell(plan, pe: int, row: int, col: int) -> str:
    """One line on what a cell of the plan holds."""
    where = f"PE {pe} · row {row} · col {col}"
    hit = plan.locate(pe, row, col) if plan is not None else None
    if hit is None:
        return f"{where}: unused"
    grp = "shared FC" if hit["group"] < 0 else f"G{hit['group'] + 1}"
    part = "positive" if hit["sign"] > 0 else "negative"
    return (f"{where}: {hit['layer']} · {grp} · input {hit['input']} → output {hit['output']} "
            f"({part} cell of the pair)")


def legend_html(tags: list[str]) -> str:
    items = [f"<span style='color:{tag_color(t)}; font-size:14pt'>■</span>&nbsp;{tag_name(t)}" for t in tags]
    items.append(f"<span style='color:{UNUSED_COLOR}; font-size:14pt'>■</span>&nbsp;unused")
    return "&nbsp;&nbsp;&nbsp;".join(items)


def _table(cols: int, headers: list[str], rows_min: int = 4) -> QTableWidget:
    t = QTableWidget(0, cols)
    t.setHorizontalHeaderLabels(headers)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
    t.verticalHeader().setVisible(False)
    t.verticalHeader().setDefaultSectionSize(21)
    t.setEditTriggers(QTableWidget.NoEditTriggers)
    t.setSelectionMode(QTableWidget.NoSelection)
    t.setMinimumHeight(rows_min * 21 + t.horizontalHeader().sizeHint().height() + 6)
    return t


def fill_table(t: QTableWidget, rows: list) -> None:
    t.setRowCount(len(rows))
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            item = QTableWidgetItem(str(v))
            item.setTextAlignment(Qt.AlignCenter if j else Qt.AlignLeft | Qt.AlignVCenter)
            t.setItem(i, j, item)


# ---- the panel --------------------------------------------------------------------------------
class NetworkPanel(QWidget):
    title = "Network"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.cnn = cnn_state(session)

        # model
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("embedded 5,000 digits (or a folder of MNIST IDX files)")
        self.fraction = QDoubleSpinBox()
        self.fraction.setRange(0.01, 1.0)
        self.fraction.setSingleStep(0.05)
        self.fraction.setDecimals(2)
        self.fraction.setValue(1.0)
        self.fraction.setToolTip("fraction of the training digits used for ex-situ training")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        self.epochs.setValue(4)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2 ** 31 - 1)
        self.train_btn = QPushButton("Train ex situ")
        self.train_btn.setProperty("primary", "true")
        self.train_btn.clicked.connect(self.train)
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("run record of `hil train` / `hil demo` (.h5)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.load_btn = QPushButton("Load model")
        self.load_btn.clicked.connect(lambda: self.load_model())
        self.model_label = muted("no model yet — train one or load it from a run record")
        mg = QGroupBox("Model (mCNN, 15-level weights, 8-bit activations)")
        g = QGridLayout(mg)
        g.addWidget(QLabel("data"), 0, 0, alignment=Qt.AlignRight)
        g.addWidget(self.data_edit, 0, 1, 1, 5)
        for i, (name, w) in enumerate((("fraction", self.fraction), ("epochs", self.epochs), ("seed", self.seed))):
            g.addWidget(QLabel(name), 1, 2 * i, alignment=Qt.AlignRight)
            g.addWidget(w, 1, 2 * i + 1)
        g.addWidget(self.train_btn, 2, 0, 1, 6)
        g.addWidget(QLabel("run"), 3, 0, alignment=Qt.AlignRight)
        g.addWidget(self.run_edit, 3, 1, 1, 3)
        g.addWidget(browse, 3, 4)
        g.addWidget(self.load_btn, 3, 5)
        g.addWidget(self.model_label, 4, 0, 1, 6)

        # plan
        self.groups = QSpinBox()
        self.groups.setRange(1, MAX_GROUPS)
        self.groups.setValue(MAX_GROUPS)
        self.groups.setSuffix(" convolver group(s)")
        self.groups.valueChanged.connect(lambda _: self.update_plan())
        self.plan_table = _table(7, ["layer", "group", "PE", "rows", "cols", "inputs", "outputs"], 5)
        self.plan_label = muted("")
        self.plan_error = QLabel("")
        self.plan_error.setWordWrap(True)
        self.plan_error.setProperty("reason", "true")
        self.plan_error.setWordWrap(True)
        self.plan_error.hide()
        pg_box = QGroupBox("Allocation plan")
        pl = QVBoxLayout(pg_box)
        row = QHBoxLayout()
        row.addWidget(QLabel("replicas"))
        row.addWidget(self.groups)
        row.addStretch(1)
        pl.addLayout(row)
        pl.addWidget(self.plan_table, 1)
        pl.addWidget(self.plan_label)
        pl.addWidget(self.plan_error)

        # transfer
        self.folder = QLineEdit("runs")
        self.transfer_btn = QPushButton("Transfer weights (write-verify)")
        self.transfer_btn.setProperty("primary", "true")
        self.transfer_btn.clicked.connect(self.start_transfer)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.eta = QLabel("idle")
        self.eta.setWordWrap(True)
        self.eta.setStyleSheet("font-family: monospace;")
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        self.summary_label.setWordWrap(True)
        self.summary = _table(4, ["layer", "in band", "RMS error\n(levels)", "mean |error|\n(levels)"], 4)
        tg = QGroupBox("Weight transfer")
        tl = QVBoxLayout(tg)
        r1 = QHBoxLayout()
        r1.addWidget(QLabel("run folder"))
        r1.addWidget(self.folder, 1)
        tl.addLayout(r1)
        r2 = QHBoxLayout()
        r2.addWidget(self.transfer_btn)
        r2.addWidget(self.bar, 1)
        tl.addLayout(r2)
        tl.addWidget(self.eta)
        tl.addWidget(self.summary_label)
        tl.addWidget(self.summary)

        # right: plan mosaic and training curve
        self.plan_view = PlanView()
        self.plan_view.setMinimumHeight(320)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.RichText)
        self.legend.setWordWrap(True)
        self.mosaic_title = QLabel("Allocation on the chip")
        self.mosaic_title.setWordWrap(True)
        self.mosaic_title.setStyleSheet("font-size: 11pt; font-weight: 600;")
        mv = QGroupBox("Which layer and which replica group sits where")
        ml = QVBoxLayout(mv)
        ml.addWidget(self.mosaic_title)
        ml.addWidget(self.plan_view, 1)
        self.hover_label = muted("hover a cell to see what it holds")
        ml.addWidget(self.hover_label)
        ml.addWidget(self.legend)
        self.plan_view.hovered.connect(self.show_hovered)
        self.train_plot = plot_widget("Ex-situ training (per epoch)", ("epoch", ""), ("accuracy", "%"),
                                      legend=True, min_height=180)
        self.curve_train = self.train_plot.plot([], [], pen=pg.mkPen(theme.CURVE_COLORS[0], width=2),
                                                symbol="o", symbolSize=6, symbolBrush=theme.CURVE_COLORS[0],
                                                name="train (quantized)")
        self.curve_test = self.train_plot.plot([], [], pen=pg.mkPen(theme.CURVE_COLORS[1], width=2),
                                               symbol="o", symbolSize=6, symbolBrush=theme.CURVE_COLORS[1],
                                               name="test (quantized)")

        left = QVBoxLayout()
        left.addWidget(mg)
        left.addWidget(pg_box, 1)
        left.addWidget(tg)
        right = QVBoxLayout()
        right.addWidget(mv, 3)
        right.addWidget(self.train_plot, 2)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 5)
        lay.addLayout(right, 6)

        self.preview = None          # plan of the current settings (not transferred yet)
        self.report = None
        self.out: Optional[Path] = None
        self._t0 = 0.0
        self.s.connection_changed.connect(self.update_plan)
        self.s.busy_changed.connect(lambda _: self._enable())
        self.cnn.changed.connect(self._cnn_changed)
        self.update_plan()

    # ---- state ------------------------------------------------------------------------------
    def show_hovered(self, pe: int, row: int, col: int) -> None:
        if pe < 0:
            self.hover_label.setText("hover a cell to see what it holds")
            return
        self.hover_label.setText(describe_cell(self.cnn.plan, pe, row, col))

    def _enable(self) -> None:
        idle = not self.s.busy
        self.train_btn.setEnabled(idle)
        self.load_btn.setEnabled(idle)
        why = ("A job is running" if not idle else "Connect a station first" if not self.s.connected
               else "Train or load a model first" if self.cnn.model is None
               else self.plan_error.text() if self.preview is None else "")
        self.transfer_btn.setEnabled(not why)
        self.transfer_btn.setToolTip(why)
        self.groups.setEnabled(idle)

    def _cnn_changed(self) -> None:
        c = self.cnn
        self.model_label.setText(c.model_info or "no model yet — train one or load it from a run record")
        hist = c.train_history
        if hist:
            ep = [r["epoch"] for r in hist]
            int_ticks(self.train_plot, len(ep))
            self.curve_train.setData(ep, [100 * r["train_acc_quant"] for r in hist])
            self.curve_test.setData(ep, [100 * r["test_acc_quant"] for r in hist])
        else:
            self.curve_train.setData([], [])
            self.curve_test.setData([], [])
        self.update_plan()

    def update_plan(self) -> None:
        """Plan the current model with the chosen groups on the connected station and draw it."""
        from hil.yao2020.hwnet import plan_mcnn
        geom = self.s.geometry
        self.preview = None
        self.plan_error.setText("")
        self.plan_error.hide()
        if geom is None or self.cnn.model is None:
            self.plan_view.show_geometry(geom)
            self.legend.setText("")
            self.plan_table.setRowCount(0)
            self.plan_label.setText("Connect a station and train or load a model to see the plan."
                                    if geom is None or self.cnn.model is None else "")
            self.mosaic_title.setText("Allocation on the chip" if geom is None else
                                      f"{geom.n_pe} PEs of {geom.rows} × {geom.cols} — no model yet")
            self._enable()
            return
        try:
            plan = plan_mcnn(geom, self.cnn.model, self.groups.value())
        except ConfigError as e:
            self.plan_view.show_geometry(geom)
            self.legend.setText("")
            self.plan_table.setRowCount(0)
            self.plan_label.setText("")
            self.plan_error.setText(f"The mCNN does not fit this station: {e}")
            self.plan_error.show()
            self.mosaic_title.setText(f"{geom.n_pe} PEs of {geom.rows} × {geom.cols} — does not fit")
            self._enable()
            return
        self.preview = plan
        self.plan_view.show_geometry(geom, plan.label_map())
        self.legend.setText(legend_html(self.plan_view.tags))
        rows = []
        for t in sorted(plan.tiles, key=lambda t: (t.pe, t.row0, t.col0)):
            rows.append((t.layer, "all" if t.group < 0 else f"G{t.group + 1}", t.pe,
                         f"{t.row0}–{t.row0 + t.n_in - 1}", f"{t.col0}–{t.col0 + 2 * t.n_out - 1}",
                         f"{t.in0}–{t.in0 + t.n_in - 1}", f"{t.out0}–{t.out0 + t.n_out - 1}"))
        fill_table(self.plan_table, rows)
        self.plan_label.setText(plan.table().splitlines()[-1])
        state = ("transferred" if self.cnn.plan is not None and self.cnn.plan.to_dict() == plan.to_dict()
                 else "planned, not transferred")
        self.mosaic_title.setText(f"{plan.groups} convolver group(s) + shared FC on {geom.n_pe} PEs "
                                  f"of {geom.rows} × {geom.cols} — {state}")
        self._enable()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Run record with a trained model", self.run_edit.text() or ".",
                                              "Run records (*.h5)")
        if path:
            self.run_edit.setText(path)

    # ---- training / loading ---------------------------------------------------------------------
    def train(self) -> bool:
        """Train the mCNN ex situ in a worker (the train stage, recorded like `hil train`)."""
        from hil.yao2020 import stages
        try:
            cfg = stages.TrainConfig(data=stages.DataConfig(source=self.data_edit.text().strip() or None,
                                                            seed=self.seed.value()),
                                     epochs=self.epochs.value(), fraction=self.fraction.value(), seed=self.seed.value())
            out = unique_path(Path(self.folder.text().strip() or "runs"), "mcnn")
        except Exception as e:
            self.s.error.emit(*describe_error(e))
            return False
        snapshot = station_snapshot(self.s)

        def job(ctx):
            ds = stages._load(cfg.data.source, cfg.data.seed, cfg.data.download)
            hist: list = []

            def on_epoch(r):
                hist.append(r)
                ctx.partial(list(hist))
            with run_record(out, stages.KIND, station=snapshot, meta={"seed": cfg.seed},
                            done=stages.STAGE_DONE["train"]) as w:
                return stages.train(None, w, cfg, ctx.progress, ctx.cancel, ds, on_epoch=on_epoch), ds

        def done(res):
            r, ds = res
            info = (f"trained on {r.train_images:,} digits of {ds.source.split(' (')[0]}, {cfg.epochs} epoch(s), "
                    f"seed {cfg.seed} · software accuracy {accuracy_text(r.software_acc, ds.n_test)} on "
                    f"{ds.n_test:,} test digits")
            self.cnn.set_model(r.model, ds, info, r.software_acc, r.history, cfg.data, out)

        self._t0 = time.monotonic()
        self.bar.setValue(0)
        return self.s.start_job("mCNN training", job, on_result=done, on_progress=self._progress,
                                on_partial=self._train_partial)

    def _train_partial(self, hist) -> None:
        ep = [r["epoch"] for r in hist]
        int_ticks(self.train_plot, len(ep))
        self.curve_train.setData(ep, [100 * r["train_acc_quant"] for r in hist])
        self.curve_test.setData(ep, [100 * r["test_acc_quant"] for r in hist])

    def load_model(self, path=None) -> bool:
        """Load the trained model stored in a run record (`hil train` / `hil demo`)."""
        from hil.yao2020 import stages
        from hil.runstore import RunRecord
        path = Path(path or self.run_edit.text().strip())
        self.run_edit.setText(str(path))
        data = stages.DataConfig(source=self.data_edit.text().strip() or None, seed=self.seed.value())

        def job(ctx):
            if not path.is_file():
                raise DataError(f"run record {str(path)!r} does not exist; choose the .h5 made by `hil train`")
            with RunRecord.open(path) as rec:
                content = rec.content()
            model = stages.load_model(content)
            ds = stages._load(data.source, data.seed, data.download)
            acc = model.accuracy(ds.x_test, ds.y_test, quantized=True)
            hist = content.tables.get("training/epochs", {})
            rows = [dict(zip(hist, vals)) for vals in zip(*hist.values())] if hist else []
            return model, ds, acc, rows

        def done(res):
            model, ds, acc, rows = res
            hist = [r for r in rows if {"epoch", "train_acc_quant", "test_acc_quant"} <= set(r)]
            info = (f"loaded from {path.name} · software accuracy {accuracy_text(acc, ds.n_test)} on "
                    f"{ds.n_test:,} test digits of {ds.source.split(' (')[0]}")
            self.cnn.set_model(model, ds, info, acc, hist, data, path)

        return self.s.start_job("load model", job, on_result=done)

    # ---- transfer -------------------------------------------------------------------------------
    def start_transfer(self) -> bool:
        """Program the model's weights onto the chip by the current plan and calibrate the ADC (the
        transfer stage): into the model's record while it holds no transfer yet (as `hil transfer
        --run`), else into a new record holding the model."""
        from hil.yao2020 import stages
        from hil.ops.jobs import plan_from_content
        if not self.s.connected:
            self.s.error.emit("No station", "Connect a station on the Station tab first.")
            return False
        if self.cnn.model is None:
            self.s.error.emit("No model", "Train the mCNN or load a trained model first (Model box).")
            return False
        self.update_plan()
        if self.preview is None:
            self.s.error.emit("Invalid settings", f"{self.plan_error.text()}\n\nUse fewer groups or a larger chip.")
            return False
        xbar, model, ds, c = self.s.xbar, self.cnn.model, self.cnn.dataset, self.cnn
        try:
            cfg = stages.TransferConfig(groups=self.groups.value(), data=c.data_config)
            content = _open_content(c.record)
            if content is not None:
                stages.check_transfer(xbar, content, cfg)
            out = c.record if content is not None else unique_path(Path(self.folder.text().strip() or "runs"), "mcnn")
        except Exception as e:
            self.s.error.emit(*describe_error(e))
            return False
        snapshot = station_snapshot(self.s)

        def job(ctx):
            with run_record(out, stages.KIND, station=snapshot, resume=content is not None,
                            meta=None if content is not None else {"seed": self.seed.value()},
                            done=stages.STAGE_DONE["transfer"]) as w:      # `hil hybrid --run` can continue it
                if content is None:
                    stages.save_model(w, model)
                r = stages.transfer(xbar, w, cfg, ctx.progress, ctx.cancel, ds)
                hw = stages.hardware(xbar, w.content)
                targets = plan_from_content(w.content, "transfer", str(out))
                history = RunHistory(out, w.content, prefix="transfer")
            return r.plan, r.report, hw, targets, history

        self.out, self.report = out, None
        self._t0 = time.monotonic()
        self.bar.setValue(0)
        self.eta.setText("starting…")
        self.summary.setRowCount(0)
        self.summary_label.setText(f"recording to {out}")
        return self.s.start_job("weight transfer", job, on_result=self._transfer_done,
                                on_progress=self._progress, on_end=self._transfer_end, needs_station=True)

    def _progress(self, p) -> None:
        self.bar.setValue(int(1000 * p.fraction))
        el = time.monotonic() - self._t0
        msg = f" · {p.message}" if p.message else ""
        self.eta.setText(f"{int(p.done):,} / {int(p.total):,} {p.unit} · {_fmt_s(el)} elapsed · {eta_text(p, el)}{msg}")

    def _transfer_done(self, res) -> None:
        plan, rep, hw, targets, history = res
        self.report = rep
        self.s.set_map_values(targets.flat, rep.report.final_s)
        self.s.chip.add_write("transfer", targets.flat, record=self.out, plan=targets, history=history,
                              label=f"CNN weights {self.out.name}")
        self.eta.setText(f"done in {_fmt_s(time.monotonic() - self._t0)} · record {self.out.name}")
        s = rep.summary()
        pr = s["program"]
        self.summary_label.setText(
            f"<b>{pr['cells']:,} cells</b> · <span style='color:{theme.OK if pr['in_band_fraction'] > 0.99 else theme.WARN}'>"
            f"{100 * pr['in_band_fraction']:.2f} % in band</span> · {pr['write_errors']} write errors "
            f"({pr['unresponsive']} unresponsive) · {pr['mean_pulses']:.1f} pulses/cell · "
            f"{_fmt_s(pr['backend_seconds'])} at the station")
        rows = [(name, f"{100 * (1 - s['out_of_band_fraction'][name]):.2f} %",
                 f"{s['weight_rms_error_levels'][name]:.3f}", f"{s['weight_mean_abs_error_levels'][name]:.3f}")
                for name in s["weight_rms_error_levels"]]
        fill_table(self.summary, rows)
        self.cnn.set_hardware(plan, hw, rep, self.out)

    def _transfer_end(self, outcome: str) -> None:
        if outcome == "cancelled":
            self.eta.setText(self.eta.text().split(" · ETA")[0].split(" · finishing")[0] + " · aborted")
            self.summary_label.setText(f"aborted — the weights are only partly on the chip; transfer again "
                                       f"(record {self.out})")
        self.update_plan()
