"""The Crossbar contract: everything above the backends speaks only this.

Every public method that can apply a voltage (`CHECKED_METHODS`: reads, pulses, the two VMM input
encodings and the optional capabilities such as `program`, `read_stress`, `read_smu`, `dc_sweep`) is a final
method of `Crossbar`: it validates addresses, values and the station's safety limits, then calls
the backend's hook (`_read`, `_pulse`, `_vmm`, `_vmm_amplitude`, `_program`, ...). A subclass
that overrides one of them is refused when the class is created, so a backend cannot skip the
checks by forgetting them.

The `check_*` helpers apply the same limits below the contract: drivers that a station hands out
carry its limits and call them before any byte is sent.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from hil.errors import AddressError, BackendError, SafetyViolation
from hil.geometry import Cells, Geometry
from hil.limits import Op, SafetyLimits

log = logging.getLogger(__name__)

INPUT_BITS = 8
DEFAULT_V_READ = 0.2

#: public entries that can apply a voltage: checked here, final, each calls the hook `_<name>`
CHECKED_METHODS = ("read", "pulse", "vmm", "vmm_amplitude", "program", "read_stress", "read_smu", "dc_sweep")
#: methods a backend may not override: the checked entries and the checks of `program`
FINAL_METHODS = CHECKED_METHODS + ("check_program",)


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


@dataclass
class AmplitudeResult:
    """Result of an amplitude-encoded parallel read (one read, one conversion per input vector).

    Row i is driven at its signed voltage V_i while every column is held at virtual ground, so
    column j carries I_j = sum_i V_i G_ij, negative when the rows driven below ground dominate.
    A bipolar ADC digitizes it once: `codes` = round(I / lsb_a) clipped to
    -(2**(adc_bits-1) - 1) .. 2**(adc_bits-1) - 1, lsb_a = full scale / (2**(adc_bits-1) - 1);
    `saturated` marks entries whose |code| reached the top.
    """

    codes: np.ndarray          # (batch, cols) int64, signed ADC codes
    lsb_a: float               # amperes per ADC code
    saturated: np.ndarray      # (batch, cols) bool, |code| at full scale
    adc_bits: int = 8

    @property
    def currents(self) -> np.ndarray:
        """Column currents in amperes, sum_i V_i G_ij for an ideal array."""
        return self.codes * self.lsb_a

    @property
    def full_scale_a(self) -> float:
        """Largest |current| the ADC represents."""
        return self.lsb_a * (2 ** (self.adc_bits - 1) - 1)

    @property
    def quantization_bound_a(self) -> float:
        """Largest error of an unsaturated entry of `currents` from ADC rounding alone."""
        return 0.5 * self.lsb_a


#: the terminal a DC sweep's source drives (the other line is grounded)
SWEEP_TERMINALS = ("BL", "SL")
#: most points of one DC sweep
MAX_SWEEP_POINTS = 100_000


@dataclass
class DcSweepResult:
    """A DC staircase: `v[k]` the source level of point k on `terminal` (V), `i_a[k, i]` the current
    measured through cell i there (A, signed like the cell voltage V_BL − V_SL); `v_gate` and
    `compliance_a` per point; `v_cell` = V_BL − V_SL."""

    v: np.ndarray
    i_a: np.ndarray
    v_gate: np.ndarray
    compliance_a: np.ndarray
    terminal: str
    dwell_s: float

    @property
    def v_cell(self) -> np.ndarray:
        return self.v if self.terminal == "BL" else -self.v

    def to_dict(self) -> dict:
        return {"v": self.v.tolist(), "i_a": self.i_a.tolist(), "v_gate": self.v_gate.tolist(),
                "compliance_a": self.compliance_a.tolist(), "terminal": self.terminal, "dwell_s": self.dwell_s}


def bipolar_adc_lsb(full_scale_a: float, adc_bits: int) -> float:
    """Current of one code of a bipolar ADC with codes -(2**(b-1)-1) .. 2**(b-1)-1 over +-full scale."""
    if int(adc_bits) < 2:
        raise ValueError(f"a bipolar ADC needs at least 2 bits, got {adc_bits}")
    return float(full_scale_a) / (2 ** (int(adc_bits) - 1) - 1)


class Crossbar(abc.ABC):
    """A chip of 1T1R processing elements behind one backend (simulated or physical).

    Subclasses set `geometry` and `limits` and implement `_read`, `_pulse`, `_vmm`,
    `now`, `_describe` and `_close`, and `_vmm_amplitude` where the hardware drives analog
    inputs (the default refuses). Optional capabilities (listed in `capabilities`), each
    a checked public method here with a backend hook: `program` -> `_program` (write-verify
    where it runs fastest; without the capability the generic host loop runs), `read_stress`
    -> `_read_stress` (bulk read pulses without returning values), `smu_read` -> `_read_smu`
    (precision reads), `dc_sweep` -> `_dc_sweep` (a DC staircase through an SMU). `advance` (virtual clock) applies no voltage and is the backend's own.
    Overriding a method of FINAL_METHODS is refused (TypeError) at class creation."""

    geometry: Geometry
    limits: SafetyLimits
    capabilities: frozenset = frozenset()
    v_read_default: float = DEFAULT_V_READ
    read_gate_v: float = 0.0          # gate (word-line) level the backend applies during reads, V

    _closed = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        bad = [name for name in FINAL_METHODS if name in vars(cls)]
        if bad:
            raise TypeError(
                f"{cls.__name__} overrides {', '.join('Crossbar.' + n for n in bad)}: these public methods "
                f"check the safety limits and are final; implement the backend hook(s) "
                f"{', '.join('_' + n for n in bad)} instead")

    # ---- public, checked API ----------------------------------------------------------
    def read(self, cells: Cells, *, v_read: Optional[float] = None, n_avg: int = 1) -> np.ndarray:
        """Conductances in siemens of `cells`, averaged over `n_avg` reads."""
        self._check_open()
        cells = self._cells(cells)
        v = self._read_level(v_read)
        n_avg = _count(n_avg, "n_avg", 1)
        if len(cells) == 0:
            return np.zeros(0)
        return self._read(cells, v, n_avg)

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
        pe, rows, cols = self._vmm_lines("vmm", pe, rows, cols)
        x = validate_inputs(inputs, rows.size)
        v = self._read_level(v_read)
        return self._vmm(pe, x, rows, cols, v, _full_scale(adc_full_scale_a))

    def vmm_amplitude(self, pe: int, volts, rows: Optional[Sequence[int]] = None,
                      cols: Optional[Sequence[int]] = None, *,
                      adc_full_scale_a: Optional[float] = None) -> AmplitudeResult:
        """Amplitude-encoded parallel read (Wang 2019): row rows[i] of PE `pe` driven at the signed
        voltage volts[b, i] (batch x len(rows), volts; |V| within the READ limit, positive or
        negative), the gates at the read gate, every column of `cols` held at virtual ground and
        digitized once by a bipolar ADC: column currents sum_i V_i G_ij as signed codes with their
        scale (AmplitudeResult)."""
        self._check_open()
        pe, rows, cols = self._vmm_lines("vmm_amplitude", pe, rows, cols)
        v = validate_volts(volts, rows.size)
        check_amplitudes(self.limits, v, self.read_gate_v, rows)
        return self._vmm_amplitude(pe, v, rows, cols, _full_scale(adc_full_scale_a))

    def program(self, cells: Cells, targets_s, lo_s, hi_s, policy=None, *, on_step=None,
                progress=None, cancel=None):
        """Write-verify `cells` into [lo_s, hi_s] (siemens), returning a hil.ops.write_verify.ProgramReport.

        The whole policy (every ramp's top, width) and the verify reads the backend will apply
        (`_program_reads`) are checked against the limits first; then the backend's `_program`
        runs (the `program` capability: firmware, instrument script, vectorized), or the generic
        host loop over the checked `read`/`pulse`. Use hil.ops.write_verify.write_verify for targets
        and tolerances, resume and journaling."""
        self._check_open()
        cells, targets, lo, hi, policy = self.check_program(cells, targets_s, lo_s, hi_s, policy)
        return self._program(cells, targets, lo, hi, policy, on_step=on_step, progress=progress, cancel=cancel)

    def check_program(self, cells: Cells, targets_s, lo_s, hi_s, policy=None):
        """Every check of `program`, applying nothing and touching no hardware; returns the
        validated (cells, targets, lo, hi, policy)."""
        from hil.programming import WriteVerifyPolicy
        from hil.ops.write_verify import validate_program_args
        policy = WriteVerifyPolicy() if policy is None else policy
        cells, targets, lo, hi = validate_program_args(self, cells, targets_s, lo_s, hi_s, policy)
        v, gate = self._program_reads()
        try:
            check_read(self.limits, v, gate)
        except SafetyViolation as e:
            raise SafetyViolation(f"write-verify rejected: its verify reads would apply {v:.4g} V at a "
                                  f"{gate:.4g} V gate: {e}") from None
        return cells, targets, lo, hi, policy

    def read_stress(self, cells: Cells, n_reads: int, v_read: Optional[float] = None,
                    width_s: float = 50e-9) -> None:
        """Apply `n_reads` read pulses of `width_s` to every cell of the selection (no readout);
        capability `read_stress`."""
        self._check_open()
        self._require("read_stress")
        cells = self._cells(cells)
        v = self._read_level(v_read, width_s)
        n = _count(n_reads, "n_reads", 0)
        if len(cells) == 0 or n == 0:
            return
        self._read_stress(cells, n, v, float(width_s))

    def read_smu(self, cells: Cells, *, v_read: Optional[float] = None, n_avg: int = 1) -> np.ndarray:
        """Precision reads, one SMU measurement per cell (averaged `n_avg` times), in siemens;
        capability `smu_read`. Limits are checked as for `read`."""
        self._check_open()
        self._require("smu_read")
        cells = self._cells(cells)
        v = self._read_level(v_read)
        n_avg = _count(n_avg, "n_avg", 1)
        if len(cells) == 0:
            return np.zeros(0)
        return self._read_smu(cells, v, n_avg)

    def dc_sweep(self, cells: Cells, volts, *, v_gate, compliance_a, terminal: str = "BL",
                 dwell_s: float = 1e-3) -> DcSweepResult:
        """DC staircase through an SMU on every cell of `cells` (one after another on an instrument
        station, in parallel on a simulator): the source on `terminal` (BL or SL, the other line
        grounded) steps through `volts`, dwelling `dwell_s` at each level, and the current is
        measured at each point; capability `dc_sweep`. `v_gate` and `compliance_a` are scalars or
        one per point. Every point is checked first: cell voltage V_BL − V_SL > 0 against the SET
        limits, < 0 against RESET (level, gate, compliance, dwell as the width); 0 V against READ."""
        self._check_open()
        self._require("dc_sweep")
        cells = self._cells(cells)
        if len(cells) == 0:
            raise ValueError("dc_sweep: select at least one cell")
        if terminal not in SWEEP_TERMINALS:
            raise ValueError(f"dc_sweep terminal must be one of {', '.join(SWEEP_TERMINALS)}, got {terminal!r}")
        try:
            v = np.asarray(volts, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ValueError("dc_sweep volts must be numbers") from None
        if not 1 <= v.size <= MAX_SWEEP_POINTS:
            raise ValueError(f"dc_sweep takes 1..{MAX_SWEEP_POINTS} points, got {v.size}")
        gate, comp = per_cell(v_gate, v.size, "v_gate"), per_cell(compliance_a, v.size, "compliance_a")
        if not np.all(np.isfinite(comp)) or (comp <= 0).any():
            raise SafetyViolation("dc_sweep rejected: compliance_a must be positive and finite; nothing was applied")
        v_cell = v if terminal == "BL" else -v
        for op, mask in ((Op.SET, v_cell > 0), (Op.RESET, v_cell < 0), (Op.READ, v_cell == 0)):
            idx = np.flatnonzero(mask) if np.all(np.isfinite(v_cell)) else np.arange(v.size)
            if idx.size:
                self.limits.check(op, v[idx], gate[idx], dwell_s, comp[idx],
                                  where=lambda i, idx=idx: f"sweep point {int(idx[i])}")
        i_a = np.asarray(self._dc_sweep(cells, v, gate, comp, terminal, float(dwell_s)), dtype=float)
        if i_a.shape != (v.size, len(cells)):
            raise BackendError(f"{type(self).__name__}._dc_sweep returned shape {i_a.shape}, "
                               f"expected {(v.size, len(cells))}")
        return DcSweepResult(v, i_a, gate, comp, terminal, float(dwell_s))

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

    def _vmm_amplitude(self, pe: int, volts: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                       adc_full_scale_a: Optional[float]) -> AmplitudeResult:
        """Hook of `vmm_amplitude` (arguments validated); a backend without analog inputs refuses."""
        raise BackendError(f"{type(self).__name__} has no amplitude-encoded VMM (its inputs are bit-serial only)")

    @abc.abstractmethod
    def now(self) -> float:
        """Backend clock in seconds (virtual for the simulator)."""

    def _program(self, cells: Cells, targets_s: np.ndarray, lo_s: np.ndarray, hi_s: np.ndarray, policy, *,
                 on_step=None, progress=None, cancel=None):
        """Hook of `program` (arguments validated). Default: the generic host loop."""
        from hil.ops.write_verify import write_verify_host
        return write_verify_host(self, cells, targets_s, lo_s, hi_s, policy,
                                 on_step=on_step, progress=progress, cancel=cancel)

    def _program_reads(self) -> tuple[float, float]:
        """(read V, gate V) of the verify reads `_program` applies; checked against READ."""
        return self.v_read_default, self.read_gate_v

    def _read_stress(self, cells: Cells, n_reads: int, v_read: float, width_s: float) -> None:
        raise NotImplementedError

    def _read_smu(self, cells: Cells, v_read: float, n_avg: int) -> np.ndarray:
        raise NotImplementedError

    def _dc_sweep(self, cells: Cells, volts: np.ndarray, v_gate: np.ndarray, compliance_a: np.ndarray,
                  terminal: str, dwell_s: float) -> np.ndarray:
        """Hook of `dc_sweep` (every point checked): currents (points, cells) in amperes."""
        raise NotImplementedError

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

    def _require(self, capability: str) -> None:
        if not self.has(capability):
            raise BackendError(f"{type(self).__name__} has no {capability!r} capability "
                               f"(it has: {sorted(self.capabilities) or 'none'})")

    def _read_level(self, v_read, width_s=None) -> float:
        """The read voltage to apply (default `v_read_default`), checked against READ."""
        v = self.v_read_default if v_read is None else v_read
        if width_s is None:
            check_read(self.limits, v, self.read_gate_v)
        else:
            self.limits.check(Op.READ, v, self.read_gate_v, width_s)
        return float(v)

    def _vmm_lines(self, what: str, pe, rows, cols) -> tuple[int, np.ndarray, np.ndarray]:
        """Checked (pe, rows, cols) of a parallel read (default: every row and column)."""
        g = self.geometry
        if not 0 <= int(pe) < g.n_pe:
            raise AddressError(f"PE {pe} out of range 0..{g.n_pe - 1}")
        rows = np.arange(g.rows) if rows is None else np.asarray(rows, dtype=np.int64)
        cols = np.arange(g.cols) if cols is None else np.asarray(cols, dtype=np.int64)
        for name, a, n in (("row", rows, g.rows), ("column", cols, g.cols)):
            if a.size == 0 or a.min() < 0 or a.max() >= n:
                raise AddressError(f"{what} {name} indices must be non-empty and within 0..{n - 1}")
            if np.unique(a).size != a.size:
                raise AddressError(f"{what} {name} indices must not repeat")
        return int(pe), rows, cols

    def _cells(self, cells) -> Cells:
        if not isinstance(cells, Cells):
            raise TypeError(f"expected a Cells selection, got {type(cells).__name__}")
        return cells.validate(self.geometry)

    @staticmethod
    def _per_cell(a: Any, n: int, name: str) -> np.ndarray:
        return per_cell(a, n, name)


def _full_scale(adc_full_scale_a: Optional[float]) -> Optional[float]:
    """A requested ADC full scale: None (the backend's default) or a positive number of amperes."""
    if adc_full_scale_a is not None and not (np.isfinite(adc_full_scale_a) and adc_full_scale_a > 0):
        raise ValueError(f"adc_full_scale_a must be a positive number, got {adc_full_scale_a}")
    return adc_full_scale_a


def _count(value, name: str, minimum: int) -> int:
    """An integer count >= `minimum` (ValueError otherwise; bools and fractions refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)) \
            or not np.isfinite(value) or value != int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ---- the station limits below the contract (drivers) ------------------------------------------
def check_read(limits: SafetyLimits, v, v_gate=0.0, where: str = "") -> None:
    """SafetyViolation unless a read at `v` volts (gate `v_gate`) is within limits.READ.
    A read has no pulse width of its own, so only the levels are checked."""
    lim = limits[Op.READ]
    try:
        limits.check(Op.READ, v, v_gate, lim.min_width_s)
    except SafetyViolation as e:
        raise SafetyViolation(f"{where}{e}") from None


def check_amplitudes(limits: SafetyLimits, volts: np.ndarray, v_gate: float, rows, where: str = "") -> None:
    """SafetyViolation unless every signed input voltage of an amplitude VMM (batch x len(rows))
    is within the READ max_v in magnitude, and the read gate `v_gate` within READ max_v_gate."""
    lim = limits[Op.READ]
    n = max(1, volts.shape[1])
    try:
        limits.check(Op.READ, volts, v_gate, lim.min_width_s,
                     where=lambda k: f"input vector {k // n}, row {int(rows[k % n])}")
    except SafetyViolation as e:
        raise SafetyViolation(f"{where}{e}") from None


#: the terminals a driver channel can be wired to (drivers.station channel roles)
ROLES = frozenset({"bl", "sl", "gate"})


def check_level(limits: SafetyLimits, v, roles=ROLES, what: str = "level", where: str = "") -> None:
    """SafetyViolation unless |v| is within the widest level any operation allows on terminals
    `roles` ('bl'/'sl': max_v, 'gate': max_v_gate): the bound for a driver that applies a level
    without knowing the operation (an SMU channel, the board's gate DAC)."""
    roles = ROLES if not roles else frozenset(roles)
    bounds = [lim.max_v for op, lim in _ops(limits) if roles & {"bl", "sl"}]
    bounds += [lim.max_v_gate for op, lim in _ops(limits) if "gate" in roles]
    _bound(v, max(bounds), what, "V", "the station limits of " + "/".join(sorted(roles)), where)


def check_compliance(limits: SafetyLimits, a, where: str = "") -> None:
    """SafetyViolation unless a compliance current is within the largest any operation allows."""
    _bound(a, max(lim.max_compliance_a for _, lim in _ops(limits)), "compliance", "A", "the station limits",
           where)


def check_width(limits: SafetyLimits, w, where: str = "") -> None:
    """SafetyViolation unless a pulse width is within the widest range any operation allows."""
    lo = min(lim.min_width_s for _, lim in _ops(limits))
    hi = max(lim.max_width_s for _, lim in _ops(limits))
    a = np.asarray(w, dtype=float).ravel()
    bad = ~np.isfinite(a) | (a < lo * (1 - 1e-9)) | (a > hi * (1 + 1e-9))
    if bad.any():
        i = int(np.argmax(bad))
        raise SafetyViolation(f"{where}pulse width {a[i]:.4g} s is outside the station limits "
                              f"{lo:.3g}..{hi:.3g} s; nothing was sent")


def check_policy(limits: SafetyLimits, policy, v_read: float, read_gate_v: float = 0.0, where: str = "") -> None:
    """A write-verify policy (every ramp's top, its width) and the verify reads at `v_read` /
    `read_gate_v` against the limits (SafetyViolation / ConfigError)."""
    try:
        policy.validate(limits)
        check_read(limits, v_read, read_gate_v)
    except SafetyViolation as e:
        raise SafetyViolation(f"{where}{e}") from None


def _ops(limits: SafetyLimits):
    return [(op, limits[op]) for op in Op]


def _bound(values, bound: float, what: str, unit: str, source: str, where: str) -> None:
    try:
        a = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        raise SafetyViolation(f"{where}{what} {values!r} is not a number; nothing was sent") from None
    bad = ~np.isfinite(a) | (np.abs(a) > bound)
    if bad.any():
        i = int(np.argmax(bad))
        raise SafetyViolation(f"{where}{what} {a[i]:.4g} {unit} exceeds {source} ({bound:.4g} {unit}); "
                              f"nothing was sent")


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


def validate_volts(volts, n_rows: int) -> np.ndarray:
    """Check and return amplitude-VMM inputs as a float64 (batch, n_rows) array of finite volts."""
    try:
        v = np.asarray(volts, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"vmm_amplitude volts must be numbers, got {type(volts).__name__}") from None
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.shape[1] != n_rows:
        raise ValueError(f"vmm_amplitude volts must have shape (batch, {n_rows}), got {np.shape(volts)}")
    bad = ~np.isfinite(v)
    if bad.any():
        b, i = np.argwhere(bad)[0]
        raise ValueError(f"vmm_amplitude volts contain NaN or infinite values (vector {b}, input {i})")
    return v


def _describe_cell(cells: Cells, i: int) -> str:
    return f"PE {cells.pe[i]} row {cells.row[i]} col {cells.col[i]}"
