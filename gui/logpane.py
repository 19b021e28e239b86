"""Log pane: a logging.Handler that forwards records from any thread to a read-only text view."""
from __future__ import annotations

import html
import logging

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QPlainTextEdit

from . import theme

LEVEL_COLORS = {logging.DEBUG: theme.MUTED, logging.INFO: theme.TEXT, logging.WARNING: theme.WARN,
                logging.ERROR: theme.BAD, logging.CRITICAL: theme.BAD}
#: loggers shown in the pane at INFO and above (unless configured otherwise)
LOGGERS = ("hil", "gui", "sim_backend", "drivers")
MAX_LINES = 5000


class _Emitter(QObject):
    record = Signal(int, str)


class QtLogHandler(logging.Handler):
    """Thread-safe: the record is formatted in the emitting thread and delivered by signal."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.emitter = _Emitter()
        self.setFormatter(logging.Formatter("%(asctime)s  %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record).split("\nTraceback", 1)[0]
            self.emitter.record.emit(record.levelno, msg)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


class LogPane(QPlainTextEdit):
    """Read-only, colour-coded log view; `attach()` / `detach()` install the handler."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(MAX_LINES)
        self.setStyleSheet("font-family: 'DejaVu Sans Mono', monospace; font-size: 9pt;")
        self.handler = QtLogHandler()
        self.handler.emitter.record.connect(self.append_record)
        self._saved_levels: dict = {}

    def attach(self) -> None:
        root = logging.getLogger()
        if self.handler not in root.handlers:
            root.addHandler(self.handler)
        for name in LOGGERS:
            lg = logging.getLogger(name)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                self._saved_levels[name] = lg.level
                lg.setLevel(logging.INFO)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)
        self._saved_levels.clear()

    def append_record(self, level: int, text: str) -> None:
        color = LEVEL_COLORS.get(level, theme.TEXT)
        self.appendHtml(f"<span style='color:{color}'>{html.escape(text)}</span>")
