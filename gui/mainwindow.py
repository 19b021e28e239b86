"""The main window: one tab per panel, a log pane, a big Abort (button and Esc), an
always-visible connection state, error dialogs, and layout / last station remembered."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox,
                               QPushButton, QSizePolicy, QTabWidget, QToolBar, QWidget)

from hil import __version__
from hil.modules.stability import format_duration

from . import theme
from .logpane import LogPane
from .panels.arraymap import ArrayMapPanel
from .panels.cellops import CellOpsPanel
from .panels.convolver import ConvolverPanel
from .panels.experiments import ExperimentsPanel
from .panels.hybrid import HybridPanel
from .panels.insitu import InsituPanel
from .panels.lab import LabPanel
from .panels.network import NetworkPanel
from .panels.programming import ProgrammingPanel
from .panels.runs import RunsPanel
from .panels.station import StationPanel
from .panels.sweeps import SweepsPanel
from .session import Session
from .widgets import scrollable

log = logging.getLogger(__name__)

#: (key, tab title, factory(session) -> QWidget) in tab order; tabs are numbered on screen and
#: the first nine are Ctrl+1…Ctrl+9
PANELS: list[tuple[str, str, Callable[[Session], QWidget]]] = [
    ("station", "Station", StationPanel),
    ("arraymap", "Array map", ArrayMapPanel),
    ("cellops", "Cell operations", CellOpsPanel),
    ("programming", "Programming", ProgrammingPanel),
    ("network", "Network", NetworkPanel),
    ("convolver", "Convolver", ConvolverPanel),
    ("hybrid", "Hybrid training", HybridPanel),
    ("experiments", "Experiments", ExperimentsPanel),
    ("lab", "Lab modules", LabPanel),
    ("runs", "Runs", RunsPanel),
    ("insitu", "In-situ training", InsituPanel),
    ("sweeps", "Sweeps", SweepsPanel),
]


#: first-launch height of the log pane
LOG_HEIGHT_PX = 130


def default_settings() -> QSettings:
    return QSettings("memristor-hil", "hil-gui")


class MainWindow(QMainWindow):
    def __init__(self, session: Optional[Session] = None, settings: Optional[QSettings] = None) -> None:
        super().__init__()
        self.setWindowTitle(f"memristor-hil — probe station ({__version__})")
        self.s = session or Session(self)
        self.settings = settings if settings is not None else default_settings()

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.panels: dict[str, QWidget] = {}
        for i, (key, title, factory) in enumerate(PANELS):
            w = factory(self.s)
            self.panels[key] = w
            self.tabs.addTab(scrollable(w), f"{i + 1} {title}")
        self.setCentralWidget(self.tabs)
        self._menus()

        # toolbar: title, running job, Abort
        tb = QToolBar("Main")
        tb.setObjectName("main_toolbar")
        tb.setMovable(False)
        name = QLabel("  memristor-hil")
        name.setStyleSheet(f"font-size: 13pt; font-weight: 700; color: {theme.ACCENT};")
        tb.addWidget(name)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        tb.addWidget(spacer)
        self.job_label = QLabel("idle")
        self.job_label.setStyleSheet(f"color: {theme.MUTED}; padding-right: 12px;")
        tb.addWidget(self.job_label)
        self.abort_btn = QPushButton("■  ABORT  (Esc)")
        self.abort_btn.setObjectName("abort")
        self.abort_btn.setToolTip("Stop the running job at its next step; outputs are left safe")
        self.abort_btn.clicked.connect(lambda: self.s.abort("aborted by the user (Abort button)"))
        tb.addWidget(self.abort_btn)
        self.addToolBar(Qt.TopToolBarArea, tb)
        self.esc = QShortcut(QKeySequence(Qt.Key_Escape), self)
        self.esc.setContext(Qt.ApplicationShortcut)
        self.esc.activated.connect(lambda: self.s.abort("aborted by the user (Esc)"))

        # log pane
        self.log_pane = LogPane()
        self.log_pane.attach()
        dock = QDockWidget("Log", self)
        dock.setObjectName("log_dock")
        dock.setWidget(self.log_pane)
        dock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable)
        self.addDockWidget(Qt.BottomDockWidgetArea, dock)
        self.log_dock = dock

        # status bar: connection state always visible
        self.conn_label = QLabel()
        self.conn_label.setStyleSheet("padding: 2px 10px; font-weight: 600;")
        self.clock_label = QLabel()
        self.clock_label.setStyleSheet(f"color: {theme.MUTED}; padding: 2px 10px;")
        self.statusBar().addPermanentWidget(self.conn_label)
        self.statusBar().addPermanentWidget(self.clock_label)

        self.errors: list[tuple[str, str]] = []
        self.s.error.connect(self.show_error)
        self.s.connection_changed.connect(self._update_state)
        self.s.connection_changed.connect(self._remember_station)
        self.s.busy_changed.connect(lambda _: self._update_state())
        self.s.job_started.connect(lambda n: self._update_state())
        self.s.status_message.connect(lambda m: self.statusBar().showMessage(m, 8000))
        self.s.chip.changed.connect(self._update_state)
        self._restore()
        self._update_state()

    # ---- state ---------------------------------------------------------------------------
    def _update_state(self) -> None:
        s = self.s
        busy = s.busy
        if s.connected:
            dot, text = (theme.WARN, "BUSY") if busy else (theme.OK, "CONNECTED")
            self.conn_label.setText(f"<span style='color:{dot}'>●</span> {text} · {s.station_label}")
            self.clock_label.setText(f"station clock {format_duration(s.chip.clock_s)}")
        elif busy:
            self.conn_label.setText(f"<span style='color:{theme.WARN}'>●</span> CONNECTING…")
        else:
            self.conn_label.setText(f"<span style='color:{theme.BAD}'>○</span> DISCONNECTED")
            self.clock_label.setText("")
        self.abort_btn.setEnabled(busy)
        self.job_label.setText(f"running: {s.job.name}" if busy and s.job is not None else "idle")

    def show_error(self, title: str, text: str) -> None:
        """Every error ends here: logged, remembered, and shown in a dialog."""
        self.errors.append((title, text))
        log.error("%s: %s", title, text.split("\n")[0])
        QMessageBox.critical(self, title, text)

    def panel(self, key: str) -> QWidget:
        return self.panels[key]

    def show_panel(self, key: str) -> None:
        self.tabs.setCurrentIndex(list(self.panels).index(key))

    # ---- menus ---------------------------------------------------------------------------
    def _menus(self) -> None:
        mb = self.menuBar()
        file = mb.addMenu("&File")
        act = file.addAction("&Open run…", self.open_run_dialog)
        act.setShortcut(QKeySequence.Open)
        file.addAction("Save &screenshots…", self.save_screenshots_dialog)
        file.addSeparator()
        self.quit_action = file.addAction("&Quit", self.close)
        self.quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        self.quit_action.setShortcutContext(Qt.ApplicationShortcut)
        view = mb.addMenu("&View")
        self.tab_actions = []
        for i, (key, title, _) in enumerate(PANELS):
            act = view.addAction(f"{i + 1} {title}", lambda k=key: self.show_panel(k))
            if i < 9:
                act.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
                act.setShortcutContext(Qt.ApplicationShortcut)
            self.tab_actions.append(act)
        help_ = mb.addMenu("&Help")
        help_.addAction("&About", self.about)

    def about_text(self) -> str:
        return (f"<b>memristor-hil {__version__}</b><br>Hardware-in-the-loop control of 1T1R memristor "
                f"crossbars: probe-station GUI.<br>Esc aborts the running job; Ctrl+1…9 switch tabs; "
                f"Ctrl+Q quits with the outputs off.")

    def about(self) -> None:
        QMessageBox.about(self, "About memristor-hil", self.about_text())

    def open_run_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open run record", "runs", "Run records (*.h5)")
        if path and self.panels["runs"].open_run(Path(path)):
            self.show_panel("runs")

    def save_screenshots_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save a screenshot of every tab into")
        if folder:
            for p in self.save_screenshots(Path(folder)):
                log.info("saved %s", p)

    def save_screenshots(self, folder: Path) -> list[Path]:
        """Every tab rendered to `folder`/NN-key.png as it is now; the current tab is kept."""
        folder.mkdir(parents=True, exist_ok=True)
        current, files = self.tabs.currentIndex(), []
        for i, key in enumerate(self.panels):
            self.tabs.setCurrentIndex(i)
            for _ in range(3):
                QApplication.processEvents()
            path = folder / f"{i + 1:02d}-{key}.png"
            self.grab().save(str(path), "PNG")
            files.append(path)
        self.tabs.setCurrentIndex(current)
        return files

    # ---- settings ------------------------------------------------------------------------
    def _restore(self) -> None:
        st = self.settings
        geo, state = st.value("window/geometry"), st.value("window/state")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1480, 940)
        if state is not None:
            self.restoreState(state)
        else:                            # the tabs get the height; the log a few lines
            self.resizeDocks([self.log_dock], [LOG_HEIGHT_PX], Qt.Vertical)
        tab = st.value("window/tab")
        if tab is not None:
            self.tabs.setCurrentIndex(int(tab))
        raw = st.value("station/last")
        if raw:
            try:
                c = json.loads(raw)
                self.panels["station"].set_choice(c.get("spec", "sim"), c.get("seed"), c.get("geometry", "yao"))
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring unreadable remembered station %r", raw)

    def _remember_station(self) -> None:
        if self.s.connected:
            self.settings.setValue("station/last", json.dumps(self.panels["station"].choice()))

    def save_settings(self) -> None:
        st = self.settings
        st.setValue("window/geometry", self.saveGeometry())
        st.setValue("window/state", self.saveState())
        st.setValue("window/tab", self.tabs.currentIndex())
        st.setValue("station/last", json.dumps(self.panels["station"].choice()))
        st.sync()

    def closeEvent(self, ev) -> None:
        self.save_settings()
        self.s.shutdown()
        self.log_pane.detach()
        super().closeEvent(ev)
