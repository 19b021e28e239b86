"""Any dataset or table of a run record to CSV or NPY.

CSV of a dataset: a comment line (`# <record> <name> shape (a, b, c) <dtype>`) then the values as rows
of its last axis (a 3-D+ array is flattened to (a*b, c); `np.loadtxt(f, delimiter=",",
dtype=dtype).reshape(shape)` restores it).
CSV of a table: a header row of the column names, one row per record row. NPY: the array itself,
a table as a structured array with one field per column. Floats are written with 17 significant
digits (9 for float32), so both formats round-trip exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hil.errors import ConfigError, DataError, HilError
from hil.runstore.hdf5 import RunRecord, _one_line

FORMATS = (".csv", ".npy")


def read_item(record: str | os.PathLike, name: str) -> tuple[np.ndarray, bool]:
    """(array, is_table) of the dataset or table `name` of `record` (a table as a structured
    array); DataError naming what the record holds otherwise."""
    with RunRecord.open(record) as rec:
        name = name.strip("/")
        if name in rec.tables():
            cols = rec.table(name)
            out = np.empty(rec.table_rows(name), dtype=[(c, a.dtype) for c, a in cols.items()])
            for c, a in cols.items():
                out[c] = a
            return out, True
        if name in rec.datasets():
            return rec.dataset(name)[0], False
        raise DataError(f"{record} has no dataset or table {name!r}; datasets: {', '.join(rec.datasets()) or '(none)'}"
                        f"; tables: {', '.join(rec.tables()) or '(none)'}")


def export_item(record: str | os.PathLike, name: str, out: str | os.PathLike) -> Path:
    """Write the dataset or table `name` of `record` to `out` (.csv or .npy); returns `out`."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"export to {out}: the file must end in .csv or .npy")
    arr, is_table = read_item(record, name)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".npy":
            np.save(out, arr, allow_pickle=False)
        elif is_table:
            _table_csv(out, arr)
        else:
            _array_csv(out, arr, f"{Path(record).name} {name.strip('/')} shape {arr.shape} {arr.dtype}")
    except OSError as e:
        raise HilError(f"cannot write {out}: {_one_line(e)}") from None
    return out


def _fmt(dtype: np.dtype) -> str:
    if dtype.kind in "iub":
        return "%d"
    if dtype.kind == "f":
        return "%.9g" if dtype.itemsize <= 4 else "%.17g"      # enough digits to round-trip
    raise DataError(f"values of type {dtype} cannot be written as CSV numbers; export to .npy instead")


def _array_csv(out: Path, arr: np.ndarray, header: str) -> None:
    arr = np.asarray(arr)
    rows = arr.reshape(1, 1) if arr.ndim == 0 else arr.reshape(-1, 1) if arr.ndim == 1 else \
        arr.reshape(-1, arr.shape[-1])
    np.savetxt(out, rows.astype(np.int64) if arr.dtype.kind == "b" else rows, fmt=_fmt(arr.dtype),
               delimiter=",", header=header)


def _table_csv(out: Path, table: np.ndarray) -> None:
    names = table.dtype.names
    np.savetxt(out, table, fmt=[_fmt(table.dtype[c]) for c in names], delimiter=",", header=",".join(names),
               comments="")
