"""Worker threads for long `hil` operations: progress, live data and results by Qt signals.

A job is a plain function `fn(ctx)` that calls `hil` functions with `ctx.progress` and
`ctx.cancel`; it runs in a `JobThread` so the UI thread never blocks. Progress and live data
are throttled in the worker (at most one signal per `interval_s`, plus the final one), so a
fast job cannot flood the UI event queue.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from PySide6.QtCore import QThread, Signal

from hil.errors import Cancelled
from hil.progress import CancelToken, Progress

log = logging.getLogger(__name__)

#: shortest time between two progress (or live-data) signals of one job, seconds
SIGNAL_INTERVAL_S = 0.05


@dataclass
class JobContext:
    """What a job function gets: the cancel token and throttled progress / live-data emitters."""

    cancel: CancelToken
    _thread: "JobThread"
    interval_s: float = SIGNAL_INTERVAL_S
    _last_progress: float = field(default=-1.0)
    _last_partial: float = field(default=-1.0)

    def progress(self, p: Progress) -> None:
        """Progress callback for `hil` functions (called in the worker thread)."""
        now = time.monotonic()
        if p.done >= p.total or now - self._last_progress >= self.interval_s:
            self._last_progress = now
            self._thread.progressed.emit(p)

    def want_partial(self, force: bool = False) -> bool:
        """True if live data may be sent now (call before computing it, then `partial`)."""
        return force or time.monotonic() - self._last_partial >= self.interval_s * 2

    def partial(self, data: Any) -> None:
        """Send live data (a fresh object the worker no longer mutates) to the UI thread."""
        self._last_partial = time.monotonic()
        self._thread.partial.emit(data)


class TimedCancelToken(CancelToken):
    """A CancelToken that, the first time the stage sees it set, notes the time and calls
    `on_seen` in the worker (the GUI makes the outputs safe there, before the record is saved)."""

    def __init__(self, on_seen: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self.seen_at: Optional[float] = None
        self.on_seen = on_seen

    def raise_if_cancelled(self) -> None:
        if self.cancelled and self.seen_at is None:
            if self.on_seen is not None:
                self.on_seen()
            self.seen_at = time.monotonic()
        super().raise_if_cancelled()


class JobThread(QThread):
    """Runs `fn(ctx)` once; emits `succeeded(result)`, `cancelled(reason)` or `failed(exc)`."""

    progressed = Signal(object)
    partial = Signal(object)
    stopping = Signal()          # the stage saw the abort; outputs are safe, the record is being saved
    succeeded = Signal(object)
    cancelled = Signal(str)
    failed = Signal(object)

    def __init__(self, name: str, fn: Callable[[JobContext], Any], cancel: CancelToken, parent=None) -> None:
        super().__init__(parent)
        self.name = name
        self.fn = fn
        self.ctx = JobContext(cancel, self)
        self.outcome: Optional[str] = None
        self.started_at = time.monotonic()

    def run(self) -> None:  # worker thread
        try:
            result = self.fn(self.ctx)
        except Cancelled as e:
            self.outcome = "cancelled"
            log.warning("%s stopped: %s", self.name, e)
            self.cancelled.emit(str(e))
        except Exception as e:  # every error goes to the UI as a dialog
            self.outcome = "failed"
            log.error("%s failed: %s", self.name, e, exc_info=not _expected(e))
            self.failed.emit(e)
        else:
            self.outcome = "done"
            self.succeeded.emit(result)


def _expected(e: Exception) -> bool:
    from hil.errors import HilError
    return isinstance(e, HilError)
