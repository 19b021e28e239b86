"""Mapping signed weights onto the chip.

A signed weight of L levels (15 for Yao 2020) is a differential pair of cells of (L+1)/2
conductance levels each: the positive column carries the positive part, the negative column
the negative part; the mapping layer subtracts the two columns' results. A layer's weight
matrix (inputs × outputs) is cut into tiles of at most `rows` inputs × `cols/2` outputs that are
packed onto processing elements; the partial sums of row tiles are added digitally. Convolution
layers are replicated into `groups` convolver groups on their own PEs; the fully connected layers
sit on the remaining PEs and are shared by all groups.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from hil.errors import ConfigError, DataError
from hil.geometry import Cells, Geometry

SHARED = -1          # group of tiles shared by every convolver group (the FC layers)


@dataclass(frozen=True)
class PairEncoding:
    """Signed integer weight levels -n..n <-> conductance pairs (G+, G-) on n+1 levels per cell."""

    g_min_s: float = 2e-6
    g_max_s: float = 20e-6
    cell_levels: int = 8
    tolerance_frac: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.g_min_s < self.g_max_s) or not np.isfinite(self.g_max_s):
            raise ConfigError(f"pair encoding needs 0 < g_min < g_max, got {self.g_min_s}, {self.g_max_s}")
        if self.cell_levels < 2:
            raise ConfigError(f"cell_levels must be >= 2, got {self.cell_levels}")

    @property
    def max_level(self) -> int:
        return self.cell_levels - 1

    @property
    def weight_levels(self) -> int:
        return 2 * self.cell_levels - 1

    @property
    def step_s(self) -> float:
        """Conductance of one weight level."""
        return (self.g_max_s - self.g_min_s) / self.max_level

    @property
    def tolerance_s(self) -> float:
        """Write-verify band half-width."""
        return self.tolerance_frac * self.step_s

    def encode(self, q) -> tuple[np.ndarray, np.ndarray]:
        """Integer levels -> (G+, G-) targets in siemens."""
        q = np.asarray(q)
        if not np.issubdtype(q.dtype, np.integer):
            if not np.all(np.isfinite(q)):
                raise DataError("weight levels contain NaN or infinite values")
            if np.any(q != np.round(q)):
                raise DataError("weight levels must be integers")
        q = q.astype(np.int64)
        if q.size and np.abs(q).max() > self.max_level:
            raise DataError(f"weight levels must be within ±{self.max_level}, got {q.min()}..{q.max()}")
        pos = self.g_min_s + np.maximum(q, 0) * self.step_s
        neg = self.g_min_s + np.maximum(-q, 0) * self.step_s
        return pos, neg

    def decode(self, g_pos, g_neg) -> np.ndarray:
        """(G+, G-) -> real-valued weight levels."""
        return (np.asarray(g_pos, float) - np.asarray(g_neg, float)) / self.step_s


@dataclass(frozen=True)
class Tile:
    """A block of a layer's weight matrix on one PE.

    Inputs in0..in0+n_in-1 drive PE rows row0..; outputs out0..out0+n_out-1 are column pairs
    (col0 + 2j positive, col0 + 2j + 1 negative)."""

    layer: str
    group: int
    pe: int
    row0: int
    col0: int
    in0: int
    n_in: int
    out0: int
    n_out: int

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.row0, self.row0 + self.n_in)

    @property
    def cols(self) -> np.ndarray:
        return np.arange(self.col0, self.col0 + 2 * self.n_out)

    @property
    def pos_cols(self) -> np.ndarray:
        """Positions of the positive columns within `cols`."""
        return np.arange(0, 2 * self.n_out, 2)

    @property
    def neg_cols(self) -> np.ndarray:
        return np.arange(1, 2 * self.n_out, 2)


def tile_cells(tiles: Sequence[Tile]):
    """(Cells, input index, output index, sign +1/-1) of every cell of `tiles`, tile by tile,
    positive then negative member, (input, output) row-major within each."""
    pe, row, col, i_in, i_out, sign = [], [], [], [], [], []
    for t in tiles:
        ii, oo = np.meshgrid(np.arange(t.n_in), np.arange(t.n_out), indexing="ij")
        for s, off in ((1, 0), (-1, 1)):
            pe.append(np.full(ii.size, t.pe))
            row.append((t.row0 + ii).ravel())
            col.append((t.col0 + 2 * oo + off).ravel())
            i_in.append((t.in0 + ii).ravel())
            i_out.append((t.out0 + oo).ravel())
            sign.append(np.full(ii.size, s))
    cat = np.concatenate
    return Cells(cat(pe), cat(row), cat(col)), cat(i_in), cat(i_out), cat(sign)


@dataclass
class AllocationPlan:
    """Which PE, rows and columns hold which layer and which replica group."""

    geometry: Geometry
    layers: dict                      # name -> (n_in, n_out)
    conv_layers: tuple
    fc_layers: tuple
    groups: int
    tiles: list = field(default_factory=list)

    def tiles_for(self, layer: str, group: int = 0) -> list[Tile]:
        g = SHARED if layer in self.fc_layers else group
        out = [t for t in self.tiles if t.layer == layer and t.group == g]
        if not out:
            raise ConfigError(f"plan holds no tiles for layer {layer!r} group {group}")
        return out

    def groups_of(self, layer: str, groups: Optional[Iterable[int]] = None) -> list[int]:
        """Replica groups of `layer`: [SHARED] for FC layers, else `groups` (default all)."""
        if layer not in self.layers:
            raise ConfigError(f"the allocation plan has no layer {layer!r}")
        if layer in self.fc_layers:
            return [SHARED]
        return list(range(self.groups)) if groups is None else [int(g) for g in groups]

    def pes_of(self, group: int) -> list[int]:
        return sorted({t.pe for t in self.tiles if t.group == group})

    def cells(self, layer: str, group: int = 0):
        """(Cells, input index, output index, sign +1/-1) of every cell of a layer replica."""
        return tile_cells(self.tiles_for(layer, group))

    def targets(self, layer: str, group: int, levels: np.ndarray, enc: PairEncoding):
        """(Cells, target conductances) for a layer replica with integer weight `levels` (n_in, n_out)."""
        levels = np.asarray(levels)
        if levels.shape != tuple(self.layers[layer]):
            raise DataError(f"layer {layer!r}: weight matrix shape {levels.shape}, plan expects {self.layers[layer]}")
        cells, i_in, i_out, sign = self.cells(layer, group)
        pos, neg = enc.encode(levels[i_in, i_out])
        return cells, np.where(sign > 0, pos, neg)

    def locate(self, pe: int, row: int, col: int) -> Optional[dict]:
        """What cell (pe, row, col) holds: layer, group, input, output, sign; None if unused."""
        for t in self.tiles:
            if t.pe == pe and t.row0 <= row < t.row0 + t.n_in and t.col0 <= col < t.col0 + 2 * t.n_out:
                j, neg = divmod(col - t.col0, 2)
                return {"layer": t.layer, "group": t.group, "input": t.in0 + row - t.row0,
                        "output": t.out0 + j, "sign": -1 if neg else 1}
        return None

    def label_map(self) -> np.ndarray:
        """(n_pe, rows, cols) array of strings 'layer/gN' ('' for unused cells), for drawing."""
        g = self.geometry
        out = np.full(g.shape, "", dtype=object)
        for t in self.tiles:
            tag = t.layer if t.group == SHARED else f"{t.layer}/g{t.group + 1}"
            out[t.pe, t.row0:t.row0 + t.n_in, t.col0:t.col0 + 2 * t.n_out] = tag
        return out

    def table(self) -> str:
        """Printable allocation table."""
        lines = [f"{'layer':6} {'group':>5} {'PE':>3} {'rows':>9} {'cols':>7} {'inputs':>9} {'outputs':>8}"]
        for t in sorted(self.tiles, key=lambda t: (t.pe, t.row0, t.col0)):
            grp = "all" if t.group == SHARED else f"G{t.group + 1}"
            lines.append(f"{t.layer:6} {grp:>5} {t.pe:>3} {t.row0:>4}-{t.row0 + t.n_in - 1:<4} "
                         f"{t.col0:>3}-{t.col0 + 2 * t.n_out - 1:<3} {t.in0:>4}-{t.in0 + t.n_in - 1:<4} "
                         f"{t.out0:>3}-{t.out0 + t.n_out - 1:<4}")
        used = sum(2 * t.n_in * t.n_out for t in self.tiles)
        lines.append(f"{len(self.tiles)} tiles on {len({t.pe for t in self.tiles})} of {self.geometry.n_pe} PEs, "
                     f"{used} cells ({100 * used / self.geometry.n_cells:.0f}% of the chip)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"geometry": self.geometry.to_dict(), "layers": {k: list(v) for k, v in self.layers.items()},
                "conv_layers": list(self.conv_layers), "fc_layers": list(self.fc_layers),
                "groups": self.groups, "tiles": [asdict(t) for t in self.tiles]}

    @classmethod
    def from_dict(cls, d: dict) -> "AllocationPlan":
        try:
            return cls(Geometry.from_dict(d["geometry"]), {k: tuple(v) for k, v in d["layers"].items()},
                       tuple(d["conv_layers"]), tuple(d["fc_layers"]), int(d["groups"]),
                       [Tile(**t) for t in d["tiles"]])
        except (KeyError, TypeError) as e:
            raise DataError(f"allocation plan in the run record is malformed: {e}") from None


# ---- packing -----------------------------------------------------------------------------
def _split(n: int, k: int) -> list[tuple[int, int]]:
    """n items into k nearly equal consecutive chunks: [(start, size), ...]."""
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    starts = np.cumsum([0] + sizes[:-1])
    return [(int(s), int(z)) for s, z in zip(starts, sizes) if z > 0]


def _layer_tiles(name: str, n_in: int, n_out: int, k_rows: int, geom: Geometry) -> list[tuple]:
    pairs = geom.cols // 2
    return [(name, i0, ni, o0, no) for i0, ni in _split(n_in, k_rows)
            for o0, no in _split_cap(n_out, pairs)]


def _split_cap(n: int, cap: int) -> list[tuple[int, int]]:
    """n outputs into chunks of at most `cap`, largest first."""
    return [(s, min(cap, n - s)) for s in range(0, n, cap)]


def _pack(blocks: list[tuple], pes: Sequence[int], geom: Geometry) -> Optional[list[tuple]]:
    """Guillotine-pack blocks (name, in0, n_in, out0, n_out) of n_in rows x 2*n_out columns onto
    the PEs, largest first; None when they do not fit."""
    free = {pe: [(0, 0, geom.rows, geom.cols)] for pe in pes}       # (row0, col0, h, w)
    placed = []
    for b in sorted(blocks, key=lambda b: (-b[2] * b[4], -b[2])):
        h, w = b[2], 2 * b[4]
        best = None
        for pe in pes:
            for j, (r, c, fh, fw) in enumerate(free[pe]):
                if h <= fh and w <= fw:
                    score = min(fh - h, fw - w)
                    if best is None or score < best[0]:
                        best = (score, pe, j)
        if best is None:
            return None
        _, pe, j = best
        r, c, fh, fw = free[pe].pop(j)
        placed.append((b, pe, r, c))
        # Split the leftover along the shorter remainder so the larger free rectangle stays whole.
        if fw - w > fh - h:
            new = [(r, c + w, fh, fw - w), (r + h, c, fh - h, w)]
        else:
            new = [(r + h, c, fh - h, fw), (r, c + w, h, fw - w)]
        free[pe].extend(x for x in new if x[2] > 0 and x[3] > 0)
    return placed


def _pack_layers(layers: dict, names: Sequence[str], pes: Sequence[int], geom: Geometry,
                 budget: Optional[int] = None):
    """Pack `names` onto at most `budget` of `pes` with the fewest tiles (fewest digital partial
    sums), then the fewest PEs; several row splits per layer are tried."""
    options = []
    for name in names:
        n_in, _ = layers[name]
        k0 = -(-n_in // geom.rows)
        options.append(range(k0, k0 + 3))
    best = None
    for n_pes in range(1, min(len(pes), budget or len(pes)) + 1):
        for ks in itertools.product(*options):
            blocks = [t for name, k in zip(names, ks) for t in _layer_tiles(name, *layers[name], k, geom)]
            placed = _pack(blocks, pes[:n_pes], geom)
            if placed is not None and (best is None or len(placed) < len(best)):
                best = placed
    return best


def _pack_fewest_pes(layers: dict, names: Sequence[str], pes: Sequence[int], geom: Geometry):
    """Pack onto the fewest PEs (then the fewest tiles)."""
    for n in range(1, len(pes) + 1):
        placed = _pack_layers(layers, names, pes[:n], geom, n)
        if placed is not None:
            return placed
    return None


def _cells_needed(layers: dict, names: Iterable[str]) -> int:
    return sum(2 * layers[n][0] * layers[n][1] for n in names)


def plan_network(geometry: Geometry, layers: dict, conv_layers: Sequence[str], fc_layers: Sequence[str],
                 groups: int = 1) -> AllocationPlan:
    """Allocate `groups` replicas of the convolution layers, then the shared FC layers.

    `layers` maps a layer name to its weight matrix shape (n_in, n_out). Raises ConfigError
    naming what does not fit."""
    if groups < 1:
        raise ConfigError(f"groups must be >= 1, got {groups}")
    for name, (n_in, n_out) in layers.items():
        if n_in < 1 or n_out < 1:
            raise ConfigError(f"layer {name!r} has an empty weight matrix {n_in}x{n_out}")
    if geometry.cols < 2:
        raise ConfigError("differential pairs need PEs with at least 2 columns")
    all_pes = list(range(geometry.n_pe))
    # FC first from the top PEs, so the conv groups can take the low PEs in order.
    fc_placed = _pack_fewest_pes(layers, fc_layers, all_pes[::-1], geometry) if fc_layers else []
    if fc_placed is None:
        raise ConfigError(f"the FC layers need more than the chip's {geometry.n_pe} PEs of "
                          f"{geometry.rows}x{geometry.cols} ({_cells_needed(layers, fc_layers)} cells)")
    fc_pes = {pe for *_, pe, _, _ in ((b, pe, r, c) for b, pe, r, c in fc_placed)}
    free = [pe for pe in all_pes if pe not in fc_pes]
    tiles = [Tile(b[0], SHARED, pe, r, c, b[1], b[2], b[3], b[4]) for b, pe, r, c in fc_placed]
    for g in range(groups):
        budget = max(1, len(free) // (groups - g))
        placed = _pack_layers(layers, conv_layers, free, geometry, budget) if free else None
        if placed is None:
            raise ConfigError(
                f"network does not fit: convolver group {g + 1} of {groups} finds no room "
                f"({_cells_needed(layers, conv_layers)} cells per group, FC on PEs {sorted(fc_pes)}, "
                f"chip {geometry.n_pe} PEs of {geometry.rows}x{geometry.cols}); use fewer groups or a larger chip")
        used = {pe for _, pe, _, _ in placed}
        tiles += [Tile(b[0], g, pe, r, c, b[1], b[2], b[3], b[4]) for b, pe, r, c in placed]
        free = [pe for pe in free if pe not in used]
    return AllocationPlan(geometry, {k: tuple(v) for k, v in layers.items()}, tuple(conv_layers),
                          tuple(fc_layers), groups, tiles)
