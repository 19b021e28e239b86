"""Heat maps of every PE (µS) with a shared colour bar, hover readout and cell selection."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QGraphicsRectItem

from hil.geometry import Geometry

from . import theme

#: selection modes of the map
MODES = ("cell", "rectangle", "row", "column")
#: at most this many PEs side by side; more wrap to the next row
MAX_PE_COLUMNS = 8
SELECT_RGBA = (255, 255, 255, 120)
#: outline around the selection's bounding box on each PE
SELECT_OUTLINE = "#ffd24a"


class PEImage(pg.ImageItem):
    """The conductance image of one PE; forwards hover, clicks and drags to its MapView."""

    def __init__(self, pe: int, view: "MapView") -> None:
        super().__init__()
        self.pe, self.view = pe, view
        self.setAcceptHoverEvents(True)

    def _cell(self, pos) -> Optional[tuple[int, int]]:
        r, c = int(np.floor(pos.y())), int(np.floor(pos.x()))
        g = self.view.geometry
        if g is None or not (0 <= r < g.rows and 0 <= c < g.cols):
            return None
        return r, c

    def hoverEvent(self, ev) -> None:
        if ev.isExit():
            self.view.hovered.emit(-1, -1, -1)
            return
        rc = self._cell(ev.pos())
        self.view.hovered.emit(*((self.pe, *rc) if rc else (-1, -1, -1)))

    def mouseClickEvent(self, ev) -> None:
        if ev.button() != Qt.LeftButton:
            ev.ignore()
            return
        rc = self._cell(ev.pos())
        if rc is None:
            ev.ignore()
            return
        ev.accept()
        add = bool(ev.modifiers() & (Qt.ShiftModifier | Qt.ControlModifier))
        self.view.click(self.pe, rc[0], rc[1], add)

    def mouseDragEvent(self, ev) -> None:
        if ev.button() != Qt.LeftButton or self.view.mode != "rectangle":
            ev.ignore()
            return
        ev.accept()
        a, b = ev.buttonDownPos(), ev.pos()
        add = bool(ev.modifiers() & (Qt.ShiftModifier | Qt.ControlModifier))
        self.view.drag(self.pe, (a.y(), a.x()), (b.y(), b.x()), ev.isFinish(), add)


class MapView(pg.GraphicsLayoutWidget):
    """One image per PE in a grid, a colour bar in µS, selection overlay and rubber band."""

    hovered = Signal(int, int, int)                   # pe, row, col (-1 when outside)
    selection_requested = Signal(object, bool)        # (n_pe, rows, cols) bool mask, add

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setBackground(theme.PANEL)
        self.geometry: Optional[Geometry] = None
        self.mode = "cell"
        self.images: list[PEImage] = []
        self.overlays: list[pg.ImageItem] = []
        self.outlines: list = []
        self.views: list[pg.ViewBox] = []
        self.bands: list[QGraphicsRectItem] = []
        self.levels = (0.0, 25.0)
        self.cmap = pg.colormap.get(theme.MAP_CMAP)
        self.bar: Optional[pg.ColorBarItem] = None
        self._data_us: Optional[np.ndarray] = None

    # ---- building ----------------------------------------------------------------------
    def set_geometry(self, g: Optional[Geometry]) -> None:
        self.clear()
        self.images, self.overlays, self.views, self.bands, self.outlines = [], [], [], [], []
        self.bar = None
        self.geometry = g
        if g is None:
            self.addLabel("Connect a station to see the array", color=theme.MUTED, size="12pt")
            return
        ncol = min(g.n_pe, MAX_PE_COLUMNS)
        blank = np.full((g.rows, g.cols), np.nan, np.float32)
        for pe in range(g.n_pe):
            r, c = divmod(pe, ncol)
            self.addLabel(f"PE {pe}", row=2 * r, col=c, color=theme.MUTED, size="9pt")
            self.ci.layout.setRowFixedHeight(2 * r, 18)
            self.ci.layout.setRowStretchFactor(2 * r + 1, 10)
            vb = self.addViewBox(row=2 * r + 1, col=c, lockAspect=True, invertY=True, enableMouse=False,
                                 enableMenu=False)
            vb.setBorder(pg.mkPen("#3a3f47"))
            img = PEImage(pe, self)
            img.setImage(blank, autoLevels=False, levels=self.levels)
            ov = pg.ImageItem(np.zeros((g.rows, g.cols, 4), np.uint8))
            ov.setAcceptedMouseButtons(Qt.NoButton)
            ov.setAcceptHoverEvents(False)
            ov.setZValue(5)
            band = QGraphicsRectItem()
            pen = QPen(QColor(theme.ACCENT))
            pen.setCosmetic(True)
            pen.setWidth(2)
            band.setPen(pen)
            band.setZValue(10)
            band.hide()
            outline = QGraphicsRectItem()
            pen = QPen(QColor(SELECT_OUTLINE))
            pen.setCosmetic(True)
            pen.setWidth(2)
            outline.setPen(pen)
            outline.setZValue(9)
            outline.hide()
            for item in (img, ov, band, outline):
                vb.addItem(item)
            self.outlines.append(outline)
            vb.setRange(QRectF(0, 0, g.cols, g.rows), padding=0.02)
            self.images.append(img)
            self.overlays.append(ov)
            self.views.append(vb)
            self.bands.append(band)
        self.bar = pg.ColorBarItem(values=self.levels, colorMap=self.cmap, label="G (µS)", interactive=True,
                                   width=16, rounding=0.1)
        self.bar.getAxis("right").setTextPen(theme.MUTED)
        self.bar.setImageItem(self.images)
        self.addItem(self.bar, row=0, col=ncol, rowspan=2 * ((g.n_pe + ncol - 1) // ncol))

    # ---- data ----------------------------------------------------------------------------
    def set_data(self, g_us: np.ndarray) -> None:
        """Show conductances (µS), shaped (n_pe, rows, cols); NaN = not read yet."""
        self._data_us = np.asarray(g_us, np.float32)
        for pe, img in enumerate(self.images):
            img.setImage(self._data_us[pe], autoLevels=False, levels=self.levels)

    def image_data(self, pe: int) -> Optional[np.ndarray]:
        return None if pe >= len(self.images) else self.images[pe].image

    def set_levels(self, lo: float, hi: float) -> None:
        if not hi > lo:
            hi = lo + 1e-3
        self.levels = (float(lo), float(hi))
        if self.bar is not None:
            self.bar.setLevels(self.levels)
        for img in self.images:
            img.setLevels(self.levels)

    def set_colormap(self, name: str) -> None:
        self.cmap = pg.colormap.get(name)
        if self.bar is not None:
            self.bar.setColorMap(self.cmap)

    def set_selection(self, mask: Optional[np.ndarray]) -> None:
        """Tint the selected cells and outline their bounding box on each PE."""
        for pe, ov in enumerate(self.overlays):
            rgba = np.zeros(ov.image.shape, np.uint8)
            outline = self.outlines[pe]
            outline.hide()
            if mask is not None:
                rgba[mask[pe]] = SELECT_RGBA
                rows, cols = np.nonzero(mask[pe])
                if rows.size:
                    outline.setRect(QRectF(cols.min(), rows.min(), cols.max() - cols.min() + 1,
                                           rows.max() - rows.min() + 1))
                    outline.show()
            ov.setImage(rgba, autoLevels=False, levels=(0, 255))

    # ---- interaction ---------------------------------------------------------------------
    def click(self, pe: int, row: int, col: int, add: bool) -> None:
        g = self.geometry
        mask = np.zeros(g.shape, bool)
        if self.mode == "row":
            mask[pe, row, :] = True
        elif self.mode == "column":
            mask[pe, :, col] = True
        else:
            mask[pe, row, col] = True
        self.selection_requested.emit(mask, add)

    def drag(self, pe: int, a, b, finish: bool, add: bool) -> None:
        g = self.geometry
        r0, r1 = sorted((int(np.clip(np.floor(a[0]), 0, g.rows - 1)), int(np.clip(np.floor(b[0]), 0, g.rows - 1))))
        c0, c1 = sorted((int(np.clip(np.floor(a[1]), 0, g.cols - 1)), int(np.clip(np.floor(b[1]), 0, g.cols - 1))))
        band = self.bands[pe]
        if not finish:
            band.setRect(QRectF(c0, r0, c1 - c0 + 1, r1 - r0 + 1))
            band.show()
            return
        band.hide()
        self.select_rectangle(pe, r0, r1, c0, c1, add)

    def select_rectangle(self, pe: int, r0: int, r1: int, c0: int, c1: int, add: bool = False) -> None:
        """Select rows r0..r1 × cols c0..c1 (inclusive) of one PE."""
        mask = np.zeros(self.geometry.shape, bool)
        mask[pe, r0:r1 + 1, c0:c1 + 1] = True
        self.selection_requested.emit(mask, add)
