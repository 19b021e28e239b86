"""Fast, exact Gaussian read noise for the simulated parallel reads.

A 10,000 x 128x16 bit-serial VMM needs 1.3 M standard normals per call and full-fidelity mCNN
inference about 10^8 per 1,000 images. numpy's float32 ziggurat costs 8-11 ns per value on
this 2-core machine; the Box-Muller transform of raw generator words below costs about 3-4 ns
(float32 log/sqrt/cos/sin are SIMD in numpy; a third of it is the generator itself), and every
value is a fresh draw.
"""
from __future__ import annotations

import numpy as np

_RADIUS_BITS = 40                      # uniform for the radius: the upper 40 bits of a word
_ANGLE_BITS = 23                       # uniform for the angle: the lowest 23 bits (float32 mantissa)
_LOG_RADIUS_GRID = np.float32(2 * _RADIUS_BITS * np.log(2.0))
TAIL_CUT_SIGMA = float(np.sqrt(-2 * np.log(0.5 * 2.0 ** -_RADIUS_BITS)))     # 7.54


class GaussianStream:
    """Independent standard normals (float32) from a numpy Generator's bit stream.

    Each 64-bit word gives one Box-Muller pair (r cos t, r sin t), r = sqrt(-2 ln u),
    u = (k + 1/2) 2^-40 from the word's upper 40 bits, t = 2 pi j 2^-23 from its lowest 23 bits.
    What is exact: every value is a new draw, none is reused within or across calls, and the two
    values of a pair are independent standard normals (Box-Muller is an exact transformation).
    The only departures from N(0, 1) are the 2^-40 and 2^-23 grids of the uniforms, float32
    rounding (~1e-7 relative) and the largest |z| the radius grid can reach, TAIL_CUT_SIGMA
    (7.54 sigma: probability 5e-14 per draw). Deterministic for a given Generator state.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.drawn = 0

    def normals(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """`n` fresh standard normals (float32), written into `out[:n]` when given."""
        n = int(n)
        if n < 0:
            raise ValueError(f"normals() needs n >= 0, got {n}")
        z = np.empty(n, np.float32) if out is None else out[:n]
        m = (n + 1) // 2
        w = self.rng.bit_generator.random_raw(m)
        r = (w >> np.uint64(64 - _RADIUS_BITS)).view(np.int64).astype(np.float32)
        r += np.float32(0.5)
        np.log(r, out=r)                           # r = -2 ln((k + 1/2) 2^-40)
        r *= np.float32(-2.0)
        r += _LOG_RADIUS_GRID
        np.maximum(r, 0.0, out=r)                  # u rounded up to 1 in float32: radius 0, never NaN
        np.sqrt(r, out=r)
        t = w.astype(np.uint32)                    # angle: the low 23 bits as a float in [1, 2)
        t &= np.uint32(2 ** _ANGLE_BITS - 1)
        t |= np.uint32(0x3F800000)
        a = t.view(np.float32)
        a -= np.float32(1.0)
        a *= np.float32(2 * np.pi)
        h = n - m                                  # second halves of the pairs (one fewer if n is odd)
        np.cos(a, out=z[:m])
        z[:m] *= r
        np.sin(a[:h], out=z[m:])
        z[m:] *= r[:h]
        self.drawn += n
        return z
