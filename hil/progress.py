"""Cancel token and progress reporting shared by every long operation."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

from hil.errors import Cancelled


class CancelToken:
    """Thread-safe flag a UI or signal handler sets to stop a long operation."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled by user") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)


@dataclass(frozen=True)
class Progress:
    """One progress report: `done` of `total` units, with a short message."""

    done: float
    total: float
    message: str = ""
    unit: str = "cells"

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """Progress callback that ignores every report."""


#: a factory of progress callbacks, one per named step of a long job: bars(description, unit)
Bars = Callable[[str, str], ProgressCallback]


def no_bars(desc: str, unit: str) -> ProgressCallback:
    """A `Bars` that shows nothing."""
    return no_progress


def ensure(cancel: Optional[CancelToken], progress: Optional[ProgressCallback]):
    """Return usable (cancel, progress) objects for optional arguments."""
    return cancel or CancelToken(), progress or no_progress
