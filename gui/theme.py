"""One dark theme for the whole window: Qt palette, style sheet and pyqtgraph defaults."""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

BG = "#1b1d21"          # window background
PANEL = "#23262b"       # group boxes, plots
BASE = "#15171a"        # inputs, tables
TEXT = "#dfe2e7"
MUTED = "#8b929c"
ACCENT = "#4aa3ff"
OK = "#3ecf8e"
WARN = "#f0b429"
BAD = "#ff5c5c"
GRID_ALPHA = 0.25

#: colours of pulse operations in history plots (SET, RESET, FORM)
OP_COLORS = {"SET": "#3ecf8e", "RESET": "#ff6b6b", "FORM": "#f0b429"}
#: distinct, bright curve colours for a few curves on the dark background
CURVE_COLORS = ("#4aa3ff", "#3ecf8e", "#f0b429", "#ff6b9a", "#b48cff", "#5fd7d7", "#ff8c42", "#c8d64a")
#: colormap of conductance heat maps
MAP_CMAP = "viridis"

STYLE = f"""
QWidget {{ color: {TEXT}; font-size: 10pt; }}
QMainWindow, QDialog {{ background: {BG}; }}
QGroupBox {{ background: {PANEL}; border: 1px solid #343840; border-radius: 6px;
            margin-top: 14px; padding: 8px 6px 6px 6px; font-weight: 600; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; color: {ACCENT}; }}
QTabWidget::pane {{ border: 1px solid #343840; border-radius: 4px; top: -1px; }}
QTabBar::tab {{ background: {PANEL}; padding: 6px 9px; border: 1px solid #343840;
               border-bottom: none; border-top-left-radius: 4px; border-top-right-radius: 4px;
               margin-right: 2px; color: {MUTED}; }}
QTabBar::tab:selected {{ background: {BG}; color: {TEXT}; border-bottom: 2px solid {ACCENT}; }}
QPushButton {{ background: #2f343b; border: 1px solid #444a53; border-radius: 4px; padding: 5px 12px; }}
QPushButton:hover {{ background: #3a4048; }}
QPushButton:disabled {{ color: #5d636c; background: #262a2f; border-color: #30343a; }}
QPushButton[primary="true"] {{ background: #1f5fa8; border-color: #2f78cc; font-weight: 600; }}
QPushButton[primary="true"]:hover {{ background: #2a6fc0; }}
QPushButton[primary="true"]:disabled {{ background: #263342; color: #6b7b8e; }}
QPushButton#abort {{ background: #b3261e; border: 1px solid #e04a40; color: white; font-weight: 700;
                     font-size: 12pt; padding: 6px 22px; border-radius: 5px; }}
QPushButton#abort:hover {{ background: #d03228; }}
QPushButton#abort:disabled {{ background: #3a2423; color: #8a6360; border-color: #4a2f2d; }}
QLineEdit, QSpinBox, QDoubleSpinBox, QComboBox, QPlainTextEdit, QTreeWidget, QTableWidget {{
    background: {BASE}; border: 1px solid #3a3f47; border-radius: 3px; padding: 3px; }}
QDoubleSpinBox[invalid="true"], QSpinBox[invalid="true"] {{ border: 1px solid {BAD}; background: #2a1717; }}
QHeaderView::section {{ background: {PANEL}; color: {MUTED}; border: none; padding: 4px; }}
QProgressBar {{ background: {BASE}; border: 1px solid #3a3f47; border-radius: 4px; text-align: center;
               height: 18px; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 3px; }}
QStatusBar {{ background: {PANEL}; border-top: 1px solid #343840; }}
QDockWidget::title {{ background: {PANEL}; padding: 4px; }}
QLabel[muted="true"] {{ color: {MUTED}; }}
QLabel[reason="true"] {{ color: {BAD}; }}
QToolBar {{ background: {PANEL}; border-bottom: 1px solid #343840; spacing: 8px; padding: 4px; }}
"""


def apply(app: QApplication) -> None:
    """Dark Fusion palette, style sheet and pyqtgraph defaults (call before building widgets)."""
    app.setStyle("Fusion")
    pal = QPalette()
    for role, col in ((QPalette.Window, BG), (QPalette.WindowText, TEXT), (QPalette.Base, BASE),
                      (QPalette.AlternateBase, PANEL), (QPalette.Text, TEXT), (QPalette.Button, "#2f343b"),
                      (QPalette.ButtonText, TEXT), (QPalette.Highlight, ACCENT),
                      (QPalette.HighlightedText, "#ffffff"), (QPalette.ToolTipBase, PANEL),
                      (QPalette.ToolTipText, TEXT), (QPalette.PlaceholderText, MUTED)):
        pal.setColor(role, QColor(col))
    pal.setColor(QPalette.Disabled, QPalette.Text, QColor("#5d636c"))
    pal.setColor(QPalette.Disabled, QPalette.ButtonText, QColor("#5d636c"))
    app.setPalette(pal)
    app.setStyleSheet(STYLE)
    f = QFont(app.font())
    f.setPointSize(10)
    app.setFont(f)
    configure_pyqtgraph()


def configure_pyqtgraph() -> None:
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True, background=PANEL, foreground=TEXT)


AXIS_LINE = "#4a5059"
#: axis titles: as bright as the text, not dim
LABEL_STYLE = {"color": TEXT, "font-size": "9.5pt"}
#: SI base units an axis may carry (values in them; the prefix is chosen for the range)
SI_UNITS = ("S", "A", "V", "s", "Ω", "W", "J")


def style_plot(plot: pg.PlotItem, title: str = "", x: tuple = ("", ""), y: tuple = ("", "")) -> pg.PlotItem:
    """Title, axis labels with units and a faint grid, consistently."""
    if title:
        plot.setTitle(f"<span style='color:{TEXT};font-size:10.5pt;font-weight:600'>{title}</span>")
    for ax, (name, unit) in (("bottom", x), ("left", y)):
        axis = plot.getAxis(ax)
        axis.setPen(AXIS_LINE)            # (pyqtgraph colours the title with the last pen set:
        axis.setTextPen(TEXT)             # line first, text last, or the titles come out dim)
        if unit in SI_UNITS:              # data in SI: pyqtgraph picks the prefix (µS, ns, mV)
            axis.enableAutoSIPrefix(True)
            plot.setLabel(ax, name, units=unit, **LABEL_STYLE)
        else:                             # display units or a count: never a '(×0.001)' scale
            axis.enableAutoSIPrefix(False)
            if name:
                plot.setLabel(ax, f"{name} ({unit})" if unit else name, **LABEL_STYLE)
    plot.showGrid(x=True, y=True, alpha=GRID_ALPHA)
    return plot


def level_colors(n: int) -> list:
    """`n` distinct colours along the map colormap (for per-level curves)."""
    cmap = pg.colormap.get(MAP_CMAP)
    return [cmap.map(0.08 + 0.9 * i / max(1, n - 1), mode="qcolor") for i in range(n)]
