"""Placement of weight matrices on the good lines of a PE (PAPERS.md §B).

Only crossings of good rows and good columns are used; positions below are indices into the
lists of good rows and good columns, mapped to physical lines at the end. A weight W[i, o] takes
four cells in one column: two differential pairs on adjacent good rows, (+, −) of copy 1 and
(+, −) of copy 2. A layer's inputs are split into tiles of at most ⌊good rows / 4⌋ inputs (rows
4·k .. 4·k+3 of a tile belong to input k), one column per output; partial sums of the tiles are
added digitally. Tiles are packed into vertical shelves of good columns, widest first, each tile
into the first shelf with room (a new shelf when none has). A chip with too few good lines is a
one-line ConfigError saying how many are needed and how many were found.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hil.errors import ConfigError
from hil.geometry import Cells

__all__ = ["CELLS_PER_WEIGHT", "LayerPlacement", "Placement", "place", "Tile"]

#: a differential pair (2 cells) stored twice
CELLS_PER_WEIGHT = 4
PLUS, MINUS = 0, 1


@dataclass(frozen=True)
class Tile:
    """Inputs [in_start, in_stop) of a layer on good rows [row0, row0 + 4·n) × good columns
    [col0, col0 + n_out) (indices into the good-line lists)."""

    layer: str
    in_start: int
    in_stop: int
    row0: int
    col0: int


@dataclass(frozen=True)
class LayerPlacement:
    """Physical cells of one layer: `rows`, `cols` have shape (n_in, n_out, 2, 2) indexed by
    [input, output, sign (0 = +, 1 = −), copy (0, 1)]; `tiles` say how the inputs were split."""

    name: str
    pe: int
    rows: np.ndarray
    cols: np.ndarray
    tiles: tuple

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape[:2]

    def cells(self, sign: int, copy: int) -> Cells:
        """The cells of one sign and copy of every weight, in weight (input-major) order."""
        if sign not in (PLUS, MINUS) or copy not in (0, 1):
            raise ConfigError(f"sign must be 0 (+) or 1 (−) and copy 0 or 1, got {sign}, {copy}")
        return Cells(self.pe, self.rows[:, :, sign, copy].ravel(), self.cols[:, :, sign, copy].ravel())

    def all_cells(self) -> Cells:
        return Cells(self.pe, self.rows.ravel(), self.cols.ravel())


@dataclass(frozen=True)
class Placement:
    """Every layer's cells on one PE; `shelves` = widths of the column shelves used."""

    pe: int
    layers: dict
    shelves: tuple

    @property
    def n_cells(self) -> int:
        return sum(lp.rows.size for lp in self.layers.values())

    @property
    def n_cols_used(self) -> int:
        return int(sum(self.shelves))

    def all_cells(self) -> Cells:
        parts = [lp.all_cells() for lp in self.layers.values()]
        return Cells(self.pe, np.concatenate([p.row for p in parts]), np.concatenate([p.col for p in parts]))

    def save(self, writer, prefix: str = "placement") -> None:
        """Store every layer's (n_in, n_out, 2, 2) row and column indices in a run record."""
        for name, lp in self.layers.items():
            writer.put(f"{prefix}/{name}/rows", lp.rows, axes="input, output, sign (+, -), copy")
            writer.put(f"{prefix}/{name}/cols", lp.cols, axes="input, output, sign (+, -), copy")
        writer.set_attrs(prefix, pe=self.pe, n_cells=self.n_cells, shelves=list(self.shelves),
                         layers=list(self.layers))


def _layer_specs(layers) -> list[tuple[str, int, int]]:
    out = []
    for item in layers:
        try:
            name, (n_in, n_out) = item
        except (TypeError, ValueError):
            raise ConfigError(f"a layer to place is (name, (n_inputs, n_outputs)), got {item!r}") from None
        for v in (n_in, n_out):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"layer {name!r}: shape must be two positive integers, got {(n_in, n_out)!r}")
        out.append((str(name), int(n_in), int(n_out)))
    if len({n for n, _, _ in out}) != len(out):
        raise ConfigError("layer names to place must be unique")
    return out


def place(good_rows: Sequence[int], good_cols: Sequence[int], layers, pe: int = 0) -> Placement:
    """Place `layers` ([(name, (n_in, n_out)), ...], e.g. `WangCNN().weight_specs()`) on the
    crossings of `good_rows` × `good_cols` of PE `pe` (e.g. a `YieldMap`'s good_rows/good_cols)."""
    specs = _layer_specs(layers)
    rows_phys = np.unique(np.asarray(good_rows, dtype=np.int64))
    cols_phys = np.unique(np.asarray(good_cols, dtype=np.int64))
    if rows_phys.size < CELLS_PER_WEIGHT:
        raise ConfigError(f"placement needs at least {CELLS_PER_WEIGHT} good rows (two pairs of one weight); "
                          f"found {rows_phys.size}")
    per_tile = rows_phys.size // CELLS_PER_WEIGHT
    tiles = []                                    # (width, height, layer, in_start, in_stop)
    for name, n_in, n_out in specs:
        for part in np.array_split(np.arange(n_in), -(-n_in // per_tile)):
            tiles.append((n_out, CELLS_PER_WEIGHT * part.size, name, int(part[0]), int(part[-1]) + 1))
    tiles.sort(key=lambda t: (-t[0], -t[1]))
    shelves: list[list[int]] = []                 # [col0, width, rows used]
    placed = []
    for width, height, name, a, b in tiles:
        shelf = next((s for s in shelves if s[1] >= width and s[2] + height <= rows_phys.size), None)
        if shelf is None:
            shelf = [sum(s[1] for s in shelves), width, 0]
            shelves.append(shelf)
        placed.append(Tile(name, a, b, shelf[2], shelf[0]))
        shelf[2] += height
    need = sum(s[1] for s in shelves)
    if need > cols_phys.size:
        total = sum(n_in * n_out for _, n_in, n_out in specs)
        raise ConfigError(f"placement of {total} weights ({CELLS_PER_WEIGHT * total} cells) needs {need} good "
                          f"columns with {rows_phys.size} good rows; found {cols_phys.size} good columns")
    out = {}
    for name, n_in, n_out in specs:
        rows = np.empty((n_in, n_out, 2, 2), np.int64)
        cols = np.empty((n_in, n_out, 2, 2), np.int64)
        mine = tuple(t for t in placed if t.layer == name)
        for t in sorted(mine, key=lambda t: t.in_start):
            k = np.arange(t.in_stop - t.in_start)
            # row of input k, sign s, copy c: 4k + 2c + s (the two cells of a pair adjacent)
            r = t.row0 + CELLS_PER_WEIGHT * k[:, None, None] + 2 * np.arange(2)[None, None, :] + np.arange(2)[None, :, None]
            rows[t.in_start:t.in_stop] = rows_phys[r][:, None, :, :]
            cols[t.in_start:t.in_stop] = cols_phys[t.col0 + np.arange(n_out)][None, :, None, None]
        out[name] = LayerPlacement(name, int(pe), rows, cols, tuple(sorted(mine, key=lambda t: t.in_start)))
    return Placement(int(pe), out, tuple(s[1] for s in shelves))
