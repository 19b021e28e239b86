"""Tabs whose `hil` modules arrive in phase 2 (network, convolver, hybrid training).

Each is a `PendingPanel` naming the module it needs; phase 2 replaces the factory in
`gui.mainwindow.PANELS` with the real panel class (same constructor: `Panel(session)`)."""
from __future__ import annotations

import importlib

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QLabel, QSizePolicy, QVBoxLayout, QWidget

from .. import theme
from ..session import Session


class PendingPanel(QWidget):
    """A clear 'requires the CNN module' state, listing what the tab will show."""

    def __init__(self, session: Session, title: str, modules: tuple, what: str, parent=None) -> None:
        super().__init__(parent)
        self.s, self.title, self.modules = session, title, modules
        missing = [m for m in modules if not _importable(m)]
        card = QFrame()
        card.setObjectName("card")
        card.setStyleSheet(f"#card {{ background: {theme.PANEL}; border: 1px solid #3a3f47; border-radius: 10px; }}")
        card.setFixedWidth(680)
        card.setSizePolicy(QSizePolicy.Fixed, QSizePolicy.Minimum)
        card.setMinimumHeight(220)
        head = QLabel(f"{title} requires the CNN module")
        head.setStyleSheet(f"font-size: 15pt; font-weight: 600; color: {theme.WARN};")
        mods = QLabel("Needs " + ", ".join(f"<code>{m}</code>" for m in modules) +
                      (f" — not installed yet: {', '.join(missing)}" if missing else " — available; "
                       "the view arrives with the next GUI update"))
        mods.setTextFormat(Qt.RichText)
        mods.setWordWrap(True)
        body = QLabel(what)
        body.setWordWrap(True)
        body.setStyleSheet(f"color: {theme.MUTED}; font-size: 10.5pt;")
        self.status_label = head
        cl = QVBoxLayout(card)
        cl.setContentsMargins(28, 24, 28, 24)
        cl.setSpacing(12)
        cl.addWidget(head)
        cl.addWidget(mods)
        cl.addWidget(body)
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        lay.addWidget(card, 0, Qt.AlignHCenter)
        lay.addStretch(2)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:
        return False


def network_panel(session: Session) -> QWidget:
    return PendingPanel(session, "Network", ("hil.mapping", "hil.hwnet"),
                        "The mCNN allocation plan drawn on the PEs — which layer and which replica group "
                        "sits where — and the weight transfer with progress and abort.")


def convolver_panel(session: Session) -> QWidget:
    return PendingPanel(session, "Convolver", ("hil.mapping", "hil.hwnet"),
                        "Pick a digit; the hardware feature maps beside the software ones and their "
                        "difference, for each replica group.")


def hybrid_panel(session: Session) -> QWidget:
    return PendingPanel(session, "Hybrid training", ("hil.hybrid",),
                        "Start / stop hybrid training; live accuracy and loss per epoch, per-group "
                        "accuracy bars before and after, and the final table beside the paper's numbers.")
