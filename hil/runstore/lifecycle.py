"""The one run-record lifecycle every stage uses, and the one station snapshot.

``run_record`` creates (or resumes, kind checked) a record, yields its writer and ends it:
``done`` (default "complete") on success, "stopped" when the work was cancelled or interrupted
(Ctrl+C), "failed" on any other error. A stopped or failed record keeps its journal, so the run
can be resumed. Validation belongs before the ``with``: a record is created only when the
work starts, and an error raised while opening it leaves an existing record as it was.
``HeldRecord`` is the same lifecycle for a record that outlives one block (a scripting session,
the cell-operations log).
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack, contextmanager
from typing import Iterator, Optional

from hil import __version__
from hil.errors import Cancelled, DataError
from hil.runstore.hdf5 import write_hdf5
from hil.runstore.writer import RunWriter

log = logging.getLogger(__name__)

CLIENTS = ("cli", "gui", "api", "sweep")


def station_snapshot(xbar, *, client: str, spec: Optional[str] = None, seed: Optional[int] = None,
                     argv: Optional[list] = None, label: Optional[str] = None,
                     describe: Optional[dict] = None) -> dict:
    """What a record keeps about the station and who ran it: identity (`describe()`, or the one
    given), chip, software version, the front end (`client` cli/gui/api/sweep), its argv or
    label, and seed. Without a station (`xbar` None, training) the identity is empty."""
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}, got {client!r}")
    if describe is None:
        describe = xbar.describe() if xbar is not None else {}
    chip = describe.get("chip") or getattr(xbar, "chip_identity", None)
    return {"spec": spec, "seed": seed, "software_version": __version__, "describe": describe,
            "chip": chip, "client": client, "argv": list(sys.argv[1:] if argv is None else argv),
            "label": label or spec}


@contextmanager
def run_record(path: str | os.PathLike, kind: str, *, station: Optional[dict] = None,
               meta: Optional[dict] = None, resume: bool = False, done: str = "complete",
               **writer_opts) -> Iterator[RunWriter]:
    """Create (or with `resume` continue) the record at `path` and end it by the outcome."""
    if resume:
        writer = RunWriter.resume(path, kind, station, meta, **writer_opts)
    else:
        writer = RunWriter.create(path, kind, station or {}, meta, **writer_opts)
    try:
        yield writer
    except (Cancelled, KeyboardInterrupt) as e:
        end(writer, "stopped", reason=str(e) or type(e).__name__)
        raise
    except BaseException as e:
        end(writer, "failed", error=f"{type(e).__name__}: {e}")
        raise
    if not writer.closed:
        writer.finalize(done)


class HeldRecord:
    """A `run_record` held open across calls: `writer` is its writer, `end(exc)` ends it as the
    with-block would on leaving with `exc` (None: success, "complete" or `done`)."""

    def __init__(self, path: str | os.PathLike, kind: str, **opts) -> None:
        self._stack = ExitStack()
        self.writer: RunWriter = self._stack.enter_context(run_record(path, kind, **opts))

    def end(self, exc: Optional[BaseException] = None) -> None:
        """End the record by the outcome `exc` (idempotent); the exception is not raised here."""
        if exc is None:
            self._stack.close()
        else:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)


def resumable_content(path, kind: str, what: str, new_hint: str = ""):
    """The content (read only) of the cut-off record at `path`, a `kind` record (`what` names it
    for the message); DataError (one line) when it is another kind or complete: nothing to resume
    (`new_hint` says how to start a new one)."""
    from hil.runstore import read_content
    name = getattr(path, "name", path)
    content = read_content(path)
    root = content.attrs.get("/", {})
    if root.get("kind") != kind:
        raise DataError(f"{name} is a {root.get('kind')!r} record, not a {what}")
    if root.get("status") == "complete":
        raise DataError(f"{name} is complete: nothing to resume" + (f"; {new_hint}" if new_hint else ""))
    return content


def end(writer: RunWriter, status: str, **info) -> None:
    """Mark why the run ended, write the record with `status` and keep the journal (resumable)."""
    if writer.closed:
        return
    try:
        writer.mark(status, **info)
        writer.flush(sync=True)
        write_hdf5(writer.path, writer.content, status)
    finally:
        writer._release()
    log.info("run record %s ended: %s", writer.path, status)
