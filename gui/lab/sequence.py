"""Sequence panel: open a sequence file (hil.modules.sequencer: modules, programming, loops and
delays), check all of it against the connected station, and run it in a worker into one record
(kind "sequence", like `hil sequence run`) with a step list that shows each step's progress;
"Resume…" continues a cut-off sequence record (like `hil sequence run --resume`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QLineEdit, QListWidget, QPushButton,
                               QVBoxLayout, QWidget)

from hil.errors import HilError
from hil.modules.sequencer import load_sequence, run_sequence, stored_sequence
from hil.runstore.lifecycle import run_record

from .. import theme
from ..panels.programming import station_snapshot, unique_path
from ..session import Session
from ..widgets import muted
from .base import RunControls, note_write

log = logging.getLogger(__name__)
MARKS = {"pending": "○", "running": "▶", "done": "✓", "stopped": "■"}


class SequencePanel(QWidget):
    def __init__(self, session: Session, folder: Callable[[], Path], parent=None) -> None:
        super().__init__(parent)
        self.s, self.folder = session, folder
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("sequences/….toml")
        self.path_edit.returnPressed.connect(lambda: self.load(self.path_edit.text().strip()))
        browse = QPushButton("Open…")
        browse.clicked.connect(self._browse)
        self.resume_btn = QPushButton("Resume…")
        self.resume_btn.setToolTip("Continue a cut-off sequence record: its done steps are kept, the rest run")
        self.resume_btn.clicked.connect(self._browse_record)
        self.title = QLabel("No sequence open")
        self.title.setStyleSheet(f"font-size: 12pt; font-weight: 600; color: {theme.TEXT};")
        self.title.setWordWrap(True)
        self.steps = QListWidget()
        self.controls = RunControls(session, self.start, "sequence aborted from its panel")
        self.controls.run_btn.setText("Run sequence")
        c = self.controls
        self.reason, self.run_btn, self.abort_btn, self.bar, self.message, self.record_label = \
            c.reason, c.run_btn, c.abort_btn, c.bar, c.message, c.record_label
        top = QHBoxLayout()
        top.addWidget(self.path_edit, 1)
        top.addWidget(browse)
        top.addWidget(self.resume_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(muted("A TOML file of [[steps]]: module, program, delay_s, repeat (see `hil sequence check`)."))
        lay.addLayout(top)
        lay.addWidget(self.controls)
        lay.addWidget(self.steps, 1)
        self.path: Optional[Path] = None
        self.source = None              # what load_sequence reads: the file, or a record's stored sequence
        self.seq = None
        self.load_error = ""
        self.state: list[str] = []
        self.out: Optional[Path] = None
        self.s.connection_changed.connect(self._reload)
        self.s.busy_changed.connect(lambda _: self.refresh())
        self.refresh()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open sequence", self.path_edit.text() or "sequences",
                                              "Sequences (*.toml)")
        if path:
            self.load(path)

    def _browse_record(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Resume a sequence record", str(self.folder()),
                                              "Run records (*.h5)")
        if path:
            self.resume(path)

    def load(self, path) -> bool:
        """Read and check the sequence at `path` against the connected station; the reason inline
        when it is refused."""
        self.path = self.source = Path(path) if path else None
        self.path_edit.setText(str(path))
        return self._reload()

    def _reload(self) -> bool:
        self.seq, self.load_error = None, ""
        if self.source is not None and self.s.connected:
            try:
                self.seq = load_sequence(self.source, self.s.geometry, self.s.xbar.limits, self.s.xbar.v_read_default)
            except HilError as e:
                self.load_error = str(e).split("\n")[0]
        self.state = ["pending"] * (len(self.seq.steps) if self.seq else 0)
        self.refresh()
        return self.seq is not None

    def refresh(self) -> None:
        self.title.setText(f"Sequence '{self.seq.name}' · {len(self.seq.steps)} steps · {self.path.name}"
                           if self.seq is not None else "No sequence open")
        why = ("Connect a station first (Station tab)." if not self.s.connected else
               "Open a sequence file." if self.path is None else
               self.load_error if self.seq is None else "")
        self.reason.setText(why)
        why = why or ("A job is running." if self.s.busy else "")
        self.run_btn.setEnabled(not why)
        self.run_btn.setToolTip(why)
        self.abort_btn.setEnabled(self.s.busy)
        self.resume_btn.setEnabled(self.s.connected and not self.s.busy)
        self._show_steps()

    def _show_steps(self, progress: Optional[tuple[int, str]] = None) -> None:
        if self.seq is None:
            self.steps.clear()
            return
        if self.steps.count() != len(self.seq.steps):
            self.steps.clear()
            self.steps.addItems(["" for _ in self.seq.steps])
        for k, (step, st) in enumerate(zip(self.seq.steps, self.state)):
            extra = f" — {progress[1]}" if progress and progress[0] == k else ""
            self.steps.item(k).setText(f"{MARKS[st]} {k + 1}. {step.label}  [{st}]{extra}")

    def step_texts(self) -> list[str]:
        return [self.steps.item(k).text() for k in range(self.steps.count())]

    def start(self) -> bool:
        """Run the sequence (checked again against the station now connected) in a worker."""
        if not self._reload() or self.s.busy:
            return False
        return self._run(unique_path(Path(self.folder()), f"sequence-{self.path.stem}"), None)

    def resume(self, record) -> bool:
        """Continue the cut-off sequence record `record` on the connected station, as `hil sequence
        run --resume`: the sequence stored in it is checked again, its done steps are kept and the
        others run into the same record. False, with the reason inline, when it cannot."""
        if self.s.busy or not self.s.connected:
            return False
        try:
            source, done = stored_sequence(record)
        except HilError as e:
            self.reason.setText(str(e).split("\n")[0])
            return False
        self.path, self.source = Path(record), source
        self.path_edit.setText(str(record))
        return self._reload() and self._run(self.path, done)

    def _run(self, out: Path, done: Optional[set]) -> bool:
        """Run the steps not in `done` into `out` (a new record, or with `done` the record resumed)."""
        seq, xbar = self.seq, self.s.xbar
        todo = [k for k in range(len(seq.steps)) if k not in (done or ())]
        snapshot = station_snapshot(self.s)
        pulses_before = int(self.s.chip.counters.get("pulses", 0))
        flat = np.unique(np.concatenate([s.cells.flat(self.s.geometry) for s in seq.steps if s.cells is not None]
                                        or [np.zeros(0, np.int64)]))

        def job(ctx):
            started = iter(todo)

            def bars(desc, unit):
                k = next(started)
                ctx.partial((k, "running", ""))

                def report(p):
                    ctx.progress(p)
                    if ctx.want_partial():
                        ctx.partial((k, "running", f"{100 * p.fraction:.0f}% {p.message}"))
                return report
            with run_record(out, "sequence", station=snapshot, resume=done is not None) as writer:
                steps = run_sequence(xbar, writer, seq, bars=bars, cancel=ctx.cancel)
                writer.set_attrs("/", summary={"sequence": seq.name, "steps": len(seq.steps)})
                return steps

        def on_step(data):
            k, st, text = data
            for j in range(k):
                self.state[j] = "done"
            self.state[k] = st
            self._show_steps((k, text))
            self.bar.setValue(int(1000 * k / len(seq.steps)))

        def on_end(outcome):
            if outcome == "done":
                self.state = ["done"] * len(seq.steps)
                self.bar.setValue(1000)
            else:
                self.state = [("stopped" if s == "running" else s) for s in self.state]
            self._show_steps()
            if self.controls.ended(f"sequence {seq.name}", outcome, out):
                note_write(self.s, "sequence", flat, out, f"sequence {seq.name} {out.name}", pulses_before)

        self.out = out
        self.state = ["pending" if k in todo else "done" for k in range(len(seq.steps))]
        self._show_steps()
        self.bar.setValue(int(1000 * (len(seq.steps) - len(todo)) / len(seq.steps)))
        self.record_label.setText("")
        return self.s.start_job(f"sequence {seq.name}", job, on_progress=lambda p: self.message.setText(p.message),
                                on_partial=on_step, on_end=on_end, needs_station=True)
