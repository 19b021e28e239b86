"""Cheap Gaussian noise for the simulated parallel read.

numpy draws a standard normal in ~7 ns; a 10,000 x 128 x 16 bit-serial VMM needs 1.3 M of
them per call, which would dominate the simulated VMM. `NoisePool` amortizes that cost.
"""
from __future__ import annotations

import numpy as np

DEFAULT_POOL_SIZE = 2 ** 22
DEFAULT_REUSE = 4


class NoisePool:
    """A pool of `size` float32 standard normals drawn from a numpy Generator.

    `take(n)` returns a contiguous window of `n` values starting at a random offset. The pool
    is regenerated (fresh draws from the same Generator) once `reuse * size` values have been
    handed out since the last regeneration.

    Approximation (documented on purpose): within one `take` call the values are distinct
    pool entries, hence i.i.d. standard normals. Across calls, windows may overlap, so two
    calls can see some of the same numbers (possibly shifted); this reuse is bounded, because
    every value is handed out on average at most `reuse` times before the pool is redrawn.
    For simulated read noise, which is averaged or quantized away downstream, this is
    statistically harmless, but do not use the pool where independence across calls matters.
    Deterministic for a given Generator state. A request larger than the pool is served as
    several windows (each i.i.d. internally; windows of one call may overlap each other).
    """

    def __init__(self, rng: np.random.Generator, size: int = DEFAULT_POOL_SIZE,
                 reuse: int = DEFAULT_REUSE) -> None:
        if int(size) < 1 or int(reuse) < 1:
            raise ValueError("NoisePool size and reuse must be >= 1")
        self.rng = rng
        self.size = int(size)
        self.reuse = int(reuse)
        self.regenerations = 0
        self._pool = np.empty(0, np.float32)
        self._consumed = 0
        self._regenerate()

    def _regenerate(self) -> None:
        self._pool = self.rng.standard_normal(self.size, dtype=np.float32)
        self._pool.setflags(write=False)
        self._consumed = 0
        self.regenerations += 1

    def take(self, n: int) -> np.ndarray:
        """`n` standard normals (float32, read-only view when n <= size)."""
        n = int(n)
        if n < 0:
            raise ValueError(f"take() needs n >= 0, got {n}")
        if n > self.size:
            return np.concatenate([self.take(min(self.size, n - s)) for s in range(0, n, self.size)])
        if self._consumed + n > self.reuse * self.size:
            self._regenerate()
        off = int(self.rng.integers(0, self.size - n + 1))
        self._consumed += n
        return self._pool[off:off + n]
