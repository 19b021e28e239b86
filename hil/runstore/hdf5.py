"""HDF5 layout of a run record: atomic writing from :class:`RunContent`, checked reading.

Layout (schema_version 1):

* Root attrs: ``format="memristor-hil-run"``, ``schema_version``, ``software_version``,
  ``kind``, ``status`` (running / interrupted / recovered / complete / ...), ``created``,
  ``updated`` (ISO 8601 UTC), ``marks`` (JSON text: list of event dicts), plus the
  user's root attrs.
* ``/station``: group whose attr ``json`` is the station snapshot as JSON text.
* Each table ``T`` (names may contain "/", e.g. ``programming/pulses``): a group with
  attrs ``kind="table"``, ``rows=N``, ``columns`` (JSON list, column order) and one
  chunked, gzip-1 compressed 1-D dataset per column (uncompressed in a record that ended
  stopped, failed or interrupted: it keeps its journal and is rewritten when resumed or
  recovered, and an abort ends without waiting for gzip).
* Each put dataset at its name (e.g. ``snapshots/after_programming``) with its attrs.
* Group attrs from ``set_attrs``: bool/int/float/str values are stored natively, any
  other value as JSON text whose key is listed in the attr ``_json_keys`` (JSON list).

Files are written to ``<path>.tmp``, fsynced, then moved over ``<path>`` with
``os.replace``, so a reader sees either the old or the new complete file.

Integrity: files use the HDF5 1.8+ object formats (checksummed metadata), every array
dataset is chunked with the fletcher32 checksum filter (scalars are stored compact, inside
their checksummed object header) and string attrs are fixed-length (no unchecked global
heap). :meth:`RunRecord.open` reads every dataset once, so a flipped byte is reported as a
one-line DataError naming the file (and the dataset) instead of a silent wrong value.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hil import __version__
from hil.errors import DataError
from hil.runstore.journal import RunContent, journal_path

log = logging.getLogger(__name__)

FORMAT = "memristor-hil-run"
SCHEMA_VERSION = 1
JSON_KEYS = "_json_keys"
TABLE_ATTRS = ("kind", "rows", "columns")
ROOT_RESERVED = ("format", "schema_version", "software_version", "kind", "status",
                 "created", "updated", "marks")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
#: rows per HDF5 chunk of a table column (at most 512 KiB of 8-byte values: within the chunk cache)
TABLE_CHUNK_ROWS = 1 << 16
#: statuses written without compression: records cut off by an abort, an error or a kill
UNCOMPRESSED_STATUSES = ("stopped", "failed", "interrupted")


def utc_now() -> str:
    """Current time as ISO 8601 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _store_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    json_keys = []
    for key, val in attrs.items():
        plain = isinstance(val, (bool, float, str)) or (
            isinstance(val, int) and _INT64[0] <= val <= _INT64[1])
        if isinstance(val, str):
            _store_str(obj, key, val)
        elif plain:
            obj.attrs[key] = val
        else:
            _store_str(obj, key, json.dumps(val))
            json_keys.append(key)
    if json_keys:
        _store_str(obj, JSON_KEYS, json.dumps(json_keys))


def _store_str(obj: h5py.HLObject, key: str, text: str) -> None:
    """A fixed-length UTF-8 string attr: it lives in the (checksummed) object header."""
    raw = text.encode()
    obj.attrs.create(key, data=np.array(raw), dtype=h5py.string_dtype("utf-8", max(1, len(raw))))


def _create(f: h5py.File, name: str, arr: np.ndarray, compress: bool) -> h5py.Dataset:
    """Dataset with a checksum: chunked + fletcher32, or compact when it cannot be chunked."""
    if arr.ndim > 0 and arr.size > 0:
        return f.create_dataset(name, data=arr, chunks=True, fletcher32=True,
                                compression="gzip" if compress else None,
                                compression_opts=1 if compress else None)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
    lcpl.set_create_intermediate_group(True)
    space = (h5py.h5s.create(h5py.h5s.SCALAR) if arr.ndim == 0
             else h5py.h5s.create_simple(arr.shape))
    dsid = h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(arr.dtype), space,
                           dcpl=dcpl, lcpl=lcpl)
    if arr.size:
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(arr))
    return f[name]


def _load_attrs(obj: h5py.HLObject, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    json_keys = set(json.loads(obj.attrs[JSON_KEYS])) if JSON_KEYS in obj.attrs else set()
    out = {}
    for key, val in obj.attrs.items():
        if key == JSON_KEYS or key in skip:
            continue
        if isinstance(val, bytes):
            val = val.decode()
        if key in json_keys:
            val = json.loads(val)
        elif isinstance(val, np.generic):
            val = val.item()
        out[key] = val
    return out


def _is_table(obj: h5py.HLObject) -> bool:
    kind = obj.attrs.get("kind")
    return isinstance(obj, h5py.Group) and (kind.decode() if isinstance(kind, bytes) else kind) == "table"


def _verify(f: h5py.File, path: Path) -> None:
    """Read every attribute and every dataset once (checksums are checked on read)."""
    where = "/"
    try:
        _load_attrs(f)
        names: list[str] = []
        f.visit(names.append)
        for where in names:
            obj = f[where]
            _load_attrs(obj)
            if isinstance(obj, h5py.Dataset):
                if obj.ndim == 1:            # a table column: in slices, memory stays bounded
                    for i in range(0, obj.shape[0], 16 * TABLE_CHUNK_ROWS):
                        obj[i:i + 16 * TABLE_CHUNK_ROWS]
                else:
                    obj[()]
    except DataError:
        raise
    except Exception as exc:   # h5py raises OSError, KeyError, RuntimeError, ValueError ...
        what = "root group" if where == "/" else f"object {where!r}"
        raise DataError(f"{path} is damaged: {what} fails its checksum or cannot be read "
                        f"({_one_line(exc)}); restore it from its journal or a copy") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_table(g: h5py.Group, content: RunContent, name: str, schema: dict, compress: bool) -> None:
    """One chunked, checksummed (and with `compress` gzip-1 compressed) dataset per column, filled
    piece by piece (memory: one piece of the table at a time)."""
    rows = content.table_rows(name)
    cols = {c: g.create_dataset(c, shape=(rows,), dtype=dt, chunks=(min(rows, TABLE_CHUNK_ROWS),),
                                fletcher32=True, compression="gzip" if compress else None,
                                compression_opts=1 if compress else None)
            for c, dt in schema.items()}
    at = 0
    for piece in content.iter_table(name):
        n = len(next(iter(piece.values())))
        for c, ds in cols.items():
            ds[at:at + n] = piece[c]
        at += n
    _store_str(g, "kind", "table")
    g.attrs["rows"] = rows
    _store_str(g, "columns", json.dumps(list(schema)))


def _fill(f: h5py.File, content: RunContent, status: str) -> None:
    compress = status not in UNCOMPRESSED_STATUSES
    for group, attrs in sorted(content.attrs.items()):
        if group != "/":
            _store_attrs(f.require_group(group.lstrip("/")), attrs)
    st = f.require_group("station")
    _store_str(st, "json", json.dumps(content.station))
    for name, schema in content._schema.items():
        _write_table(f.require_group(name), content, name, schema, compress)
    for name, (arr, attrs) in content.datasets.items():
        ds = _create(f, name, arr, compress=compress)
        _store_attrs(ds, attrs)
    root = dict(content.attrs.get("/", {}))
    root.update(format=FORMAT, schema_version=SCHEMA_VERSION, status=status,
                updated=utc_now(), marks=content.marks)
    root.setdefault("software_version", __version__)
    _store_attrs(f, root)


def write_hdf5(path: str | os.PathLike, content: RunContent, status: str) -> None:
    """Write ``content`` to ``path`` atomically (``<path>.tmp`` + fsync + ``os.replace``)."""
    path = Path(path)
    tmp = Path(str(path) + ".tmp")
    try:
        with h5py.File(tmp, "w", libver=("v108", "latest")) as f:
            _fill(f, content, status)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    log.debug("wrote %s (status %s)", path, status)


class RunRecord:
    """Read-only view of a run record HDF5 file, checked on open."""

    def __init__(self, path: Path, f: h5py.File) -> None:
        self.path = path
        self._f = f
        self.attrs = _load_attrs(f, skip=("marks",))

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunRecord":
        path = Path(path)
        if not path.exists():
            if journal_path(path).exists():
                raise DataError(f"run {path} was interrupted (only its journal exists); "
                                f"run `hil runs recover {path}` first")
            raise DataError(f"no run record at {path}")
        try:
            f = h5py.File(path, "r")
        except Exception as exc:
            raise DataError(f"{path} is not a readable HDF5 file (corrupt or truncated?): "
                            f"{_one_line(exc)}") from None
        try:
            try:
                fmt = f.attrs.get("format")
                version = f.attrs.get("schema_version")
            except Exception as exc:
                raise DataError(f"{path} is damaged: its root attributes cannot be read "
                                f"({_one_line(exc)})") from None
            if isinstance(fmt, bytes):
                fmt = fmt.decode()
            if fmt != FORMAT:
                raise DataError(f"{path} is not a memristor-hil run record "
                                f"(format attribute is {fmt!r}, expected {FORMAT!r})")
            if version is None:
                raise DataError(f"{path} has no schema_version; it is not a valid "
                                f"memristor-hil run record")
            try:
                version = int(version)
            except (TypeError, ValueError):
                version = -1
            if version < 1:
                raise DataError(f"{path} has an invalid schema_version; it is not a valid "
                                f"memristor-hil run record")
            if version > SCHEMA_VERSION:
                raise DataError(f"{path} has schema_version {version} but this software "
                                f"(memristor-hil {__version__}) supports up to "
                                f"{SCHEMA_VERSION}; upgrade memristor-hil to read it")
            _verify(f, path)
            return cls(path, f)
        except BaseException:
            f.close()
            raise

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", ""))

    @property
    def kind(self) -> str:
        return str(self.attrs.get("kind", ""))

    @property
    def station(self) -> dict:
        g = self._f.get("station")
        return json.loads(g.attrs["json"]) if g is not None and "json" in g.attrs else {}

    @property
    def marks(self) -> list[dict]:
        raw = self._f.attrs.get("marks")
        return json.loads(raw) if raw is not None else []

    def _table_group(self, name: str) -> h5py.Group:
        g = self._f.get(name.strip("/"))
        if not isinstance(g, h5py.Group) or not _is_table(g):
            raise DataError(f"{self.path} has no table {name!r}; available tables: "
                            f"{', '.join(self.tables()) or '(none)'}")
        return g

    def table_columns(self, name: str) -> list[str]:
        return json.loads(self._table_group(name).attrs["columns"])

    def table_rows(self, name: str) -> int:
        return int(self._table_group(name).attrs["rows"])

    def table(self, name: str) -> dict[str, np.ndarray]:
        g = self._table_group(name)
        return {c: g[c][()] for c in json.loads(g.attrs["columns"])}

    def dataset(self, name: str) -> tuple[np.ndarray, dict]:
        if name.strip("/") not in self.datasets():
            raise DataError(f"{self.path} has no dataset {name!r}; available datasets: "
                            f"{', '.join(self.datasets()) or '(none)'}")
        ds = self._f[name.strip("/")]
        return np.asarray(ds[()]), _load_attrs(ds)

    def _walk(self) -> tuple[list[str], list[str], list[str]]:
        tables, datasets, groups = [], [], []

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Group):
                groups.append(name)
                if _is_table(obj):
                    tables.append(name)
            elif name.rpartition("/")[0] not in tables:
                datasets.append(name)

        self._f.visititems(visit)
        return tables, datasets, groups

    def tables(self) -> list[str]:
        return self._walk()[0]

    def datasets(self) -> list[str]:
        return self._walk()[1]

    def groups(self) -> list[str]:
        """Every group path ("/" first) except ``/station``."""
        return ["/"] + ["/" + g for g in self._walk()[2] if g != "station"]

    def group_attrs(self, group: str) -> dict:
        """User attrs of a group (table bookkeeping attrs and ``marks`` excluded)."""
        name = group.strip("/")
        if not name:
            return dict(self.attrs)
        g = self._f.get(name)
        if not isinstance(g, h5py.Group):
            raise DataError(f"{self.path} has no group {group!r}")
        return _load_attrs(g, skip=TABLE_ATTRS if _is_table(g) else ())

    def content(self) -> RunContent:
        """Load everything into a :class:`RunContent` (used to resume a closed run)."""
        c = RunContent(station=self.station, marks=self.marks)
        for g in self.groups():
            attrs = self.group_attrs(g)
            if attrs:
                c.attrs[g] = attrs
        c.attrs.get("/", {}).pop("updated", None)
        for name in self.tables():
            cols = self.table(name)
            if cols and len(next(iter(cols.values()))):
                c.add_rows(name, cols)
        for name in self.datasets():
            c.datasets[name] = self.dataset(name)
        return c

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RunRecord":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _brief(value: Any) -> Any:
    if isinstance(value, dict):
        return f"<{len(value)} keys>"
    if isinstance(value, list):
        return f"<list of {len(value)}>"
    return value


def summarize(path: str | os.PathLike) -> dict:
    """Overview of a run record for ``hil runs show`` (no bulk data is read)."""
    with RunRecord.open(path) as rec:
        tables, datasets, _ = rec._walk()
        return {
            "path": str(rec.path),
            "kind": rec.kind,
            "status": rec.status,
            "software_version": rec.attrs.get("software_version"),
            "created": rec.attrs.get("created"),
            "updated": rec.attrs.get("updated"),
            "station": {k: _brief(v) for k, v in rec.station.items()},
            "tables": {t: {"rows": rec.table_rows(t), "columns": rec.table_columns(t)}
                       for t in tables},
            "datasets": {d: {"shape": list(rec._f[d].shape), "dtype": str(rec._f[d].dtype)}
                         for d in datasets},
            "attrs": {g: a for g in rec.groups() if (a := rec.group_attrs(g))},
            "marks": rec.marks,
        }
