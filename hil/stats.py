"""Statistics for comparing figures: Wilson intervals on accuracies, mean ± sd over seeds."""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Iterable, Sequence

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A proportion with its Wilson score interval (all three as fractions in 0..1)."""

    value: float
    lo: float
    hi: float
    n: int

    def overlaps(self, other: "Interval") -> bool:
        return not (self.hi < other.lo or other.hi < self.lo)

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}

    def percent(self, digits: int = 1) -> str:
        """'97.3% [96.2, 98.1]' — the interval in brackets."""
        return f"{100 * self.value:.{digits}f}% [{100 * self.lo:.{digits}f}, {100 * self.hi:.{digits}f}]"


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of `successes` out of `n` trials (95% by default)."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0, 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, lo, hi, n)


def accuracy_interval(accuracy: float, n: int, z: float = Z95) -> Interval:
    """Wilson interval of an accuracy given as a fraction measured on `n` samples."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a fraction in 0..1, got {accuracy}")
    return wilson(int(round(accuracy * n)), n, z)


def differs(a: Interval, b: Interval) -> bool:
    """True when two accuracies' intervals do not overlap (a conservative 'the difference is real')."""
    return not a.overlaps(b)


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation of one figure over seeds."""

    mean: float
    sd: float
    n: int
    values: tuple

    def as_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "n": self.n, "values": list(self.values)}


def over_seeds(values: Iterable[float]) -> SeedSummary:
    """Mean ± sample standard deviation (ddof=1; 0 for a single seed)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        raise ValueError("over_seeds: no values")
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return SeedSummary(float(v.mean()), sd, int(v.size), tuple(float(x) for x in v))


def parse_seeds(text: str) -> list[int]:
    """'0-4' → [0..4]; '1,3,7' → [1, 3, 7]; '0-2,9' → [0, 1, 2, 9]. Raises ValueError naming the bad part."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"seeds {text!r}: empty item")
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (None, None)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except (TypeError, ValueError):
            raise ValueError(f"seeds {text!r}: {part!r} is not a seed or a range like 0-4") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {text!r}: seeds must be non-negative and distinct")
    return seeds


def quantiles(values: Sequence[float], qs=(0.025, 0.5, 0.975)) -> tuple:
    """Empirical quantiles (for bands over seeds when a normal approximation is doubtful)."""
    return tuple(float(x) for x in np.quantile(np.asarray(values, dtype=float), qs))
