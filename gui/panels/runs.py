"""Runs tab: a folder of run records as a sortable table (date, kind, station, status, key
figure — `hil.runstore.index`, damaged files flagged), and the record chosen from it (or opened)
read-only: its contents, a sequence's steps, a preview of any dataset (lines for series, images
for 2-D and up) or table column; any dataset or table exported to CSV or NPY
(`hil.runstore.export`), the preview to PNG (300 dpi) or SVG; a programming run sent to the
array map (cell history)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pyqtgraph as pg
from pyqtgraph.exporters import ImageExporter
from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFileDialog, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QPushButton, QSplitter, QTableWidget,
                               QTableWidgetItem, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from hil.errors import ConfigError, HilError
from hil.runstore import RunRecord
from hil.runstore.export import export_item
from hil.runstore.index import CORRUPT, INTERRUPTED, index_folder, key_figure

from .. import theme
from ..session import Session, describe_error
from ..widgets import muted, plot_widget

log = logging.getLogger(__name__)
US_PER_S = 1e6
GAP = 2          # blank columns between PEs in a snapshot mosaic
FIGURE_DPI = 300
INCH_M = 0.0254
#: the folder table's columns: header, RunEntry attribute
COLUMNS = (("created", "created"), ("kind", "kind"), ("station", "station"), ("status", "status"),
           ("key figure", "key_figure"), ("file", "name"))


def mosaic(arr: np.ndarray, per_row: Optional[int] = None) -> np.ndarray:
    """(n, rows, cols) -> one image of the n tiles, `per_row` side by side (all by default), NaN gaps."""
    n, r, c = arr.shape
    per_row = per_row or n
    lines = math.ceil(n / per_row)
    out = np.full((lines * (r + GAP) - GAP, per_row * (c + GAP) - GAP), np.nan, np.float32)
    for p in range(n):
        y, x = divmod(p, per_row)
        out[y * (r + GAP):y * (r + GAP) + r, x * (c + GAP):x * (c + GAP) + c] = arr[p]
    return out


def as_image(arr: np.ndarray) -> Optional[np.ndarray]:
    """The image of a 2-D+ array (3-D: tiles side by side, 4-D+: tiles of the last two axes in a
    near-square grid); None for a series (1-D, or 2-D with a single row or column)."""
    if arr.ndim < 2 or arr.ndim == 2 and 1 in arr.shape:
        return None
    if arr.ndim == 2:
        return arr.astype(np.float32)
    if arr.ndim == 3:
        return mosaic(arr)
    tiles = arr.reshape(-1, *arr.shape[-2:])
    return mosaic(tiles, math.ceil(math.sqrt(tiles.shape[0])))


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
        self.export_btn = QPushButton("Export figure…")
        self.export_btn.setToolTip("the preview as PNG (300 dpi) or SVG")
        self.export_btn.clicked.connect(lambda: self.export_figure())
        self.export_data_btn = QPushButton("Export data…")
        self.export_data_btn.setToolTip("the selected dataset or table as CSV or NPY")
        self.export_data_btn.clicked.connect(lambda: self.export_data())
        self.folder = QLineEdit("runs")
        self.folder.setToolTip("folder of run records to list")
        self.folder.returnPressed.connect(lambda: self.list_folder())
        choose = QPushButton("Choose folder…")
        choose.clicked.connect(self._choose_folder)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(lambda: self.list_folder())
        self.folder_note = muted("")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([h for h, _ in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(110)
        self.table.itemDoubleClicked.connect(lambda it: self.open_row(it.row()))
        self.table.itemSelectionChanged.connect(self._row_selected)
        self.header = QLabel("No run open")
        self.header.setStyleSheet("font-size: 12pt; font-weight: 600;")
        self.header.setWordWrap(True)
        self.sub = muted("")
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["item", "details"])
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.tree.itemSelectionChanged.connect(self._preview_selected)
        self.column_box = QComboBox()
        self.column_box.currentTextChanged.connect(lambda _: self._preview_selected())
        self.preview = plot_widget("Preview", ("", ""), ("", ""))
        self.preview_label = muted("Select a dataset or table on the left.")

        fbar = QHBoxLayout()
        fbar.addWidget(QLabel("folder"))
        fbar.addWidget(self.folder, 1)
        fbar.addWidget(choose)
        fbar.addWidget(refresh)
        bar = QHBoxLayout()
        bar.addWidget(self.path_edit, 1)
        bar.addWidget(browse)
        bar.addWidget(self.to_map_btn)
        bar.addWidget(self.export_data_btn)
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
        split.setSizes([460, 740])
        detail = QWidget()
        dl = QVBoxLayout(detail)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.addLayout(bar)
        dl.addWidget(split, 1)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(fbar)
        tl.addWidget(self.table, 1)
        tl.addWidget(self.folder_note)
        vsplit = QSplitter(Qt.Vertical)
        vsplit.addWidget(top)
        vsplit.addWidget(detail)
        vsplit.setStretchFactor(0, 1)
        vsplit.setStretchFactor(1, 4)
        lay = QVBoxLayout(self)
        lay.addWidget(vsplit, 1)

        self.path: Optional[Path] = None
        self.entries: list = []
        self.info: dict = {}
        self.preview_data = None
        self._img: Optional[pg.ImageItem] = None
        self._cbar = None
        self.s.connection_changed.connect(self._enable)
        self._enable()
        if Path(self.folder.text()).is_dir():
            self.list_folder()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open run record", self.path_edit.text() or "runs",
                                              "Run records (*.h5)")
        if path:
            self.open_run(path)

    def _enable(self) -> None:
        self.to_map_btn.setEnabled(self.path is not None)
        self.export_btn.setEnabled(self.path is not None)
        self.export_data_btn.setEnabled(self.selected_ref() is not None)

    # ---- the folder ----------------------------------------------------------------------
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of run records", self.folder.text() or "runs")
        if folder:
            self.list_folder(folder)

    def list_folder(self, folder=None) -> bool:
        """List the records of `folder` (default: the folder field) in the table, newest first."""
        if folder is not None:
            self.folder.setText(str(folder))
        try:
            self.entries = index_folder(self.folder.text().strip() or ".")
        except HilError as e:
            self.folder_note.setText(str(e))
            self.s.error.emit(*describe_error(e))
            return False
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self.entries))
        for r, e in enumerate(self.entries):
            bad = e.status in (CORRUPT, INTERRUPTED)
            for c, (_, attr) in enumerate(COLUMNS):
                text = str(getattr(e, attr))
                if attr == "created":
                    text = text[:19].replace("T", " ")
                elif attr == "key_figure" and bad:
                    text = e.problem
                it = QTableWidgetItem(text)
                it.setData(Qt.UserRole, e.path)
                if bad:
                    it.setForeground(pg.mkColor(theme.BAD if e.status == CORRUPT else theme.WARN))
                    it.setToolTip(e.problem)
                self.table.setItem(r, c, it)
        self.table.setSortingEnabled(True)
        n_bad = sum(e.status in (CORRUPT, INTERRUPTED) for e in self.entries)
        self.folder_note.setText(f"{len(self.entries)} record(s) in {self.folder.text()}"
                                 + (f", {n_bad} damaged or cut off (hover for why)" if n_bad else "")
                                 + " · double-click a row to open it")
        return True

    def row_texts(self) -> list[list[str]]:
        """The table as displayed (sorted as on screen)."""
        return [[self.table.item(r, c).text() for c in range(self.table.columnCount())]
                for r in range(self.table.rowCount())]

    def _row_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.open_row(rows[0].row())

    def open_row(self, row: int) -> bool:
        """Open the record of table row `row` (as displayed)."""
        it = self.table.item(row, 0)
        return it is not None and self.open_run(it.data(Qt.UserRole))

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
        steps = sequence_steps(info["groups"])
        if steps:
            sec = _item(root, "sequence steps", f"{len(steps)}")
            for label, detail in steps:
                _item(sec, label, detail)
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
            top = self.tree.topLevelItem(i)
            top.setExpanded(i < 3 or top.text(0) == "sequence steps")
        self._enable()
        # preview the most useful dataset first
        series = [d for d in info["datasets"] if d.endswith("result/g_s")]
        for name in ("snapshots/after_programming", *series, *info["datasets"]):
            if name in info["datasets"]:
                self.select_item("dataset", name)
                break
        self.tree.scrollToTop()
        if Path(self.folder.text().strip() or ".").resolve() != self.path.parent.resolve():
            self.list_folder(self.path.parent)          # show the record among its neighbours
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
        self._enable()
        ref = self.selected_ref()
        if ref is None:
            return
        kind, name = ref
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
        img = as_image(arr)
        if img is not None:
            img = img * scale
            self._img = pg.ImageItem(img)
            pi.addItem(self._img)
            self.preview.getViewBox().invertY(True)
            self.preview.getViewBox().setAspectLocked(0.5 <= img.shape[0] / img.shape[1] <= 2)
            finite = img[np.isfinite(img)]
            lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0, 1))
            self._cbar = pg.ColorBarItem(values=(float(lo), float(max(hi, lo + 1e-9))),
                                         colorMap=pg.colormap.get(theme.MAP_CMAP), label=f"{name.split('/')[-1]} "
                                         f"({unit})" if unit else name.split("/")[-1], interactive=True)
            self._cbar.setImageItem(self._img, insert_in=pi)
            tiles = {3: " (tiles side by side)"}.get(arr.ndim, " (tiles of the last two axes)" if arr.ndim > 3 else "")
            theme.style_plot(pi, name, ("column" + tiles, ""), ("row", ""))
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

    def selected_ref(self) -> Optional[tuple[str, str]]:
        """('dataset' or 'table', name) of the tree item selected, if it is one."""
        items = self.tree.selectedItems()
        ref = items[0].data(0, Qt.UserRole) if items and self.path is not None else None
        return tuple(str(ref).split(":", 1)) if ref else None

    def export_data(self, path=None) -> Optional[Path]:
        """Write the selected dataset or table to CSV or NPY (asks for the file when `path` is None)."""
        ref = self.selected_ref()
        if ref is None:
            return None
        if path is None:
            default = f"{self.path.with_suffix('')}-{ref[1].replace('/', '-')}.csv"
            path, _ = QFileDialog.getSaveFileName(self, "Export data", default, "CSV (*.csv);;NumPy (*.npy)")
            if not path:
                return None
        try:
            out = export_item(self.path, ref[1], path)
        except HilError as e:
            self.s.error.emit("Export failed", str(e))
            return None
        log.info("exported %s of %s to %s", ref[1], self.path, out)
        return out

    def export_figure(self, path=None) -> Optional[Path]:
        """Save the preview as PNG (300 dpi) or SVG, by the file's suffix (asks when `path` is None)."""
        if path is None:
            default = str((self.path.with_suffix("") if self.path else Path("figure"))) + "-preview.png"
            path, _ = QFileDialog.getSaveFileName(self, "Export figure", default, "PNG (*.png);;SVG (*.svg)")
            if not path:
                return None
        path = Path(path)
        try:
            if path.suffix.lower() not in (".png", ".svg"):
                raise ConfigError(f"export to {path}: the figure file must end in .png or .svg")
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (self._svg(path) if path.suffix.lower() == ".svg" else self._png(path)):
                raise HilError(f"could not write {path}; choose a folder you can write to")
        except (HilError, OSError) as e:
            self.s.error.emit("Export failed", str(e))
            return None
        log.info("exported %s", path)
        return path

    export_png = export_figure

    def _svg(self, path: Path) -> bool:
        """The preview as it is drawn, as SVG (pyqtgraph's SVG exporter fails on some items)."""
        gen = QSvgGenerator()
        gen.setFileName(str(path))
        size = QSize(self.preview.width(), self.preview.height())
        gen.setSize(size)
        gen.setViewBox(QRect(0, 0, size.width(), size.height()))
        gen.setTitle(self.header.text())
        painter = QPainter()
        if not painter.begin(gen):
            return False
        try:
            self.preview.render(painter)
        finally:
            painter.end()
        return path.exists()

    def _png(self, path: Path) -> bool:
        """The preview at 300 dpi: rendered at 3x its screen size (so ~3.3 inches wide per 1000
        screen pixels) with the resolution stored in the file."""
        exp = ImageExporter(self.preview.scene())
        exp.parameters()["width"] = 3 * max(1, self.preview.width())
        img = exp.export(toBytes=True)
        dpm = round(FIGURE_DPI / INCH_M)
        img.setDotsPerMeterX(dpm)
        img.setDotsPerMeterY(dpm)
        return img.save(str(path), "PNG")


def sequence_steps(groups: dict) -> list[tuple[str, str]]:
    """(label, state and key figure) of each step of a sequence record, from its group attrs."""
    out = []
    for g, a in sorted(groups.items()):
        parts = g.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["sequence", "steps"] and parts[2].isdigit():
            state = "done" if a.get("done") else "not done"
            fig = key_figure(a.get("summary") or {})
            out.append((f"{int(parts[2]) + 1}. {a.get('label', '?')}", f"{a.get('type', '?')} · {state}"
                        + (f" · {fig}" if fig else "")))
    return out


def _item(parent, text: str, detail: str, ref=None) -> QTreeWidgetItem:
    it = QTreeWidgetItem([text, detail])
    if ref is not None:
        it.setData(0, Qt.UserRole, f"{ref[0]}:{ref[1]}")
    parent.addChild(it)
    return it
