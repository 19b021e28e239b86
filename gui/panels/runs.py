"""Runs tab: open a run record read-only, browse its contents, preview datasets and tables,
send a programming run to the array map (cell history), and export the preview as PNG."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QFileDialog, QGroupBox, QHBoxLayout, QHeaderView,
                               QLabel, QLineEdit, QPushButton, QSplitter, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from hil.runstore import RunRecord

from .. import theme
from ..session import Session, describe_error
from ..widgets import muted, plot_widget

log = logging.getLogger(__name__)
US_PER_S = 1e6
GAP = 2          # blank columns between PEs in a snapshot mosaic


def mosaic(arr: np.ndarray) -> np.ndarray:
    """(n_pe, rows, cols) -> rows x (n_pe*cols + gaps) image with NaN gaps between PEs."""
    n, r, c = arr.shape
    out = np.full((r, n * c + (n - 1) * GAP), np.nan, np.float32)
    for p in range(n):
        out[:, p * (c + GAP):p * (c + GAP) + c] = arr[p]
    return out


def _is_conductance(name: str) -> bool:
    n = name.lower()
    return n.startswith("g_") or n.endswith("g_s") or "snapshot" in n or n == "target_s"


class RunsPanel(QWidget):
    title = "Runs"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("runs/program-….h5")
        browse = QPushButton("Open…")
        browse.setProperty("primary", "true")
        browse.clicked.connect(self._browse)
        self.path_edit.returnPressed.connect(lambda: self.open_run(self.path_edit.text().strip()))
        self.to_map_btn = QPushButton("Use for cell history / map")
        self.to_map_btn.setToolTip("Make this the current run: the Array map shows its cell histories "
                                   "and its final snapshot (if the connected array has the same shape)")
        self.to_map_btn.clicked.connect(self.use_for_map)
        self.export_btn = QPushButton("Export PNG…")
        self.export_btn.clicked.connect(lambda: self.export_png())
        self.header = QLabel("No run open")
        self.header.setStyleSheet("font-size: 12pt; font-weight: 600;")
        self.sub = muted("")
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["item", "details"])
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.tree.itemSelectionChanged.connect(self._preview_selected)
        self.column_box = QComboBox()
        self.column_box.currentTextChanged.connect(lambda _: self._preview_selected())
        self.preview = plot_widget("Preview", ("", ""), ("", ""))
        self.preview_label = muted("Select a dataset or table on the left.")

        bar = QHBoxLayout()
        bar.addWidget(self.path_edit, 1)
        bar.addWidget(browse)
        bar.addWidget(self.to_map_btn)
        bar.addWidget(self.export_btn)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.header)
        ll.addWidget(self.sub)
        ll.addWidget(self.tree, 1)
        right = QGroupBox("Preview (read-only)")
        rl = QVBoxLayout(right)
        cl = QHBoxLayout()
        cl.addWidget(QLabel("table column"))
        cl.addWidget(self.column_box, 1)
        rl.addLayout(cl)
        rl.addWidget(self.preview, 1)
        rl.addWidget(self.preview_label)
        split = QSplitter(Qt.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        lay = QVBoxLayout(self)
        lay.addLayout(bar)
        lay.addWidget(split, 1)

        self.path: Optional[Path] = None
        self.info: dict = {}
        self.preview_data = None
        self._img: Optional[pg.ImageItem] = None
        self._cbar = None
        self.s.connection_changed.connect(self._enable)
        self._enable()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open run record", self.path_edit.text() or "runs",
                                              "Run records (*.h5)")
        if path:
            self.open_run(path)

    def _enable(self) -> None:
        self.to_map_btn.setEnabled(self.path is not None)
        self.export_btn.setEnabled(self.path is not None)

    # ---- opening -------------------------------------------------------------------------
    def open_run(self, path) -> bool:
        """Open `path` read-only and list its contents; errors go to a dialog."""
        try:
            with RunRecord.open(path) as rec:
                info = {"kind": rec.kind, "status": rec.status, "attrs": rec.attrs,
                        "tables": {t: (rec.table_rows(t), rec.table_columns(t)) for t in rec.tables()},
                        "datasets": {d: rec._f[d].shape for d in rec.datasets()},
                        "groups": {g: a for g in rec.groups() if (a := rec.group_attrs(g)) and g != "/"},
                        "station": rec.station, "marks": rec.marks}
        except Exception as e:
            self.s.error.emit(*describe_error(e))
            return False
        self.path, self.info = Path(path), info
        self.path_edit.setText(str(path))
        a = info["attrs"]
        self.header.setText(f"{self.path.name} — {info['kind']} run, {info['status']}")
        self.sub.setText(f"created {a.get('created', '?')} · software {a.get('software_version', '?')} · "
                         f"station {info['station'].get('label') or info['station'].get('spec', '?')}")
        self.tree.clear()
        root = self.tree.invisibleRootItem()
        sec = _item(root, "datasets", f"{len(info['datasets'])}")
        for d, shape in info["datasets"].items():
            _item(sec, d, "shape " + " × ".join(map(str, shape)), ("dataset", d))
        sec = _item(root, "tables", f"{len(info['tables'])}")
        for t, (rows, cols) in info["tables"].items():
            _item(sec, t, f"{rows:,} rows · {', '.join(cols)}", ("table", t))
        summ = a.get("summary")
        sec = _item(root, "summary", "")
        for k, v in (summ.items() if isinstance(summ, dict) else []):
            _item(sec, k, f"{v:.4g}" if isinstance(v, float) else str(v))
        for g, attrs in info["groups"].items():
            gi = _item(root, f"attrs {g}", "")
            for k, v in attrs.items():
                if isinstance(v, dict):
                    vi = _item(gi, k, "")
                    for kk, vv in v.items():
                        if not isinstance(vv, (list, dict)):
                            _item(vi, kk, f"{vv:.4g}" if isinstance(vv, float) else str(vv))
                else:
                    _item(gi, k, str(v)[:200])
        sec = _item(root, "events", f"{len(info['marks'])}")
        for m in info["marks"]:
            _item(sec, str(m.get("event")), str(m.get("time", "")))
        for i in range(self.tree.topLevelItemCount()):
            self.tree.topLevelItem(i).setExpanded(i < 3)
        self._enable()
        # preview the most useful dataset first
        for name in ("snapshots/after_programming", *info["datasets"]):
            if name in info["datasets"]:
                self.select_item("dataset", name)
                break
        log.info("opened run record %s (%s, %s)", self.path, info["kind"], info["status"])
        return True

    def select_item(self, kind: str, name: str) -> bool:
        it = self._find(kind, name)
        if it is None:
            return False
        self.tree.setCurrentItem(it)
        return True

    def _find(self, kind: str, name: str) -> Optional[QTreeWidgetItem]:
        for i in range(self.tree.topLevelItemCount()):
            top = self.tree.topLevelItem(i)
            for j in range(top.childCount()):
                ch = top.child(j)
                if ch.data(0, Qt.UserRole) == f"{kind}:{name}":
                    return ch
        return None

    # ---- preview -------------------------------------------------------------------------
    def _clear_preview(self) -> None:
        pi = self.preview.getPlotItem()
        if self._cbar is not None:
            pi.layout.removeItem(self._cbar)
            self._cbar.scene() and self._cbar.scene().removeItem(self._cbar)
            self._cbar = None
        pi.clear()
        self._img = None
        self.preview.getViewBox().invertY(False)
        self.preview.getViewBox().setAspectLocked(False)

    def _preview_selected(self) -> None:
        items = self.tree.selectedItems()
        if not items or self.path is None:
            return
        ref = items[0].data(0, Qt.UserRole)
        if not ref:
            return
        kind, name = str(ref).split(":", 1)
        try:
            with RunRecord.open(self.path) as rec:
                if kind == "dataset":
                    arr, _ = rec.dataset(name)
                    self._preview_dataset(name, arr)
                else:
                    cols = rec.table_columns(name)
                    if self.column_box.property("table") != name:
                        self.column_box.blockSignals(True)
                        self.column_box.clear()
                        self.column_box.addItems(cols)
                        self.column_box.setProperty("table", name)
                        self.column_box.blockSignals(False)
                    col = self.column_box.currentText() or cols[0]
                    self._preview_column(name, col, rec.table(name)[col])
        except Exception as e:
            self.s.error.emit(*describe_error(e))

    def _preview_dataset(self, name: str, arr: np.ndarray) -> None:
        self._clear_preview()
        self.preview_data = arr
        pi = self.preview.getPlotItem()
        scale = US_PER_S if _is_conductance(name) else 1.0
        unit = "µS" if scale == US_PER_S else ""
        if arr.ndim in (2, 3) and arr.size > 1:
            img = (mosaic(arr) if arr.ndim == 3 else arr.astype(np.float32)) * scale
            self._img = pg.ImageItem(img)
            pi.addItem(self._img)
            self.preview.getViewBox().invertY(True)
            self.preview.getViewBox().setAspectLocked(True)
            finite = img[np.isfinite(img)]
            lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0, 1))
            self._cbar = pg.ColorBarItem(values=(float(lo), float(max(hi, lo + 1e-9))),
                                         colorMap=pg.colormap.get(theme.MAP_CMAP), label=f"{name.split('/')[-1]} "
                                         f"({unit})" if unit else name.split("/")[-1], interactive=True)
            self._cbar.setImageItem(self._img, insert_in=pi)
            theme.style_plot(pi, name, ("column" + (" (PEs side by side)" if arr.ndim == 3 else ""), ""), ("row", ""))
            self.preview_label.setText(f"{name}: shape {' × '.join(map(str, arr.shape))}, "
                                       f"mean {np.nanmean(arr) * scale:.4g} {unit}")
        else:
            v = arr.ravel().astype(float) * scale
            pi.plot(np.arange(v.size), v, pen=pg.mkPen(theme.ACCENT, width=2), symbol="o", symbolSize=4,
                    symbolBrush=theme.ACCENT)
            theme.style_plot(pi, name, ("index", ""), ("value", unit))
            self.preview_label.setText(f"{name}: {v.size} values")

    def _preview_column(self, table: str, col: str, data: np.ndarray) -> None:
        self._clear_preview()
        self.preview_data = data
        pi = self.preview.getPlotItem()
        scale = US_PER_S if _is_conductance(col) else 1.0
        unit = "µS" if scale == US_PER_S else ""
        v = data.astype(float) * scale
        small_ints = data.size > 0 and np.issubdtype(data.dtype, np.integer) and np.ptp(data) < 400
        if small_ints:
            counts = np.bincount(data - data.min())
            edges = np.arange(counts.size + 1) + data.min() - 0.5
        else:
            counts, edges = np.histogram(v[np.isfinite(v)], bins=120)
        pi.plot(edges, counts, stepMode="center", fillLevel=0, brush=pg.mkBrush(74, 163, 255, 140),
                pen=pg.mkPen(theme.ACCENT))
        theme.style_plot(pi, f"{table}: {col}", (col, unit), ("rows", ""))
        self.preview_label.setText(f"{table}.{col}: {data.size:,} rows, mean {np.nanmean(v):.4g} {unit}")

    # ---- actions -------------------------------------------------------------------------
    def use_for_map(self) -> bool:
        if self.path is None:
            return False
        self.s.set_run(self.path)
        if self.s.connected and "snapshots/after_programming" in self.info.get("datasets", {}):
            try:
                with RunRecord.open(self.path) as rec:
                    snap, _ = rec.dataset("snapshots/after_programming")
                if snap.shape == self.s.g_map.shape:
                    self.s.set_map(snap)
                else:
                    log.warning("snapshot shape %s differs from the connected array %s; map unchanged",
                                snap.shape, self.s.g_map.shape)
            except Exception as e:
                self.s.error.emit(*describe_error(e))
                return False
        return True

    def export_png(self, path=None) -> Optional[Path]:
        """Save the preview plot as PNG (asks for a file name when `path` is None)."""
        if path is None:
            default = str((self.path.with_suffix("") if self.path else Path("figure"))) + "-preview.png"
            path, _ = QFileDialog.getSaveFileName(self, "Export PNG", default, "PNG images (*.png)")
            if not path:
                return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.preview.grab().save(str(path), "PNG"):
            self.s.error.emit("Export failed", f"Could not write {path}; choose a folder you can write to.")
            return None
        log.info("exported %s", path)
        return path


def _item(parent, text: str, detail: str, ref=None) -> QTreeWidgetItem:
    it = QTreeWidgetItem([text, detail])
    if ref is not None:
        it.setData(0, Qt.UserRole, f"{ref[0]}:{ref[1]}")
    parent.addChild(it)
    return it
