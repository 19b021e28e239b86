"""Bit-serial vector-matrix multiplication: the shared pipeline and the mapping layer.

Inputs are unsigned integers of `bits` bits. Slot k applies the read voltage to every row
whose bit k is 1; each column's slot current is digitized by an ADC; the codes are shifted
left by k and summed (Yao 2020, Ext. Data Fig. 2). Signed weights are differential column
pairs whose results the mapping layer subtracts.
"""
from __future__ import annotations

import numpy as np

from hil.crossbar import INPUT_BITS, VmmResult


def bit_planes(x: np.ndarray, bits: int = INPUT_BITS, dtype=np.float32) -> np.ndarray:
    """(batch, rows) unsigned ints -> (bits, batch, rows) 0/1 planes, least significant first."""
    x = np.asarray(x)
    if bits <= 8:
        planes = np.unpackbits(x.astype(np.uint8)[..., None], axis=-1, bitorder="little")[..., :bits]
        return np.moveaxis(planes, -1, 0).astype(dtype)
    k = np.arange(bits).reshape(-1, 1, 1)
    return ((x[None].astype(np.int64) >> k) & 1).astype(dtype)


def adc_lsb(full_scale_a: float, adc_bits: int) -> float:
    """Current of one ADC code: full scale over the top code."""
    return full_scale_a / (2 ** adc_bits - 1)


def differential(result: VmmResult, pos_cols, neg_cols) -> np.ndarray:
    """Signed currents (A): positive-column results minus negative-column results.

    `pos_cols`/`neg_cols` index the columns of `result` (positions in the vmm's `cols`)."""
    c = result.currents
    return c[:, np.asarray(pos_cols)] - c[:, np.asarray(neg_cols)]
