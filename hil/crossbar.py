"""The Crossbar contract: everything above the backends speaks only this.

Public methods validate addresses, values and safety limits, then call the backend's
`_read`, `_pulse` and `_vmm`; a backend cannot skip the checks by forgetting them.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .errors import AddressError, BackendError
from .geometry import Cells, Geometry
from .limits import Op, SafetyLimits

log = logging.getLogger(__name__)

INPUT_BITS = 8
DEFAULT_V_READ = 0.2


@dataclass
class VmmResult:
    """Result of a bit-serial parallel read.

    `codes[b, j]` = sum over slots k of ADC code(b, j, k) * 2**k (shift and add).
    `lsb_a` is the current of one ADC code in one slot, so `codes * lsb_a` is
    sum_k 2**k I_k, i.e. V_read * sum_i x_i G_ij for an ideal array.
    """

    codes: np.ndarray          # (batch, cols) int64, shift-and-summed ADC codes
    lsb_a: float               # amperes per ADC code of one slot
    v_read: float              # read pulse amplitude, V
    saturated: np.ndarray      # (batch, cols) bool, any slot at full scale
    adc_bits: int = 8
    input_bits: int = INPUT_BITS

    @property
    def currents(self) -> np.ndarray:
        """Shift-and-summed column currents in amperes (input-weighted)."""
        return self.codes * self.lsb_a

    @property
    def dot(self) -> np.ndarray:
        """Estimate of sum_i x_i G_ij in siemens times input units."""
        return self.currents / self.v_read

    @property
    def quantization_bound_a(self) -> float:
        """Largest error of `currents` from ADC rounding alone (half an LSB per slot)."""
        return 0.5 * self.lsb_a * (2 ** self.input_bits - 1)


class Crossbar(abc.ABC):
    """A chip of 1T1R processing elements behind one backend (simulated or physical).

    Subclasses set `geometry` and `limits` and implement `_read`, `_pulse`, `_vmm`,
    `now`, `_describe` and `_close`. Optional capabilities (listed in `capabilities`):
    `program` (write-verify where it runs fastest), `advance` (virtual clock),
    `read_stress` (bulk read pulses without returning values)."""

    geometry: Geometry
    limits: SafetyLimits
    capabilities: frozenset = frozenset()
    v_read_default: float = DEFAULT_V_READ

    _closed = False

    # ---- public, checked API ----------------------------------------------------------
    def read(self, cells: Cells, *, v_read: Optional[float] = None, n_avg: int = 1) -> np.ndarray:
        """Conductances in siemens of `cells`, averaged over `n_avg` reads."""
        self._check_open()
        cells = self._cells(cells)
        v = self.v_read_default if v_read is None else float(v_read)
        self.limits.check(Op.READ, v, 0.0, 1e-6)
        if int(n_avg) < 1:
            raise ValueError(f"n_avg must be >= 1, got {n_avg}")
        if len(cells) == 0:
            return np.zeros(0)
        return self._read(cells, v, int(n_avg))

    def pulse(self, cells: Cells, op, v, v_gate, width, compliance_a=None) -> None:
        """Apply one SET/RESET/FORM pulse per cell (scalars or arrays per cell).

        `v` is the BL amplitude for SET/FORM and the SL amplitude for RESET (positive
        numbers; polarity is implied by the operation)."""
        self._check_open()
        op = Op.parse(op)
        if op is Op.READ:
            raise ValueError("use read() for READ; pulse() applies SET, RESET or FORM")
        cells = self._cells(cells)
        n = len(cells)
        v, v_gate, width = (self._per_cell(a, n, name) for a, name in
                            ((v, "v"), (v_gate, "v_gate"), (width, "width")))
        self.limits.check(op, v, v_gate, width, compliance_a, where=lambda i: _describe_cell(cells, i))
        if n == 0:
            return
        self._pulse(cells, op, v, v_gate, width)

    def vmm(self, pe: int, inputs, rows: Optional[Sequence[int]] = None,
            cols: Optional[Sequence[int]] = None, *, v_read: Optional[float] = None,
            adc_full_scale_a: Optional[float] = None) -> VmmResult:
        """Bit-serial parallel read of `inputs` (batch x len(rows), unsigned 8-bit integers)."""
        self._check_open()
        g = self.geometry
        if not 0 <= int(pe) < g.n_pe:
            raise AddressError(f"PE {pe} out of range 0..{g.n_pe - 1}")
        rows = np.arange(g.rows) if rows is None else np.asarray(rows, dtype=np.int64)
        cols = np.arange(g.cols) if cols is None else np.asarray(cols, dtype=np.int64)
        for name, a, n in (("row", rows, g.rows), ("column", cols, g.cols)):
            if a.size == 0 or a.min() < 0 or a.max() >= n:
                raise AddressError(f"vmm {name} indices must be non-empty and within 0..{n - 1}")
            if np.unique(a).size != a.size:
                raise AddressError(f"vmm {name} indices must not repeat")
        x = validate_inputs(inputs, rows.size)
        v = self.v_read_default if v_read is None else float(v_read)
        self.limits.check(Op.READ, v, 0.0, 1e-6)
        if adc_full_scale_a is not None and not (np.isfinite(adc_full_scale_a) and adc_full_scale_a > 0):
            raise ValueError(f"adc_full_scale_a must be a positive number, got {adc_full_scale_a}")
        return self._vmm(int(pe), x, rows, cols, v, adc_full_scale_a)

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def describe(self) -> dict:
        """Identity, versions and settings for the run record."""
        d = {"geometry": self.geometry.to_dict(), "limits": self.limits.to_dict(),
             "capabilities": sorted(self.capabilities), "v_read": self.v_read_default}
        d.update(self._describe())
        return d

    def safe(self) -> None:
        """Make the hardware safe now (outputs off, levels zero, relays open) without closing;
        called after an abort or an error. Best effort: never raises."""
        if self._closed:
            return
        try:
            self._safe()
        except Exception:
            log.exception("error while making backend %s safe", type(self).__name__)

    def close(self) -> None:
        """Leave the hardware safe (outputs off, relays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close()
        except Exception:  # best effort: a failing close must not mask the original error
            log.exception("error while closing backend %s", type(self).__name__)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- backend hooks ----------------------------------------------------------------
    @abc.abstractmethod
    def _read(self, cells: Cells, v_read: float, n_avg: int) -> np.ndarray: ...

    @abc.abstractmethod
    def _pulse(self, cells: Cells, op: Op, v: np.ndarray, v_gate: np.ndarray, width: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _vmm(self, pe: int, inputs: np.ndarray, rows: np.ndarray, cols: np.ndarray,
             v_read: float, adc_full_scale_a: Optional[float]) -> VmmResult: ...

    @abc.abstractmethod
    def now(self) -> float:
        """Backend clock in seconds (virtual for the simulator)."""

    def _describe(self) -> dict:
        return {"backend": type(self).__name__}

    def _close(self) -> None:
        pass

    def _safe(self) -> None:
        """Backend hook of `safe()`; nothing to do for a backend without outputs."""

    # ---- helpers ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{type(self).__name__} is closed; open the station again")

    def _cells(self, cells) -> Cells:
        if not isinstance(cells, Cells):
            raise TypeError(f"expected a Cells selection, got {type(cells).__name__}")
        return cells.validate(self.geometry)

    @staticmethod
    def _per_cell(a: Any, n: int, name: str) -> np.ndarray:
        return per_cell(a, n, name)


def per_cell(a: Any, n: int, name: str) -> np.ndarray:
    """A scalar or one value per cell, as a float array of n values (ValueError otherwise)."""
    arr = np.asarray(a, dtype=float)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    arr = arr.ravel()
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} values for {n} cells")
    return arr


def validate_inputs(inputs, n_rows: int, bits: int = INPUT_BITS) -> np.ndarray:
    """Check and return VMM inputs as an int64 (batch, n_rows) array of 0..2**bits-1."""
    x = np.asarray(inputs)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != n_rows:
        raise ValueError(f"vmm inputs must have shape (batch, {n_rows}), got {np.shape(inputs)}")
    if not np.issubdtype(x.dtype, np.integer):
        xf = x.astype(float)
        if not np.all(np.isfinite(xf)):
            raise ValueError("vmm inputs contain NaN or infinite values")
        if not np.all(xf == np.round(xf)):
            raise ValueError("vmm inputs must be integers (quantize activations to 8 bits first)")
    x = x.astype(np.int64)
    if x.size and (x.min() < 0 or x.max() > 2 ** bits - 1):
        raise ValueError(f"vmm inputs must be within 0..{2 ** bits - 1}, got {x.min()}..{x.max()}")
    return x


def _describe_cell(cells: Cells, i: int) -> str:
    return f"PE {cells.pe[i]} row {cells.row[i]} col {cells.col[i]}"
