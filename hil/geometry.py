"""Chip geometry and vectorized cell addressing (PE, row, column)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from hil.errors import AddressError, ConfigError
from hil.schema import Number, SchemaError, Table, Text, located, validate

#: largest side (PEs, rows or columns) of a chip
MAX_SIDE = 2**16
#: largest chip: the simulator holds about 100 bytes per cell, so 2**24 cells are ~1.6 GB
#: (1024 Yao chips); larger geometries are refused before anything is allocated
MAX_CELLS = 2**24


@dataclass(frozen=True)
class Geometry:
    """Processing elements of `rows` x `cols` 1T1R cells each."""

    n_pe: int
    rows: int
    cols: int
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("n_pe", "rows", "cols"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_SIDE:
                raise ConfigError(f"geometry.{key} must be an integer in 1..{MAX_SIDE}, got {v!r}")
        if self.n_cells > MAX_CELLS:
            raise ConfigError(f"geometry {self.n_pe}x{self.rows}x{self.cols} has {self.n_cells} cells; at most "
                              f"{MAX_CELLS} (2**24) fit in memory")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_pe, self.rows, self.cols)

    @property
    def n_cells(self) -> int:
        return self.n_pe * self.rows * self.cols

    def to_dict(self) -> dict:
        return {"name": self.name, "n_pe": self.n_pe, "rows": self.rows, "cols": self.cols}

    @classmethod
    def from_dict(cls, d: dict, key: str = "geometry") -> "Geometry":
        """From a [geometry] table: `preset = "yao"` or `n_pe`, `rows`, `cols` (and `name`).
        Raises SchemaError naming `key`."""
        d = validate(d, GEOMETRY_SCHEMA, key)
        if "preset" in d:
            return PRESETS[d["preset"].lower()]
        return cls(d["n_pe"], d["rows"], d["cols"], d.get("name", "custom"))


YAO = Geometry(8, 128, 16, "yao")
WANG = Geometry(1, 128, 64, "wang")
PRESETS = {"yao": YAO, "wang": WANG}


def preset(name: str) -> Geometry:
    """Geometry preset by name: 'yao' (8 x 128 x 16) or 'wang' (1 x 128 x 64)."""
    with located("geometry"):
        return PRESETS[Text(sorted(PRESETS), fold=True).check(name, "preset").lower()]


def _geometry_after(d: dict, key: str) -> None:
    dims = [k for k in ("n_pe", "rows", "cols") if k in d]
    if "preset" in d:
        if dims:
            raise SchemaError(f"{key}.{dims[0]}", "give either preset or n_pe, rows and cols, not both")
        return
    for k in ("n_pe", "rows", "cols"):
        if k not in d:
            raise SchemaError(f"{key}.{k}", "is missing: give n_pe, rows and cols (or preset = \"yao\" / \"wang\")")
    n = d["n_pe"] * d["rows"] * d["cols"]
    if n > MAX_CELLS:
        raise SchemaError(key, f"{d['n_pe']}x{d['rows']}x{d['cols']} is {n} cells; at most {MAX_CELLS} (2**24) "
                               f"fit in memory")


_SIDE = Number(1, MAX_SIDE, integer=True)
#: the [geometry] table of station files (also run records' geometry dicts)
GEOMETRY_SCHEMA = Table({"preset": Text(sorted(PRESETS), fold=True), "n_pe": _SIDE, "rows": _SIDE,
                         "cols": _SIDE, "name": Text(max_len=200)}, after=_geometry_after)


IndexLike = Union[int, slice, Sequence[int], np.ndarray, None]


class Cells:
    """A selection of cells as three equal-length integer index arrays.

    Any selection (one cell, a block, a scattered set) is the same object, so every
    backend operation is vectorized over it.
    """

    __slots__ = ("pe", "row", "col")

    def __init__(self, pe, row, col) -> None:
        pe, row, col = (np.atleast_1d(np.asarray(a)) for a in (pe, row, col))
        try:
            pe, row, col = np.broadcast_arrays(pe, row, col)
        except ValueError:
            raise AddressError(
                f"cell index arrays have incompatible shapes {pe.shape}, {row.shape}, {col.shape}") from None
        for name, a in (("pe", pe), ("row", row), ("col", col)):
            if a.size and not np.issubdtype(a.dtype, np.integer):
                if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                    raise AddressError(f"cell {name} indices must be integers, got {a.dtype} values")
        self.pe = pe.astype(np.int64).ravel()
        self.row = row.astype(np.int64).ravel()
        self.col = col.astype(np.int64).ravel()

    def __len__(self) -> int:
        return self.pe.size

    def __repr__(self) -> str:
        return f"Cells(n={len(self)})"

    def __getitem__(self, idx) -> "Cells":
        return Cells(self.pe[idx], self.row[idx], self.col[idx])

    def validate(self, geometry: Geometry) -> "Cells":
        """Raise AddressError naming the first out-of-range address; return self."""
        for name, a, n in (("PE", self.pe, geometry.n_pe), ("row", self.row, geometry.rows),
                           ("column", self.col, geometry.cols)):
            bad = (a < 0) | (a >= n)
            if bad.any():
                i = int(np.argmax(bad))
                raise AddressError(
                    f"{name} index {int(a[i])} out of range 0..{n - 1} for geometry "
                    f"{geometry.n_pe}x{geometry.rows}x{geometry.cols} (cell #{i} of the selection)")
        return self

    def flat(self, geometry: Geometry) -> np.ndarray:
        """Flat index (pe * rows + row) * cols + col."""
        return (self.pe * geometry.rows + self.row) * geometry.cols + self.col

    @classmethod
    def from_flat(cls, flat, geometry: Geometry) -> "Cells":
        flat = np.asarray(flat, dtype=np.int64)
        pe, rest = np.divmod(flat, geometry.rows * geometry.cols)
        row, col = np.divmod(rest, geometry.cols)
        return cls(pe, row, col)

    @classmethod
    def block(cls, pe: int, rows: IndexLike = None, cols: IndexLike = None,
              geometry: Optional[Geometry] = None) -> "Cells":
        """All cells of `rows` x `cols` in one PE (None = all, needs geometry)."""
        r = _index(rows, geometry.rows if geometry else None, "rows")
        c = _index(cols, geometry.cols if geometry else None, "cols")
        rr, cc = np.meshgrid(r, c, indexing="ij")
        return cls(np.full(rr.size, pe), rr.ravel(), cc.ravel())

    @classmethod
    def all(cls, geometry: Geometry, pes: Optional[Iterable[int]] = None) -> "Cells":
        """Every cell of the chosen PEs (default: all), in PE, row, column order."""
        pes = list(range(geometry.n_pe)) if pes is None else list(pes)
        if not pes:
            raise AddressError("no PE selected")
        for p in pes:
            if not 0 <= p < geometry.n_pe:
                raise AddressError(f"PE {p} out of range 0..{geometry.n_pe - 1}")
        per = geometry.rows * geometry.cols
        flat = np.concatenate([np.arange(p * per, (p + 1) * per) for p in pes])
        return cls.from_flat(flat, geometry)


def _index(sel: IndexLike, n: Optional[int], what: str) -> np.ndarray:
    if sel is None or isinstance(sel, slice):
        if n is None:
            raise AddressError(f"{what}: a slice or None needs the geometry")
        return np.arange(n)[sel if isinstance(sel, slice) else slice(None)]
    return np.atleast_1d(np.asarray(sel, dtype=np.int64))
