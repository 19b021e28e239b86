"""Append-only run journal: record framing, torn-tail tolerant reading, and replay.

File format (all integers little endian)::

    file header : b"HILJRNL\\x00" (8 bytes) + u16 format version (= 1)
    record      : b"REC1" (4) + u8 type + u32 payload length + u32 CRC32(payload) + payload
    payload     : u32 n + n bytes UTF-8 JSON header + raw array bytes

The JSON header always has an ``"arrays"`` list of ``{"name", "dtype", "shape"}``
(``dtype`` is ``numpy.dtype.str``); the raw C-order bytes of those arrays follow the
header in that order. Allowed array dtypes: bool, signed/unsigned ints, floats.

Record types and their JSON header fields:

* ``APPEND`` (1): ``"table"``; arrays are the 1-D columns of one chunk of rows.
* ``PUT`` (2): ``"name"``, ``"attrs"``; one array ``"data"`` (replaces earlier puts).
* ``ATTRS`` (3): ``"group"`` (``"/"`` is root), ``"attrs"``; optionally ``"station"``.
* ``MARK`` (4): ``"mark"``, a free-form JSON event such as ``{"event": "resumed"}``.

A journal is only ever appended to, so a crash normally damages only its tail, but a
bad disk sector or a flipped bit can damage any record. Reading skips a record that is
truncated, has a bad magic, a bad CRC or an undecodable payload and resynchronizes on
the next valid frame (its magic found by scanning, then its length and CRC checked), so
every intact record after the damage is kept; each damaged span (offset, bytes, reason)
is reported in :class:`JournalScan`. Only a wrong file header raises
(:class:`~hil.errors.DataError`).
"""
from __future__ import annotations

import enum
import json
import logging
import mmap
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FILE_MAGIC = b"HILJRNL\x00"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct("<8sH")
REC_MAGIC = b"REC1"
REC_HEADER = struct.Struct("<4sBII")
_U32 = struct.Struct("<I")
MAX_PAYLOAD = 0xFFFFFFFF
ALLOWED_KINDS = "biuf"


class RecordType(enum.IntEnum):
    """Type byte of a journal record."""

    APPEND = 1
    PUT = 2
    ATTRS = 3
    MARK = 4


def journal_path(path: str | os.PathLike) -> Path:
    """The journal file that belongs to the run record at ``path``."""
    return Path(str(path) + ".journal")


def to_jsonable(value: Any, where: str = "value") -> Any:
    """Convert numpy scalars/arrays and tuples to plain JSON types; ConfigError otherwise."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: dictionary key {k!r} is not a string")
            out[k] = to_jsonable(v, f"{where}.{k}")
        return out
    raise ConfigError(f"{where}: {type(value).__name__} is not JSON-serialisable")


def check_array(arr: Any, where: str) -> np.ndarray:
    """Return ``arr`` as a C-contiguous native-endian array of an allowed dtype."""
    a = np.asarray(arr)
    if a.dtype.kind not in ALLOWED_KINDS:
        raise ConfigError(
            f"{where}: dtype {a.dtype} is not allowed (use bool, integer or float arrays)")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


@dataclass
class Record:
    """One decoded journal record; ``offset``/``end`` are its byte range in the file."""

    type: RecordType
    header: dict
    arrays: dict[str, np.ndarray]
    offset: int = 0
    end: int = 0


def encode_record(rtype: RecordType, header: dict,
                  arrays: list[tuple[str, np.ndarray]] = ()) -> bytes:
    """Frame one record (arrays must already have passed :func:`check_array`)."""
    specs = [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays]
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":")).encode()
    parts = [_U32.pack(len(head)), head] + [memoryview(a).cast("B") for _, a in arrays if a.size]
    size = sum(len(p) for p in parts)
    if size > MAX_PAYLOAD:
        raise ConfigError(f"record of {size} bytes exceeds the 4 GiB journal limit")
    crc = 0
    for p in parts:                 # the record is assembled once, straight from the arrays
        crc = zlib.crc32(p, crc)
    return b"".join([REC_HEADER.pack(REC_MAGIC, int(rtype), size, crc), *parts])


def file_header() -> bytes:
    """The bytes every journal starts with."""
    return FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION)


def _decode_payload(rtype: int, payload: bytes) -> Record:
    (n,) = _U32.unpack_from(payload, 0)
    header = json.loads(payload[4:4 + n].decode())
    pos = 4 + n
    arrays = {}
    for spec in header.pop("arrays"):
        dt = np.dtype(spec["dtype"])
        shape = tuple(int(s) for s in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        size = count * dt.itemsize
        if dt.kind not in ALLOWED_KINDS or pos + size > len(payload):
            raise ValueError("bad array spec")
        arrays[spec["name"]] = np.frombuffer(payload, dt, count, pos).reshape(shape).copy()
        pos += size
    if pos != len(payload):
        raise ValueError("payload length mismatch")
    return Record(RecordType(rtype), header, arrays)


@dataclass
class JournalScan:
    """Outcome of reading a journal: intact records and the damaged spans skipped."""

    path: Path
    records: int = 0
    valid_bytes: int = 0          # file header + every intact record
    file_bytes: int = 0
    damaged: list[dict] = field(default_factory=list)   # {"offset", "bytes", "reason"}

    @property
    def dropped_bytes(self) -> int:
        return self.file_bytes - self.valid_bytes

    @property
    def stop_reason(self) -> str | None:
        """Reason of the first damaged span (None when the journal is intact)."""
        return self.damaged[0]["reason"] if self.damaged else None

    @property
    def torn_tail(self) -> dict | None:
        """The damaged span that ends the file (a write cut off by a crash), if any."""
        if self.damaged and self.damaged[-1]["offset"] + self.damaged[-1]["bytes"] == self.file_bytes:
            return self.damaged[-1]
        return None

    def describe(self) -> str:
        """One line: how many damaged spans and bytes were skipped, and where."""
        if not self.damaged:
            return "no damaged records"
        spans = ", ".join(f"{d['bytes']} bytes at offset {d['offset']} ({d['reason']})"
                          for d in self.damaged[:5])
        more = f" and {len(self.damaged) - 5} more" if len(self.damaged) > 5 else ""
        return (f"skipped {len(self.damaged)} damaged span(s), {self.dropped_bytes} bytes: "
                f"{spans}{more}")


def _check_file_header(raw: bytes, path: Path) -> None:
    if len(raw) < FILE_HEADER.size or not raw.startswith(FILE_MAGIC):
        raise DataError(f"{path} is not a memristor-hil journal (bad or missing file header)")
    _, version = FILE_HEADER.unpack(raw[:FILE_HEADER.size])
    if version > FORMAT_VERSION:
        raise DataError(f"{path} uses journal format {version}, this software supports up to "
                        f"{FORMAT_VERSION}; upgrade memristor-hil to read it")


def _frame_at(buf, pos: int, size: int) -> tuple[Record | None, str]:
    """The record framed at `pos`, or (None, why not)."""
    if pos + REC_HEADER.size > size:
        return None, "truncated record header"
    magic, rtype, length, crc = REC_HEADER.unpack_from(buf, pos)
    if magic != REC_MAGIC:
        return None, "bad record magic"
    end = pos + REC_HEADER.size + length
    if end > size:
        return None, "truncated record payload"
    payload = bytes(buf[pos + REC_HEADER.size:end])
    if zlib.crc32(payload) != crc:
        return None, "bad CRC"
    try:
        rec = _decode_payload(rtype, payload)
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        return None, f"undecodable record ({exc})"
    rec.offset, rec.end = pos, end
    return rec, ""


def iter_journal(path: str | os.PathLike, scan: JournalScan | None = None) -> Iterator[Record]:
    """Yield every intact record of the journal at ``path``, skipping damaged spans
    (resynchronizing on the next valid frame); fill ``scan`` as a side effect."""
    path = Path(path)
    scan = scan if scan is not None else JournalScan(path)
    scan.path = path
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        scan.file_bytes = size
        _check_file_header(f.read(FILE_HEADER.size), path)
        scan.valid_bytes = FILE_HEADER.size
        if size <= FILE_HEADER.size:
            return
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as buf:
            pos = FILE_HEADER.size
            while pos < size:
                rec, reason = _frame_at(buf, pos, size)
                if rec is None:
                    nxt = pos
                    while True:
                        nxt = buf.find(REC_MAGIC, nxt + 1)
                        if nxt < 0:
                            nxt = size
                            break
                        rec = _frame_at(buf, nxt, size)[0]
                        if rec is not None:
                            break
                    scan.damaged.append({"offset": pos, "bytes": nxt - pos, "reason": reason})
                    log.warning("%s: %d damaged bytes at offset %d (%s) skipped", path, nxt - pos,
                                pos, reason)
                    if rec is None:
                        break
                scan.records += 1
                scan.valid_bytes += rec.end - rec.offset
                pos = rec.end
                yield rec


def read_journal(path: str | os.PathLike) -> tuple[list[Record], JournalScan]:
    """Read every intact record of a journal (never raises for damaged records)."""
    scan = JournalScan(Path(path))
    records = list(iter_journal(path, scan))
    return records, scan


def load_record(path: str | os.PathLike, offset: int) -> Record:
    """The record framed at byte `offset` of the journal at `path` (DataError if it no longer
    checks out: the journal changed under a reader)."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(REC_HEADER.size)
        length = REC_HEADER.unpack(head)[2] if len(head) == REC_HEADER.size else 0
        data = head + f.read(length)
    rec, why = _frame_at(data, 0, len(data))
    if rec is None:
        raise DataError(f"{path}: the record at offset {offset} can no longer be read ({why})")
    return rec


#: table rows a RunContent keeps in memory; rows beyond it are read back from where they were
#: written (journal or HDF5 file) when asked for, so a long run's memory stays bounded
HELD_BYTES = 64 << 20


@dataclass
class _Piece:
    """Consecutive rows of a table: in memory (`arrays`), or only where they were written
    (`source`: ("journal", path, offset) or ("hdf5", path, first row))."""

    rows: int
    arrays: dict[str, np.ndarray] | None = None
    source: tuple | None = None

    def load(self, table: str) -> dict[str, np.ndarray]:
        if self.arrays is not None:
            return self.arrays
        kind, path, at = self.source
        if kind == "journal":
            return load_record(path, at).arrays
        import h5py       # the journal reader needs no HDF5 unless a table lives in a record file
        try:
            with h5py.File(path, "r") as f:
                g = f[table]
                return {c: g[c][at:at + self.rows] for c in json.loads(g.attrs["columns"])}
        except (OSError, KeyError) as exc:
            raise DataError(f"{path}: rows of table {table!r} can no longer be read ({exc})") from None


class _Tables(Mapping):
    """Read-only view name -> columns; a table is assembled only when it is looked up."""

    def __init__(self, content: "RunContent") -> None:
        self._c = content

    def __getitem__(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._c._pieces:
            raise KeyError(name)
        return self._c.table(name)

    def __iter__(self):
        return iter(self._c._pieces)

    def __len__(self) -> int:
        return len(self._c._pieces)


@dataclass
class RunContent:
    """Logical content of a run: what the journal replays to and the HDF5 file holds.

    Table rows are held in memory up to `held_bytes`; later rows stay where they were written
    and are read back on demand (`tables`, `table`, `iter_table`)."""

    attrs: dict[str, dict] = field(default_factory=dict)
    station: dict = field(default_factory=dict)
    datasets: dict[str, tuple[np.ndarray, dict]] = field(default_factory=dict)
    marks: list[dict] = field(default_factory=list)
    held_bytes: int = field(default_factory=lambda: HELD_BYTES)
    _pieces: dict[str, list[_Piece]] = field(default_factory=dict, repr=False)
    _schema: dict[str, dict[str, np.dtype]] = field(default_factory=dict, repr=False)
    _rows: dict[str, int] = field(default_factory=dict, repr=False)
    _held: int = field(default=0, repr=False)

    @property
    def tables(self) -> Mapping[str, dict[str, np.ndarray]]:
        """Tables by name, each with its columns whole (assembled when looked up)."""
        return _Tables(self)

    def table(self, name: str) -> dict[str, np.ndarray]:
        """Every row of table `name`, columns concatenated (KeyError if it has no rows)."""
        pieces = self._pieces[name]
        if len(pieces) == 1:
            return pieces[0].load(name)
        parts = [p.load(name) for p in pieces]
        whole = {c: np.concatenate([p[c] for p in parts]) for c in self._schema[name]}
        if all(p.arrays is not None for p in pieces):       # merge once, keep the merged copy
            pieces[:] = [_Piece(self._rows[name], whole)]
        return whole

    def iter_table(self, name: str) -> Iterator[dict[str, np.ndarray]]:
        """The rows of table `name` piece by piece, in order (memory: one piece at a time)."""
        for p in self._pieces.get(name, ()):
            yield p.load(name)

    def table_rows(self, name: str) -> int:
        return self._rows.get(name, 0)

    def table_columns(self, name: str) -> dict[str, np.dtype] | None:
        """Column dtypes of table ``name`` in order, or None if it has no rows yet."""
        return self._schema.get(name)

    def add_rows(self, table: str, columns: dict[str, np.ndarray], source: tuple | None = None,
                 copy: bool = False) -> None:
        """Add rows; with a `source` they are held in memory only while within `held_bytes`."""
        n = len(next(iter(columns.values())))
        self._schema.setdefault(table, {c: a.dtype for c, a in columns.items()})
        size = sum(a.nbytes for a in columns.values())
        if source is not None and self._held + size > self.held_bytes:
            piece = _Piece(n, source=source)
        else:
            piece = _Piece(n, {c: a.copy() for c, a in columns.items()} if copy else dict(columns))
            self._held += size
        self._pieces.setdefault(table, []).append(piece)
        self._rows[table] = self._rows.get(table, 0) + n

    def rebase(self, path: str | os.PathLike) -> None:
        """Point every table that is not wholly in memory at the HDF5 record `path` (written
        from this content), so it stays readable once its journal is gone."""
        for name, pieces in self._pieces.items():
            if any(p.arrays is None for p in pieces):
                self._held -= sum(a.nbytes for p in pieces if p.arrays for a in p.arrays.values())
                pieces[:] = [_Piece(self._rows[name], source=("hdf5", Path(path), 0))]

    def apply(self, rec: Record, journal: str | os.PathLike | None = None) -> None:
        """Apply one journal record (read from the file `journal`, if given: large tables stay
        there)."""
        h = rec.header
        if rec.type is RecordType.APPEND:
            if rec.arrays:
                self.add_rows(h["table"], rec.arrays,
                              source=None if journal is None else ("journal", Path(journal), rec.offset))
        elif rec.type is RecordType.PUT:
            self.datasets[h["name"]] = (rec.arrays["data"], dict(h.get("attrs", {})))
        elif rec.type is RecordType.ATTRS:
            self.attrs.setdefault(h["group"], {}).update(h.get("attrs", {}))
            if "station" in h:
                self.station = h["station"]
        elif rec.type is RecordType.MARK:
            self.marks.append(h["mark"])


def replay(path: str | os.PathLike) -> tuple[RunContent, JournalScan]:
    """Replay a journal into a :class:`RunContent` (damaged records skipped, reported in scan)."""
    content, scan = RunContent(), JournalScan(Path(path))
    for rec in iter_journal(path, scan):
        content.apply(rec, path)
    return content, scan
