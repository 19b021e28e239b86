"""The simulated chip's bit-serial parallel read as one fused kernel.

Slot k of an 8-bit input vector drives every row whose bit k is 1 at the read voltage; each
column's slot current is digitized by an ADC; the codes are shifted by k and summed. Here the
8 slots of a chunk of vectors are one stack of bit planes, multiplied in float32 by G (slot
means) and by the per-cell noise variances (slot variances; two matmuls with contiguous
outputs measured faster than one against [G | var]), followed on the same cache-resident chunk
by the read noise, ADC rounding and saturation and the shift-add.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hil.crossbar import INPUT_BITS

from .noise import GaussianStream

# Vectors per chunk, by measurement (CPU time, one BLAS thread, 2-core AMD EPYC under load) of
# 10,000 x 128x16, 36,000 x 72x16 and 60,000 x 9x16 reads with noise: 512 is fastest or within
# 5% of it on all three; 128 costs 10-45% more, 2048-4096 40-70% more on 128 rows (the chunk's
# planes and slot results, 8 x chunk x (rows + 3 cols) float32, no longer stay in L2).
CHUNK = 512


@dataclass
class BitSerialOut:
    """Shift-added codes (batch, cols) int64, per-vector saturation (batch, cols) (a slot at
    the top code) and read pulses applied to each row (rows,)."""

    codes: np.ndarray
    saturated: np.ndarray
    row_pulses: np.ndarray


def bitserial_vmm(x: np.ndarray, g_codes: np.ndarray, var_codes: Optional[np.ndarray], top: int,
                  normals: Optional[GaussianStream] = None, chunk: int = CHUNK) -> BitSerialOut:
    """Bit-serial read of inputs `x` (batch, rows; integers 0..255) through a conductance
    matrix in ADC-code units, `g_codes` (rows, cols) = G v_read / lsb.

    `var_codes` (rows, cols): read-noise variance one driven cell adds to its column's slot
    current, in codes^2 (None: no read noise). Per slot and column the noise is one fresh
    N(0, sum_i b_i var_ij) draw over the rows i driven in that slot (b_i = 1): the exact
    distribution of the sum of independent per-cell Gaussian noises, with the variance computed
    from the same bit planes by a float32 matmul like the mean, not estimated, and the draw taken
    from `normals` (fresh for every slot and column, never reused). Codes are rint(mean + noise)
    clipped to [0, top]. A vector of all zeros drives no row: its codes are exactly 0 and it
    draws no noise (that is exact too: zero current, zero variance), so it is skipped."""
    nb = INPUT_BITS
    xu = np.asarray(x).astype(np.uint8)                        # validated 0..255 by the contract
    batch, nrow = xu.shape
    ncol = g_codes.shape[1]
    noisy = var_codes is not None
    g32 = np.asarray(g_codes, np.float32)
    v32 = np.asarray(var_codes, np.float32) if noisy else None

    live = np.bitwise_or.reduceat(xu.ravel(), np.arange(0, xu.size, nrow)) if batch else np.zeros(0, bool)
    active = np.flatnonzero(live)
    xa = xu if active.size == batch else xu[active]
    na = xa.shape[0]
    codes = np.empty((na, ncol), np.float32)                   # shift-add of integers < 2**24: exact
    sat = np.empty((na, ncol), bool)
    row_pulses = np.zeros(nrow)
    weights = (2.0 ** np.arange(nb)).astype(np.float32)
    c_max = max(1, min(chunk, na))
    plane_buf = np.empty(nb * c_max * nrow, np.float32)
    tmp = np.empty((c_max, nrow), np.uint8)
    q_buf = np.empty(nb * c_max * ncol, np.float32)
    sd_buf = np.empty(nb * c_max * ncol, np.float32) if noisy else None
    z_buf = np.empty(nb * c_max * ncol, np.float32) if noisy else None
    ones = np.ones(nb * c_max, np.float32)
    for b0 in range(0, na, c_max):
        b1 = min(b0 + c_max, na)
        c = b1 - b0
        m = nb * c                                             # slot conversions of this chunk
        xc = xa[b0:b1]
        pl = plane_buf[:m * nrow].reshape(nb, c, nrow)
        t = tmp[:c]
        for k in range(nb):                                    # bit planes, least significant first
            np.right_shift(xc, k, out=t)
            np.bitwise_and(t, 1, out=t)
            pl[k] = t
        flat = pl.reshape(m, nrow)
        q = np.matmul(flat, g32, out=q_buf[:m * ncol].reshape(m, ncol))      # slot means, codes
        row_pulses += ones[:m] @ flat
        if noisy:
            sd = np.matmul(flat, v32, out=sd_buf[:m * ncol].reshape(m, ncol))  # slot variances
            np.sqrt(sd, out=sd)
            sd *= normals.normals(m * ncol, z_buf).reshape(m, ncol)
            q += sd
        np.rint(q, out=q)
        np.clip(q, 0.0, float(top), out=q)
        q2 = q.reshape(nb, c * ncol)
        np.greater_equal(q2.max(axis=0), top, out=sat[b0:b1].reshape(c * ncol))
        np.matmul(weights, q2, out=codes[b0:b1].reshape(c * ncol))
    if active.size == batch:
        return BitSerialOut(codes.astype(np.int64), sat, row_pulses)
    full = np.zeros((batch, ncol), np.int64)
    full[active] = codes
    full_sat = np.zeros((batch, ncol), bool)
    full_sat[active] = sat
    return BitSerialOut(full, full_sat, row_pulses)
