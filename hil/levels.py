"""Conductance level tables, target patterns and target validation.

A `LevelTable` is the list of conductances (siemens) cells are programmed to, plus the
half-width of the in-band window write-verify accepts around each level. Yao et al. (2020)
program 32 levels in a 2–20 µS window; `LevelTable.linear()` defaults to that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from hil.errors import ConfigError

__all__ = ["LevelTable", "make_pattern", "validate_targets", "PATTERNS", "format_us"]


def format_us(g_s: float) -> str:
    """Conductance in siemens as a short µS string with at least one decimal: 2e-6 -> '2.0'."""
    x = float(g_s) * 1e6
    if not np.isfinite(x):
        return str(x)
    s = f"{x:.3f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


@dataclass(frozen=True, eq=False)
class LevelTable:
    """Programmable conductance levels (siemens, strictly increasing) and the half-width
    `tolerance_s` of the in-band window around each level.

    Neighbouring bands must not overlap (2 * tolerance_s <= smallest level spacing), so every
    in-band conductance belongs to exactly one level."""

    levels_s: np.ndarray
    tolerance_s: float

    def __post_init__(self) -> None:
        try:
            levels = np.array(self.levels_s, dtype=float)
        except (TypeError, ValueError):
            raise ConfigError(f"level table: levels_s must be a list of numbers (siemens), "
                              f"got {self.levels_s!r}") from None
        if levels.ndim != 1:
            raise ConfigError(f"level table: levels_s must be a 1-D list, got shape {levels.shape}")
        if levels.size < 2:
            raise ConfigError(f"level table needs at least 2 levels, got {levels.size}")
        bad = ~np.isfinite(levels)
        if bad.any():
            i = int(np.argmax(bad))
            what = "NaN" if np.isnan(levels[i]) else "infinite"
            raise ConfigError(f"level table: level #{i} is {what}; every level must be a finite conductance")
        if (levels < 0).any():
            i = int(np.argmax(levels < 0))
            raise ConfigError(f"level table: level #{i} = {format_us(levels[i])} µS is negative; "
                              f"conductances cannot be negative")
        steps = np.diff(levels)
        if (steps <= 0).any():
            i = int(np.argmax(steps <= 0))
            raise ConfigError(
                f"level table: levels must be strictly increasing, but level #{i + 1} = "
                f"{format_us(levels[i + 1])} µS is not above level #{i} = {format_us(levels[i])} µS")
        try:
            tol = float(self.tolerance_s)
        except (TypeError, ValueError):
            raise ConfigError(f"level table: tolerance_s must be a number (siemens), "
                              f"got {self.tolerance_s!r}") from None
        if not np.isfinite(tol) or tol <= 0:
            raise ConfigError(f"level table: tolerance_s must be a positive finite number, got {tol!r}")
        min_step = float(steps.min())
        if 2 * tol > min_step * (1 + 1e-9):
            i = int(np.argmin(steps))
            raise ConfigError(
                f"level table: tolerance {format_us(tol)} µS is too large: the bands of level #{i} "
                f"({format_us(levels[i])} µS) and level #{i + 1} ({format_us(levels[i + 1])} µS) overlap; "
                f"the tolerance must be at most half the smallest spacing ({format_us(min_step / 2)} µS)")
        levels.setflags(write=False)
        object.__setattr__(self, "levels_s", levels)
        object.__setattr__(self, "tolerance_s", tol)

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def linear(cls, g_min: float = 2e-6, g_max: float = 20e-6, n: int = 32,
               tolerance_frac: float = 0.4) -> "LevelTable":
        """`n` levels evenly spaced from `g_min` to `g_max` (both included);
        tolerance = `tolerance_frac` * spacing (at most 0.5, or the bands overlap)."""
        try:
            n_int = int(n)
        except (TypeError, ValueError):
            raise ConfigError(f"level table: n must be an integer, got {n!r}") from None
        if n_int != n or n_int < 2:
            raise ConfigError(f"level table needs at least 2 levels, got n = {n!r}")
        for name, v in (("g_min", g_min), ("g_max", g_max), ("tolerance_frac", tolerance_frac)):
            if not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
                raise ConfigError(f"level table: {name} must be a finite number, got {v!r}")
        if not g_max > g_min:
            raise ConfigError(f"level table: g_max ({format_us(g_max)} µS) must be above "
                              f"g_min ({format_us(g_min)} µS)")
        if tolerance_frac <= 0:
            raise ConfigError(f"level table: tolerance_frac must be positive, got {tolerance_frac!r}")
        if tolerance_frac > 0.5:
            raise ConfigError(f"level table: tolerance_frac {tolerance_frac} > 0.5 makes neighbouring "
                              f"bands overlap; use at most 0.5 (0.3 is typical)")
        levels = np.linspace(float(g_min), float(g_max), n_int)
        spacing = (float(g_max) - float(g_min)) / (n_int - 1)
        return cls(levels, float(tolerance_frac) * spacing)

    # ---- queries ---------------------------------------------------------------------
    @property
    def n_levels(self) -> int:
        return int(self.levels_s.size)

    @property
    def g_window(self) -> Tuple[float, float]:
        """(lowest, highest) level: the programmable window targets must lie in."""
        return float(self.levels_s[0]), float(self.levels_s[-1])

    def band(self, targets) -> Tuple[np.ndarray, np.ndarray]:
        """(lo, hi) in-band limits around `targets` (siemens)."""
        t = np.asarray(targets, dtype=float)
        return t - self.tolerance_s, t + self.tolerance_s

    def nearest_level(self, g) -> np.ndarray:
        """Index of the level closest to each conductance in `g` (same shape as `g`)."""
        g = np.asarray(g, dtype=float)
        mids = 0.5 * (self.levels_s[:-1] + self.levels_s[1:])
        return np.searchsorted(mids, g, side="left").astype(np.int64)

    def targets(self, level_index) -> np.ndarray:
        """Conductances of the given level indices (ConfigError if any is out of range)."""
        idx = np.asarray(level_index)
        if idx.size and (not np.issubdtype(idx.dtype, np.integer)):
            raise ConfigError(f"level indices must be integers, got {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_levels):
            bad = (idx < 0) | (idx >= self.n_levels)
            i = int(np.argmax(bad.ravel()))
            raise ConfigError(f"level index #{i} = {int(idx.ravel()[i])} is outside 0..{self.n_levels - 1}")
        return self.levels_s[idx]

    # ---- equality and serialization -------------------------------------------------
    def __eq__(self, other) -> bool:
        if not isinstance(other, LevelTable):
            return NotImplemented
        return self.tolerance_s == other.tolerance_s and np.array_equal(self.levels_s, other.levels_s)

    def __hash__(self) -> int:
        return hash((self.tolerance_s, self.levels_s.tobytes()))

    def __repr__(self) -> str:
        lo, hi = self.g_window
        return (f"LevelTable({self.n_levels} levels {format_us(lo)}–{format_us(hi)} µS, "
                f"tolerance ±{format_us(self.tolerance_s)} µS)")

    def to_dict(self) -> dict:
        return {"levels_s": [float(x) for x in self.levels_s], "tolerance_s": float(self.tolerance_s)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "LevelTable":
        """From `{"levels_s": [...], "tolerance_s": x}` or, for a linear table,
        `{"g_min": .., "g_max": .., "n": .., "tolerance_frac": ..}` (missing keys take the defaults)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"level table must be a table of values, got {type(d).__name__}")
        explicit = {"levels_s", "tolerance_s"}
        linear = {"g_min", "g_max", "n", "tolerance_frac"}
        keys = set(d)
        if keys & explicit and keys & linear:
            raise ConfigError("level table: give either levels_s + tolerance_s or "
                              "g_min/g_max/n/tolerance_frac, not both")
        unknown = keys - explicit - linear
        if unknown:
            raise ConfigError(f"level table: unknown key(s) {sorted(unknown)}; known: "
                              f"{sorted(explicit)} or {sorted(linear)}")
        if keys & explicit:
            missing = explicit - keys
            if missing:
                raise ConfigError(f"level table: missing {sorted(missing)}")
            return cls(d["levels_s"], d["tolerance_s"])
        return cls.linear(**dict(d))


# ---- patterns ----------------------------------------------------------------------------

def _pattern_levels(n_cells: int, n_levels: int, seed) -> np.ndarray:
    return np.arange(n_cells, dtype=np.int64) % n_levels


def _pattern_checker(n_cells: int, n_levels: int, seed) -> np.ndarray:
    return np.where(np.arange(n_cells) % 2 == 0, 0, n_levels - 1).astype(np.int64)


def _pattern_random(n_cells: int, n_levels: int, seed) -> np.ndarray:
    if seed is None:
        raise ConfigError("pattern 'random' needs an explicit seed (e.g. seed=0) so the run can be repeated")
    return np.random.default_rng(seed).integers(0, n_levels, size=n_cells, dtype=np.int64)


PATTERNS = {
    "levels32": _pattern_levels,   # alias of "levels" (named after Yao's 32-level table)
    "levels": _pattern_levels,
    "checker": _pattern_checker,
    "random": _pattern_random,
}


def make_pattern(name: str, n_cells: int, table: LevelTable, *,
                 seed: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Target pattern over `n_cells` cells in selection order: (level_index, targets_s).

    - "levels" / "levels32": 0, 1, ..., n_levels-1, 0, 1, ... (every level of `table`)
    - "checker": alternating lowest and highest level, in selection order
    - "random": uniformly random levels; needs `seed`
    """
    key = str(name).lower()
    if key not in PATTERNS:
        raise ConfigError(f"unknown pattern {name!r}; known patterns: {', '.join(PATTERNS)}")
    if not isinstance(table, LevelTable):
        raise ConfigError(f"make_pattern needs a LevelTable, got {type(table).__name__}")
    if isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells < 0:
        raise ConfigError(f"n_cells must be a non-negative integer, got {n_cells!r}")
    idx = PATTERNS[key](int(n_cells), table.n_levels, seed)
    return idx, table.levels_s[idx].copy()


# ---- validation --------------------------------------------------------------------------

def validate_targets(targets_s, g_window: Optional[Sequence[float]] = None, *,
                     n_cells: Optional[int] = None) -> np.ndarray:
    """Return `targets_s` as a 1-D float array, or raise ConfigError naming the first bad target.

    Checks: 1-D, length `n_cells` (if given), finite, and within `g_window` = (lo, hi) in siemens
    (if given; both ends included)."""
    try:
        t = np.array(targets_s, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError("targets must be numbers (siemens)") from None
    if t.ndim != 1:
        raise ConfigError(f"targets must be a 1-D array (one conductance per cell), got shape {t.shape}")
    if n_cells is not None and t.size != int(n_cells):
        raise ConfigError(f"got {t.size} targets for {int(n_cells)} cells")
    bad = ~np.isfinite(t)
    if bad.any():
        i = int(np.argmax(bad))
        what = "NaN" if np.isnan(t[i]) else "infinite"
        raise ConfigError(f"target #{i} is {what}; every target must be a finite conductance in siemens")
    if g_window is not None:
        try:
            lo, hi = (float(x) for x in g_window)
        except (TypeError, ValueError):
            raise ConfigError(f"g_window must be (lo, hi) in siemens, got {g_window!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ConfigError(f"g_window must be finite with lo < hi, got {g_window!r}")
        slack = 1e-9 * (hi - lo)
        out = (t < lo - slack) | (t > hi + slack)
        if out.any():
            i = int(np.argmax(out))
            raise ConfigError(f"target #{i} = {format_us(t[i])} µS is outside the programmable window "
                              f"{format_us(lo)}–{format_us(hi)} µS")
    return t
