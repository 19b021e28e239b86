"""Convolver tab: pick a test digit; the C1 feature maps computed by the chip's convolver
(`HardwareMCNN.conv`) beside the software ones (`MCNN.features`) and their difference, for
each replica group, and the class predicted by the hardware and by the software network."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QCheckBox, QComboBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

from .. import theme
from ..session import Session
from ..widgets import muted
from .network import _table, cnn_state, fill_table

log = logging.getLogger(__name__)
N_MAPS = 8
DIFF_CMAP = "CET-D4"         # blue - black - red: zero is dark like the background
ROWS = ("software", "hardware", "difference")


def convolve_digit(hw, model, x: np.ndarray) -> dict:
    """Software and per-group hardware C1 maps and predictions of one image x (28, 28) uint8."""
    codes = np.asarray(x, np.uint8)[None, None].astype(np.int64)
    soft_c1 = model.features(x[None], "c1")[0]
    out = {"software": soft_c1, "soft_pred": int(model.predict(x[None])[0]), "groups": []}
    for g in range(hw.plan.groups):
        c1 = hw.conv("c1", g, codes)
        feats = hw.conv("c3", g, c1)
        logits = hw.fc_logits(feats)[0]
        out["groups"].append({"c1": c1[0], "pred": int(np.argmax(logits)), "logits": logits})
    return out


class ConvolverPanel(QWidget):
    title = "Convolver"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.cnn = cnn_state(session)

        self.index = QSpinBox()
        self.index.setRange(0, 0)
        self.index.setPrefix("test digit #")
        self.index.valueChanged.connect(self._digit_changed)
        self.group = QComboBox()
        self.group.currentIndexChanged.connect(lambda _: self.show_result())
        self.run_btn = QPushButton("Convolve on the chip")
        self.run_btn.setProperty("primary", "true")
        self.run_btn.clicked.connect(lambda: self.run())
        self.auto = QCheckBox("run on the chip when the digit changes")
        self.auto.setChecked(True)
        self.digit_view = pg.GraphicsLayoutWidget()
        self.digit_view.setBackground(theme.PANEL)
        self.digit_view.setFixedSize(210, 210)
        vb = self.digit_view.addViewBox(lockAspect=True, invertY=True, enableMouse=False, enableMenu=False)
        self.digit_img = pg.ImageItem()
        self.digit_img.setColorMap(pg.colormap.get("CET-L1"))
        vb.addItem(self.digit_img)
        vb.setRange(xRange=(0, 28), yRange=(0, 28), padding=0)
        self.label_text = QLabel("")
        self.label_text.setWordWrap(True)
        self.label_text.setStyleSheet("font-size: 12pt; font-weight: 600;")
        self.pred_text = QLabel("")
        self.pred_text.setWordWrap(True)
        self.pred_text.setTextFormat(Qt.RichText)
        self.pred_text.setWordWrap(True)
        self.pred_text.setStyleSheet("font-size: 11pt;")
        self.state_label = muted("")

        dg = QGroupBox("Input")
        dl = QGridLayout(dg)
        dl.addWidget(self.index, 0, 0)
        dl.addWidget(self.group, 0, 1)
        dl.addWidget(self.digit_view, 1, 0, 1, 2, alignment=Qt.AlignHCenter)
        dl.addWidget(self.label_text, 2, 0, 1, 2, alignment=Qt.AlignHCenter)
        dl.addWidget(self.run_btn, 3, 0, 1, 2)
        dl.addWidget(self.auto, 4, 0, 1, 2)
        dl.addWidget(self.state_label, 5, 0, 1, 2)
        pgbox = QGroupBox("Prediction")
        pl = QVBoxLayout(pgbox)
        pl.addWidget(self.pred_text)
        self.group_table = _table(4, ["group", "class", "mean |Δ|", "differ"], 3)
        pl.addWidget(self.group_table)

        self.maps = pg.GraphicsLayoutWidget()
        self.maps.setBackground(theme.PANEL)
        self.images: dict[str, list[pg.ImageItem]] = {r: [] for r in ROWS}
        self.row_titles: dict[str, pg.LabelItem] = {}
        code_cmap = pg.colormap.get(theme.MAP_CMAP)
        diff_cmap = pg.colormap.get(DIFF_CMAP)
        for k in range(N_MAPS):
            self.maps.addLabel(f"map {k + 1}", row=0, col=k + 1, color=theme.MUTED, size="9pt")
        for r, name in enumerate(ROWS):
            self.row_titles[name] = self.maps.addLabel(name, row=r + 1, col=0, angle=-90, color=theme.TEXT,
                                                       size="10pt", bold=True)
            for k in range(N_MAPS):
                v = self.maps.addViewBox(row=r + 1, col=k + 1, lockAspect=True, invertY=True, enableMouse=False,
                                         enableMenu=False)
                v.setBorder(pg.mkPen("#3a3f47"))
                img = pg.ImageItem()
                img.setColorMap(diff_cmap if name == "difference" else code_cmap)
                v.addItem(img)
                v.setRange(xRange=(0, 14), yRange=(0, 14), padding=0.02)
                self.images[name].append(img)
        self.code_bar = pg.ColorBarItem(values=(0, 255), colorMap=code_cmap, label="8-bit code", interactive=False,
                                        width=14)
        self.code_bar.setImageItem(self.images["software"] + self.images["hardware"])
        self.maps.addItem(self.code_bar, row=1, col=N_MAPS + 1, rowspan=2)
        self.diff_bar = pg.ColorBarItem(values=(-8, 8), colorMap=diff_cmap, label="Δ code", interactive=False,
                                        width=14)
        self.diff_bar.setImageItem(self.images["difference"])
        self.maps.addItem(self.diff_bar, row=3, col=N_MAPS + 1)
        for bar in (self.code_bar, self.diff_bar):
            bar.getAxis("right").setTextPen(theme.MUTED)
        self.maps_title = QLabel("C1 feature maps (8 × 14 × 14 after ReLU, pooling and 8-bit requantization)")
        self.maps_title.setWordWrap(True)
        self.maps_title.setStyleSheet("font-size: 11pt; font-weight: 600;")
        self.stats = muted("")
        mg = QGroupBox("Feature maps: software vs chip")
        ml = QVBoxLayout(mg)
        ml.addWidget(self.maps_title)
        ml.addWidget(self.maps, 1)
        ml.addWidget(self.stats)

        left = QVBoxLayout()
        left.addWidget(dg)
        left.addWidget(pgbox, 1)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 5)
        lay.addWidget(mg, 16)

        self.result: Optional[dict] = None
        self.result_index: Optional[int] = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(200)
        self._debounce.timeout.connect(self._auto_run)
        self.cnn.changed.connect(self._cnn_changed)
        self.s.busy_changed.connect(lambda _: self._enable())
        self.s.connection_changed.connect(self._enable)
        self._cnn_changed()

    # ---- state ------------------------------------------------------------------------------
    def _why_not(self) -> str:
        if self.s.busy:
            return "A job is running"
        if self.cnn.hw is None:
            return "Transfer the network on the Network tab first"
        return ""

    def _enable(self) -> None:
        why = self._why_not()
        self.run_btn.setEnabled(not why)
        self.run_btn.setToolTip(why)
        if self.cnn.model is None:
            self.state_label.setText("Train or load a model on the Network tab.")
        elif self.cnn.hw is None:
            self.state_label.setText("Software maps only: transfer the weights on the Network tab to run "
                                     "the chip's convolvers.")
        else:
            self.state_label.setText(f"Network on the chip: {self.cnn.plan.groups} convolver group(s).")

    def _cnn_changed(self) -> None:
        ds = self.cnn.dataset
        self.index.blockSignals(True)
        self.index.setRange(0, max(0, (ds.n_test - 1) if ds is not None else 0))
        self.index.blockSignals(False)
        self.group.blockSignals(True)
        self.group.clear()
        n = self.cnn.plan.groups if self.cnn.plan is not None else 1
        self.group.addItems([f"convolver G{g + 1}" for g in range(n)])
        self.group.blockSignals(False)
        self.result = None
        self._digit_changed()

    def _digit_changed(self, *_) -> None:
        self.result = None
        self.show_result()
        if self.auto.isChecked() and not self._why_not():
            self._debounce.start()

    def _auto_run(self) -> None:
        if not self._why_not() and self.result_index != self.index.value():
            self.run()

    def digit(self) -> Optional[np.ndarray]:
        ds = self.cnn.dataset
        return None if ds is None else ds.x_test[self.index.value()]

    # ---- job --------------------------------------------------------------------------------
    def run(self) -> bool:
        """Convolve the chosen digit on every replica group of the chip (a short job)."""
        if self.cnn.hw is None or self.digit() is None:
            self.s.error.emit("No network on the chip", "Train or load a model and transfer it on the "
                                                        "Network tab first.")
            return False
        hw, model, x, i = self.cnn.hw, self.cnn.model, self.digit(), self.index.value()

        def done(res):
            if self.index.value() == i:
                self.result, self.result_index = res, i
                self.show_result()
        return self.s.start_job("convolver", lambda ctx: convolve_digit(hw, model, x), on_result=done,
                                needs_station=True)

    # ---- display ----------------------------------------------------------------------------
    def show_result(self) -> None:
        ds, model = self.cnn.dataset, self.cnn.model
        self._enable()
        if ds is None or model is None:
            for name in ROWS:
                for img in self.images[name]:
                    img.clear()
            self.digit_img.clear()
            self.label_text.setText("")
            self.pred_text.setText("")
            self.group_table.setRowCount(0)
            self.stats.setText("")
            return
        x = self.digit()
        y = int(ds.y_test[self.index.value()])
        self.digit_img.setImage(x, autoLevels=False, levels=(0, 255))
        self.label_text.setText(f"label {y}")
        soft = self.result["software"] if self.result is not None else model.features(x[None], "c1")[0]
        top = max(1, int(soft.max()))
        for k, img in enumerate(self.images["software"]):
            img.setImage(soft[k].astype(np.float32), autoLevels=False, levels=(0, top))
        soft_pred = int(model.predict(x[None])[0]) if self.result is None else self.result["soft_pred"]
        g = max(0, self.group.currentIndex())
        self.row_titles["hardware"].setText(f"chip G{g + 1}", color=theme.TEXT)
        if self.result is None or g >= len(self.result["groups"]):
            for name in ("hardware", "difference"):
                for img in self.images[name]:
                    img.clear()
            self.code_bar.setLevels((0, top))
            self.pred_text.setText(f"software: <b>{soft_pred}</b> {_mark(soft_pred, y)}<br>"
                                   f"<span style='color:{theme.MUTED}'>chip: not run for this digit</span>")
            self.group_table.setRowCount(0)
            self.stats.setText("")
            return
        hw = self.result["groups"][g]["c1"]
        diff = hw.astype(np.int64) - soft.astype(np.int64)
        top = max(top, int(hw.max()))
        span = max(1, int(np.abs(diff).max()))
        for k in range(N_MAPS):
            self.images["software"][k].setImage(soft[k].astype(np.float32), autoLevels=False, levels=(0, top))
            self.images["hardware"][k].setImage(hw[k].astype(np.float32), autoLevels=False, levels=(0, top))
            self.images["difference"][k].setImage(diff[k].astype(np.float32), autoLevels=False,
                                                  levels=(-span, span))
        self.code_bar.setLevels((0, top))
        self.diff_bar.setLevels((-span, span))
        preds = [r["pred"] for r in self.result["groups"]]
        self.pred_text.setText(
            f"label <b>{y}</b><br>software: <b>{soft_pred}</b> {_mark(soft_pred, y)}<br>"
            f"chip G{g + 1}: <b>{preds[g]}</b> {_mark(preds[g], y)}")
        rows = []
        for k, r in enumerate(self.result["groups"]):
            d = r["c1"].astype(np.int64) - soft.astype(np.int64)
            rows.append((f"G{k + 1}", r["pred"], f"{np.mean(np.abs(d)):.2f}", f"{100 * np.mean(d != 0):.1f} %"))
        fill_table(self.group_table, rows)
        self.stats.setText(f"chip G{g + 1} vs software: mean |Δ| {np.mean(np.abs(diff)):.2f} codes · max |Δ| "
                           f"{np.abs(diff).max()} · {100 * np.mean(diff != 0):.1f} % of the {diff.size:,} codes "
                           f"differ · software codes 0…{int(soft.max())}")


def _mark(pred: int, label: int) -> str:
    return (f"<span style='color:{theme.OK}'>✓</span>" if pred == label
            else f"<span style='color:{theme.BAD}'>✗</span>")
