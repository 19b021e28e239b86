"""Crash-safe run writer: journal first, atomic HDF5 at checkpoints/end; plus ``recover``.

Every call of :class:`RunWriter` appends one framed record to ``<path>.journal`` with a
single unbuffered ``write`` (so it survives SIGKILL of the process; ``fsync`` at most
every ``sync_interval_s`` bounds loss on power failure), then updates the in-memory
:class:`RunContent`. The HDF5 file is rebuilt from that content atomically.
"""
from __future__ import annotations

import logging
import os
import time
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from hil import __version__
from hil.errors import ConfigError, DataError
from hil.runstore.hdf5 import (FORMAT, JSON_KEYS, ROOT_RESERVED, SCHEMA_VERSION, TABLE_ATTRS, RunRecord,
                   _fsync_dir, utc_now, write_hdf5)
from hil.runstore.journal import (RecordType, RunContent, check_array, encode_record, file_header,
                      journal_path, replay, to_jsonable)

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

log = logging.getLogger(__name__)

_REBUILD_CHUNK_BYTES = 64 << 20
#: checkpoints (each rewrites the whole record) are spaced to take at most 1/CHECKPOINT_SPACING
#: of the run: the next waits this many times the time a rewrite of the journal so far would take,
#: at the rate the last one ran (CHECKPOINT_RATE bytes/s before any)
CHECKPOINT_SPACING = 10.0
CHECKPOINT_RATE = 50e6


def _lock(fd: int, jp: Path, shared: bool = False) -> None:
    """Advisory lock so two processes never write (or write+recover) one journal."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataError(f"{jp} is in use by another running process; stop it first") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _norm_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{what} name must be a string, got {type(name).__name__}")
    norm = name.strip("/")
    parts = norm.split("/")
    if not norm or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"invalid {what} name {name!r} (use e.g. 'programming/pulses')")
    if parts[0] == "station":
        raise ConfigError(f"{what} name {name!r}: 'station' is reserved for the station snapshot")
    return norm


def _check_keys(attrs: dict, reserved: tuple[str, ...], where: str) -> None:
    bad = [k for k in attrs if k in reserved or k == JSON_KEYS]
    if bad:
        raise ConfigError(f"{where}: attribute name(s) {', '.join(bad)} are reserved")


class RunWriter:
    """Writes one run record crash-safely; use :meth:`create` or :meth:`resume`."""

    def __init__(self, path: Path, fd: int, content: RunContent, *,
                 checkpoint_interval_s: float | None, sync_interval_s: float) -> None:
        self.path = path
        self.journal_path = journal_path(path)
        self._fd: int | None = fd
        self._content = content
        self.checkpoint_interval_s = checkpoint_interval_s
        self.sync_interval_s = sync_interval_s
        self._last_sync = self._last_checkpoint = time.monotonic()
        self._checkpoint_rate = CHECKPOINT_RATE
        self._dirty = False

    # -- opening ---------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, kind: str, station: dict,
               meta: dict | None = None, *, checkpoint_interval_s: float | None = 30.0,
               sync_interval_s: float = 1.0) -> "RunWriter":
        """Start a new run record at ``path``; DataError if it (or its journal) exists."""
        path = Path(path)
        jp = journal_path(path)
        for p in (path, jp):
            if p.exists():
                raise DataError(f"{p} exists; choose another --out or use --resume")
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"run kind must be a non-empty string, got {kind!r}")
        station = to_jsonable(station, "station")
        if not isinstance(station, dict):
            raise ConfigError("station must be a dict")
        meta = to_jsonable(dict(meta or {}), "meta")
        _check_keys(meta, ROOT_RESERVED, "meta")
        root = {**meta, "format": FORMAT, "schema_version": SCHEMA_VERSION,
                "software_version": __version__, "kind": kind, "created": utc_now(),
                "status": "running"}
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(jp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise DataError(f"{jp} exists; choose another --out or use --resume") from None
        _lock(fd, jp)
        header = {"group": "/", "attrs": root, "station": station}
        _write_all(fd, file_header() + encode_record(RecordType.ATTRS, header))
        os.fsync(fd)
        _fsync_dir(path.parent)
        content = RunContent(attrs={"/": dict(root)}, station=station)
        log.info("created run record %s (kind %s)", path, kind)
        return cls(path, fd, content, checkpoint_interval_s=checkpoint_interval_s,
                   sync_interval_s=sync_interval_s)

    @classmethod
    def resume(cls, path: str | os.PathLike, kind: str | None = None,
               station: dict | None = None, meta: dict | None = None, *,
               checkpoint_interval_s: float | None = 30.0,
               sync_interval_s: float = 1.0) -> "RunWriter":
        """Continue an interrupted run (journal, or HDF5 of a closed run) at ``path``.

        Everything is checked before a byte changes: ``kind`` against the record, a complete
        run is refused. A differing ``station`` is recorded in the "resumed" mark (the original
        snapshot is kept); ``meta`` updates root attrs. The journal is never truncated: damaged
        records in it stay and are skipped, a torn tail is moved aside to ``<journal>.damaged``.
        """
        path = Path(path)
        jp = journal_path(path)
        old = None
        if jp.exists():
            status = None
            if path.exists():
                try:
                    with RunRecord.open(path) as rec:
                        status = rec.status
                except DataError as exc:
                    log.warning("%s; resuming from its journal", exc)
            if status == "complete":
                raise DataError(f"run {path} is complete and cannot be resumed; its leftover "
                                f"journal {jp} is stale")
            _check_resumable(path, replay(jp)[0], kind, jp)
        elif path.exists():
            with RunRecord.open(path) as rec:
                old = rec.content()
            _check_resumable(path, old, kind, path)
            _rebuild_journal(jp, old)
        else:
            raise DataError(f"nothing to resume: neither {path} nor {jp} exists")
        fd = os.open(jp, os.O_RDWR)
        _lock(fd, jp)
        try:
            content, scan = replay(jp)
            _check_resumable(path, content, kind, jp)
            tail = scan.torn_tail
            if tail:
                _move_aside(fd, jp, tail["offset"])
            os.lseek(fd, 0, os.SEEK_END)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        w = cls(path, fd, content, checkpoint_interval_s=checkpoint_interval_s,
                sync_interval_s=sync_interval_s)
        info: dict[str, Any] = {"records": scan.records, "dropped_bytes": scan.dropped_bytes}
        if scan.damaged:
            info["damaged"] = scan.damaged[:100]
        if station is not None:
            station = to_jsonable(station, "station")
            if station != content.station:
                info["station"] = station
        w.mark("resumed", **info)
        if meta:
            w.set_attrs("/", **meta)
        w.flush(sync=True)
        log.info("resumed run record %s after %d records", path, scan.records)
        return w

    # -- writing ---------------------------------------------------------------
    @property
    def content(self) -> RunContent:
        """Everything written so far (replayed journal plus this session)."""
        return self._content

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _check_open(self) -> int:
        if self._fd is None:
            raise ConfigError(f"run writer for {self.path} is already closed")
        return self._fd

    def _write(self, rtype: RecordType, header: dict,
               arrays: list[tuple[str, np.ndarray]] = ()) -> int:
        """Append one record to the journal; returns its offset."""
        fd = self._check_open()
        data = encode_record(rtype, header, arrays)
        pos = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            _write_all(fd, data)
        except OSError:
            try:  # never leave a torn record in the middle of the journal
                os.ftruncate(fd, pos)
                os.lseek(fd, pos, os.SEEK_SET)
            except OSError:
                pass
            raise
        self._dirty = True
        if time.monotonic() - self._last_sync >= self.sync_interval_s:
            self.flush(sync=True)
        return pos

    def _maybe_checkpoint(self) -> None:
        iv = self.checkpoint_interval_s
        if iv is None:
            return
        cost = os.lseek(self._fd, 0, os.SEEK_CUR) / self._checkpoint_rate
        wait = max(iv, CHECKPOINT_SPACING * cost) if iv > 0 else 0.0     # 0: after every write
        if time.monotonic() - self._last_checkpoint >= wait:
            self.checkpoint()

    def _check_leaf(self, name: str, is_table: bool) -> None:
        c = self._content
        other_kind = c.datasets if is_table else c._pieces
        if name in other_kind:
            raise ConfigError(f"{name!r} is already a {'dataset' if is_table else 'table'}")
        leaves = list(chain(c._pieces, c.datasets))
        for other in chain(leaves, (g.lstrip("/") for g in c.attrs)):
            if other.startswith(name + "/"):
                raise ConfigError(f"{name!r} cannot contain the existing {other!r}")
        for other in leaves:
            if name.startswith(other + "/"):
                raise ConfigError(f"{name!r} cannot be inside the existing {other!r}")

    def append(self, table: str, **columns: np.ndarray) -> None:
        """Append rows: equal-length 1-D columns; the first append fixes names and dtypes."""
        name = _norm_name(table, "table")
        self._check_open()
        if not columns:
            raise ConfigError(f"append to table {name!r} needs at least one column")
        arrays: dict[str, np.ndarray] = {}
        for col, val in columns.items():
            if "/" in col or col in (".", ".."):
                raise ConfigError(f"table {name!r}: invalid column name {col!r}")
            a = check_array(val, f"table {name!r} column {col!r}")
            if a.ndim != 1:
                raise ConfigError(f"table {name!r} column {col!r} must be 1-D, got shape {a.shape}")
            arrays[col] = a
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) > 1:
            raise ConfigError(f"table {name!r}: columns have different lengths "
                              f"{ {c: len(a) for c, a in arrays.items()} }")
        if lengths == {0}:
            return
        schema = self._content.table_columns(name)
        if schema is None:
            self._check_leaf(name, is_table=True)
        else:
            for col in chain(schema, arrays):
                if col not in schema or col not in arrays:
                    raise ConfigError(f"table {name!r}: column {col!r} "
                                      f"{'is new' if col not in schema else 'is missing'}; "
                                      f"columns are {', '.join(schema)}")
                if arrays[col].dtype != schema[col]:
                    raise ConfigError(f"table {name!r} column {col!r}: dtype "
                                      f"{arrays[col].dtype} differs from {schema[col]}")
            arrays = {col: arrays[col] for col in schema}
        at = self._write(RecordType.APPEND, {"table": name}, list(arrays.items()))
        self._content.add_rows(name, arrays, source=("journal", self.journal_path, at), copy=True)
        self._maybe_checkpoint()

    def put(self, name: str, data: Any, **attrs: Any) -> None:
        """Store a whole array at ``name`` with attrs; a later put of the name replaces it."""
        name = _norm_name(name, "dataset")
        self._check_open()
        arr = check_array(data, f"dataset {name!r}")
        attrs = to_jsonable(attrs, f"dataset {name!r} attrs")
        _check_keys(attrs, (), f"dataset {name!r}")
        self._check_leaf(name, is_table=False)
        self._write(RecordType.PUT, {"name": name, "attrs": attrs}, [("data", arr)])
        self._content.datasets[name] = (arr.copy(), attrs)
        self._maybe_checkpoint()

    def set_attrs(self, group: str, **attrs: Any) -> None:
        """Set JSON-able attrs on a group (``"/"`` is root; groups are created as needed)."""
        rel = group.strip("/") if isinstance(group, str) else group
        if rel:
            rel = _norm_name(rel, "group")
            c = self._content
            if rel in c.datasets:
                raise ConfigError(f"{rel!r} is a dataset; pass its attrs to put()")
            for leaf in chain(c._pieces, c.datasets):
                if rel.startswith(leaf + "/"):
                    raise ConfigError(f"group {rel!r} cannot be inside {leaf!r}")
        self._check_open()
        key = "/" + rel
        attrs = to_jsonable(attrs, f"group {key!r} attrs")
        _check_keys(attrs, ROOT_RESERVED if key == "/" else TABLE_ATTRS, f"group {key!r}")
        self._write(RecordType.ATTRS, {"group": key, "attrs": attrs})
        self._content.attrs.setdefault(key, {}).update(attrs)

    def mark(self, event: str, **info: Any) -> None:
        """Record a free-form event (stored with its UTC time)."""
        self._check_open()
        m = to_jsonable({"event": event, "time": utc_now(), **info}, "mark")
        self._write(RecordType.MARK, {"mark": m})
        self._content.marks.append(m)

    def flush(self, sync: bool = False) -> None:
        """Records reach the OS on every call already; ``sync=True`` also fsyncs them."""
        fd = self._check_open()
        if sync and self._dirty:
            os.fsync(fd)
            self._dirty = False
        if sync:
            self._last_sync = time.monotonic()

    def checkpoint(self) -> None:
        """Rewrite the HDF5 file atomically from the content, with status "running"."""
        self.flush(sync=True)
        t0 = time.monotonic()
        write_hdf5(self.path, self._content, "running")
        self._last_checkpoint = time.monotonic()
        self._checkpoint_rate = os.lseek(self._fd, 0, os.SEEK_CUR) / max(self._last_checkpoint - t0, 1e-6)

    def finalize(self, status: str = "complete") -> Path:
        """Write the final HDF5 with ``status`` and delete the journal."""
        if not isinstance(status, str) or not status:
            raise ConfigError(f"status must be a non-empty string, got {status!r}")
        self.flush(sync=True)
        write_hdf5(self.path, self._content, status)
        self._content.rebase(self.path)
        self._release()
        self.journal_path.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        log.info("finalized run record %s (status %s)", self.path, status)
        return self.path

    def close(self) -> None:
        """Fsync, write the HDF5 with status "interrupted" and keep the journal. Idempotent."""
        if self._fd is None:
            return
        try:
            self.flush(sync=True)
            write_hdf5(self.path, self._content, "interrupted")
        finally:
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also drops the flock
            self._fd = None

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_resumable(path: Path, content: RunContent, kind: str | None, source: Path) -> None:
    """DataError unless ``content`` is a run record of ``kind`` that may be continued."""
    root = content.attrs.get("/", {})
    if root.get("format") != FORMAT:
        raise DataError(f"{source} holds no complete run header; nothing to resume")
    if root.get("status") == "complete":
        raise DataError(f"run {path} is complete and cannot be resumed; choose another --out")
    if kind is not None and root.get("kind") != kind:
        raise DataError(f"run {path} is of kind {root.get('kind')!r}, not {kind!r}")


def _move_aside(fd: int, jp: Path, offset: int) -> None:
    """Append the journal's bytes from ``offset`` to ``<journal>.damaged`` (kept, never deleted),
    then cut them from the journal so new records follow the last intact one."""
    side = Path(str(jp) + ".damaged")
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    sfd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _write_all(sfd, b"".join(chunks))
        os.fsync(sfd)
    finally:
        os.close(sfd)
    log.warning("%s: torn tail of %d bytes at offset %d moved to %s", jp,
                sum(map(len, chunks)), offset, side)
    os.ftruncate(fd, offset)


def _rebuild_journal(jp: Path, content: RunContent) -> None:
    """Write a fresh journal holding ``content`` (atomically) so a closed run can resume."""
    tmp = Path(str(jp) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        root = content.attrs.get("/", {})
        _write_all(fd, file_header() + encode_record(
            RecordType.ATTRS, {"group": "/", "attrs": root, "station": content.station}))
        for group, attrs in content.attrs.items():
            if group != "/":
                _write_all(fd, encode_record(RecordType.ATTRS, {"group": group, "attrs": attrs}))
        for name, schema in content._schema.items():
            step = max(1, _REBUILD_CHUNK_BYTES // max(1, sum(d.itemsize for d in schema.values())))
            for cols in content.iter_table(name):
                for i in range(0, len(next(iter(cols.values()))), step):
                    _write_all(fd, encode_record(RecordType.APPEND, {"table": name},
                                                 [(c, a[i:i + step]) for c, a in cols.items()]))
        for name, (arr, attrs) in content.datasets.items():
            _write_all(fd, encode_record(RecordType.PUT, {"name": name, "attrs": attrs},
                                         [("data", np.ascontiguousarray(arr))]))
        for m in content.marks:
            _write_all(fd, encode_record(RecordType.MARK, {"mark": m}))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, jp)
    _fsync_dir(jp.parent)


def read_content(path: str | os.PathLike) -> RunContent:
    """Everything a run record holds, without opening it for writing: the journal of a run that
    is still open or was cut off, else the HDF5 record."""
    path = Path(path)
    jp = journal_path(path)
    if jp.exists():
        return replay(jp)[0]
    if not path.exists():
        raise DataError(f"run record {path} does not exist")
    with RunRecord.open(path) as rec:
        return rec.content()


def recover(path: str | os.PathLike) -> dict:
    """Rebuild ``path`` (status "recovered") from its journal, keeping the journal."""
    path = Path(path)
    jp = journal_path(path)
    if not jp.exists():
        where = (f"the run record {path} exists and needs no recovery" if path.exists()
                 else f"and no run record at {path} either")
        raise DataError(f"no journal {jp} to recover from; {where}")
    fd = os.open(jp, os.O_RDONLY)
    _lock(fd, jp, shared=True)
    try:
        if path.exists():
            try:
                with RunRecord.open(path) as rec:
                    complete = rec.status == "complete"
            except DataError:
                complete = False
            if complete:
                raise DataError(f"run {path} is complete; its leftover journal {jp} is stale "
                                f"and can be deleted")
        content, scan = replay(jp)
        if content.attrs.get("/", {}).get("format") != FORMAT:
            raise DataError(f"{jp} holds no complete run header; nothing to recover")
        write_hdf5(path, content, "recovered")
    finally:
        os.close(fd)
    log.info("recovered %s from %d journal records (%s)", path, scan.records, scan.describe())
    return {"path": str(path), "records": scan.records, "dropped_bytes": scan.dropped_bytes,
            "stop_reason": scan.stop_reason, "damaged": scan.damaged, "damage": scan.describe(),
            "tables": {t: content.table_rows(t) for t in content._pieces},
            "datasets": sorted(content.datasets)}
