"""Lab modules tab: the registered modules (built-ins and plugins, from the entry-point group
`memristor_hil.modules`) and Sequences in a list on the left, the chosen one's panel on the
right. A plugin that cannot be loaded is listed, greyed, with the reason."""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QSplitter,
                               QStackedWidget, QVBoxLayout, QWidget)

from hil.modules.plugins import discover, origin

from ..lab import SequencePanel, panel_for
from ..session import Session
from ..widgets import muted

log = logging.getLogger(__name__)
SEQUENCE = "Sequence"


class LabPanel(QWidget):
    title = "Lab modules"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.folder = QLineEdit("runs")
        self.folder.setToolTip("folder the module and sequence records are written to")
        found, broken = discover()
        self.list = QListWidget()
        self.list.setMaximumWidth(220)
        self.stack = QStackedWidget()
        self.panels: dict[str, QWidget] = {}
        folder = lambda: Path(self.folder.text().strip() or "runs")     # noqa: E731
        for name, module in found.items():
            self._add(name, f"{module.title or name}\n  {origin(name)}", panel_for(session, module, folder))
        self._add(SEQUENCE, "Sequence\n  file of steps", SequencePanel(session, folder))
        for name, why in broken.items():
            it = QListWidgetItem(f"{name}\n  broken")
            it.setFlags(Qt.NoItemFlags)
            it.setToolTip(why)
            self.list.addItem(it)
        self.list.currentRowChanged.connect(self._show)
        self.list.setCurrentRow(0)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("Modules"))
        ll.addWidget(self.list, 1)
        ll.addWidget(muted("records go to"))
        ll.addWidget(self.folder)
        split = QSplitter(Qt.Horizontal)
        split.addWidget(left)
        split.addWidget(self.stack)
        split.setStretchFactor(1, 1)
        lay = QHBoxLayout(self)
        lay.addWidget(split)

    def _add(self, key: str, text: str, panel: QWidget) -> None:
        it = QListWidgetItem(text)
        it.setData(Qt.UserRole, key)
        self.list.addItem(it)
        self.stack.addWidget(panel)
        self.panels[key] = panel

    def _show(self, row: int) -> None:
        it = self.list.item(row)
        key = it.data(Qt.UserRole) if it is not None else None
        if key in self.panels:
            self.stack.setCurrentWidget(self.panels[key])

    def show_module(self, name: str) -> QWidget:
        """Select `name` (a module name or 'Sequence') in the list; returns its panel."""
        for row in range(self.list.count()):
            if self.list.item(row).data(Qt.UserRole) == name:
                self.list.setCurrentRow(row)
        return self.panels[name]
