"""Contract types of write-verify programming, beside the Crossbar contract: the policy, the
per-iteration step, the report and the status codes. Backends (drivers, emulators) import them at
module level; the loops live in `hil.ops.write_verify`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping, Optional

import numpy as np

from hil.errors import ConfigError, SafetyViolation
from hil.limits import Op, SafetyLimits

# ---- status codes ------------------------------------------------------------------------
IN_BAND = 0
MAX_PULSES = 1
UNRESPONSIVE = 2
NOT_FINISHED = -1
STATUS_NAMES = {IN_BAND: "in band", MAX_PULSES: "max pulses", UNRESPONSIVE: "unresponsive",
                NOT_FINISHED: "not finished"}
FINISHED_CODES = (IN_BAND, MAX_PULSES, UNRESPONSIVE)

#: a cell at the top of its ramp must move by more than max(2 * tolerance, this) within
#: `stuck_after` pulses, or it is given up as unresponsive
MIN_STUCK_CHANGE_S = 0.3e-6


# ---- policy ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WriteVerifyPolicy:
    """Pulse schedule of write-verify. Voltages in volts, widths in seconds, conductances in siemens.

    SET: fixed BL amplitude `set_v_bl`, gate ramps from `set_gate_start` by `set_gate_step`
    per SET pulse up to `set_gate_max`. RESET: SL amplitude ramps, gate fixed at `reset_gate`.
    FORM (cells reading below `form_threshold_s` that never read above it): BL amplitude ramps,
    gate fixed at `form_gate`. A cell that took `stuck_after` pulses at the top of its ramp
    without a measurable change is given up as unresponsive."""

    n_verify_reads: int = 4
    max_pulses: int = 150
    width_s: float = 50e-9
    set_v_bl: float = 1.6
    set_gate_start: float = 0.8
    set_gate_step: float = 0.03
    set_gate_max: float = 2.2
    reset_v_sl_start: float = 0.8
    reset_v_sl_step: float = 0.05
    reset_v_sl_max: float = 2.2
    reset_gate: float = 4.0
    form_threshold_s: float = 0.5e-6
    form_v_start: float = 2.5
    form_v_step: float = 0.1
    form_v_max: float = 3.5
    form_gate: float = 1.2
    stuck_after: int = 12
    verify_margin: float = 0.75     # accept inside this fraction of the band: room for noise, relaxation, disturb

    _INT_FIELDS = ("n_verify_reads", "max_pulses", "stuck_after")

    def validate(self, limits: SafetyLimits) -> None:
        """ConfigError if the policy is inconsistent; SafetyViolation if any value a ramp can
        reach exceeds `limits`. Call before anything is applied."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in self._INT_FIELDS:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                    raise ConfigError(f"write-verify policy: {f.name} must be an integer >= 1, got {v!r}")
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                        or not np.isfinite(v):
                    raise ConfigError(f"write-verify policy: {f.name} must be a finite number, got {v!r}")
        for name in ("width_s", "set_v_bl", "set_gate_start", "reset_v_sl_start", "reset_gate",
                     "form_v_start", "form_gate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"write-verify policy: {name} must be positive, got {getattr(self, name)!r}")
        for name in ("set_gate_step", "reset_v_sl_step", "form_v_step", "form_threshold_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"write-verify policy: {name} must not be negative, got {getattr(self, name)!r}")
        for start, mx in (("set_gate_start", "set_gate_max"), ("reset_v_sl_start", "reset_v_sl_max"),
                          ("form_v_start", "form_v_max")):
            if getattr(self, start) > getattr(self, mx):
                raise ConfigError(f"write-verify policy: {start} ({getattr(self, start)} V) is above "
                                  f"{mx} ({getattr(self, mx)} V)")
        if not 0 < self.verify_margin <= 1:
            raise ConfigError(f"write-verify policy: verify_margin must be in (0, 1], got {self.verify_margin!r}")
        # extremes of every ramp against the limits (ramps are monotonic and capped at *_max)
        for op, v_name, g_name in ((Op.SET, "set_v_bl", "set_gate_max"),
                                   (Op.RESET, "reset_v_sl_max", "reset_gate"),
                                   (Op.FORM, "form_v_max", "form_gate")):
            lim = limits[op]
            for name, value, bound, what in ((v_name, getattr(self, v_name), lim.max_v, "max_v"),
                                             (g_name, getattr(self, g_name), lim.max_v_gate, "max_v_gate")):
                if abs(value) > bound:
                    raise SafetyViolation(
                        f"write-verify policy rejected: {name} = {value:.4g} V exceeds the {op.value} limit "
                        f"{what} = {bound:.4g} V; lower {name} or raise limits.{op.value}.{what}. "
                        f"Nothing was applied")
            try:
                limits.check(op, getattr(self, v_name), getattr(self, g_name), self.width_s)
            except SafetyViolation as e:
                raise SafetyViolation(f"write-verify policy rejected ({op.value} extreme): {e}") from None

    def ramp(self, op) -> tuple[float, float, float]:
        """(start, step, max) of the ramped quantity of `op`."""
        op = Op.parse(op)
        if op is Op.SET:
            return self.set_gate_start, self.set_gate_step, self.set_gate_max
        if op is Op.RESET:
            return self.reset_v_sl_start, self.reset_v_sl_step, self.reset_v_sl_max
        if op is Op.FORM:
            return self.form_v_start, self.form_v_step, self.form_v_max
        raise ConfigError(f"no ramp for {op.value}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[Mapping]) -> "WriteVerifyPolicy":
        """Build from a mapping; unspecified keys keep the defaults, unknown keys are an error."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"write-verify policy: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        kw = {}
        for k, v in d.items():
            try:
                if k in cls._INT_FIELDS:
                    if isinstance(v, bool) or float(v) != int(float(v)):
                        raise ValueError(f"{v!r} is not an integer")
                    kw[k] = int(float(v))
                else:
                    if isinstance(v, bool):
                        raise ValueError(f"{v!r} is not a number")
                    kw[k] = float(v)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"write-verify policy: {k} must be a number ({e})") from None
        return cls(**kw)


# ---- per-iteration journal entry ---------------------------------------------------------
def _i64(a=()) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).ravel()


def _f64(a=()) -> np.ndarray:
    return np.asarray(a, dtype=float).ravel()



#: policy levels a station's limits bound: (operation, which limit, the policy fields it bounds)
POLICY_CAPS = ((Op.SET, "max_v", ("set_v_bl",)), (Op.SET, "max_v_gate", ("set_gate_start", "set_gate_max")),
               (Op.RESET, "max_v", ("reset_v_sl_start", "reset_v_sl_max")), (Op.RESET, "max_v_gate", ("reset_gate",)),
               (Op.FORM, "max_v", ("form_v_start", "form_v_max")), (Op.FORM, "max_v_gate", ("form_gate",)))


def policy_within(limits: SafetyLimits, base: Optional[WriteVerifyPolicy] = None
                  ) -> tuple[WriteVerifyPolicy, list[str]]:
    """`base` (default: the default policy) with every ramp and level capped at the station's
    `limits` (a ramp's start too, so it never exceeds its top) and the pulse width brought inside
    the SET/RESET/FORM width ranges; with one note per value that was lowered."""
    base = base or WriteVerifyPolicy()
    caps, notes = {}, []
    for op, which, names in POLICY_CAPS:
        bound = getattr(limits[op], which)
        for name in names:
            value = getattr(base, name)
            if value > bound:
                caps[name] = bound
                notes.append(f"{name} {value:g} V → {bound:g} V (limits.{op.value}.{which})")
    width = min(max(base.width_s, *(limits[op].min_width_s for op in (Op.SET, Op.RESET, Op.FORM))),
                *(limits[op].max_width_s for op in (Op.SET, Op.RESET, Op.FORM)))
    if width != base.width_s:
        caps["width_s"] = width
        notes.append(f"width_s {base.width_s:g} s → {width:g} s (the SET, RESET and FORM width limits)")
    return replace(base, **caps), notes


@dataclass(frozen=True)
class ProgramStep:
    """What one write-verify iteration did. Every `*_idx` is a position in the selection.

    `time_s` is the backend clock (`xbar.now()`) just before the verify read. Pulses are in
    application order; `pulse_op` holds `hil.limits.OP_CODES` values; `pulse_v` is the BL
    amplitude for SET/FORM and the SL amplitude for RESET. `done_*` lists the cells that finished
    in this iteration with their final (verify) conductance, pulses used and status code."""

    iteration: int
    time_s: float
    read_idx: np.ndarray = field(default_factory=_i64)
    read_g_s: np.ndarray = field(default_factory=_f64)
    pulse_idx: np.ndarray = field(default_factory=_i64)
    pulse_op: np.ndarray = field(default_factory=_i64)
    pulse_v: np.ndarray = field(default_factory=_f64)
    pulse_v_gate: np.ndarray = field(default_factory=_f64)
    pulse_width_s: np.ndarray = field(default_factory=_f64)
    done_idx: np.ndarray = field(default_factory=_i64)
    done_g_s: np.ndarray = field(default_factory=_f64)
    done_pulses: np.ndarray = field(default_factory=_i64)
    done_status: np.ndarray = field(default_factory=_i64)

    @property
    def n_pulses(self) -> int:
        return int(self.pulse_idx.size)

    def remap(self, positions: np.ndarray) -> "ProgramStep":
        """The same step with positions translated through `positions` (sub-selection -> selection)."""
        positions = np.asarray(positions, dtype=np.int64)
        return replace(self, read_idx=positions[self.read_idx], pulse_idx=positions[self.pulse_idx],
                       done_idx=positions[self.done_idx])

    def to_dict(self) -> dict:
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.tolist() if isinstance(v, np.ndarray) else v
        return d


# ---- report ------------------------------------------------------------------------------
@dataclass
class ProgramReport:
    """Outcome per cell of a write-verify run (arrays in selection order).

    `status` codes: 0 in band, 1 max pulses, 2 unresponsive, -1 not finished (see STATUS_NAMES).
    `final_s` is the last verify reading (NaN where a cell was never read)."""

    targets_s: np.ndarray
    final_s: np.ndarray
    pulses: np.ndarray
    status: np.ndarray
    wall_seconds: float = 0.0
    backend_seconds: float = 0.0
    iterations: int = 0

    def __post_init__(self) -> None:
        self.targets_s = np.asarray(self.targets_s, dtype=float).ravel()
        self.final_s = np.asarray(self.final_s, dtype=float).ravel()
        self.pulses = np.asarray(self.pulses, dtype=np.int64).ravel()
        self.status = np.asarray(self.status, dtype=np.int64).ravel()
        n = self.targets_s.size
        for name in ("final_s", "pulses", "status"):
            if getattr(self, name).size != n:
                raise ValueError(f"ProgramReport.{name} has {getattr(self, name).size} values for {n} cells")

    def __len__(self) -> int:
        return int(self.targets_s.size)

    @property
    def in_band(self) -> np.ndarray:
        return self.status == IN_BAND

    @property
    def finished(self) -> np.ndarray:
        return self.status != NOT_FINISHED

    def summary(self) -> dict:
        """Counts and pulse statistics. `write_errors` counts finished cells not in band;
        `not_finished` counts cells of an interrupted run that were never finished."""
        n = len(self)
        p = self.pulses
        return {
            "cells": n,
            "in_band_fraction": float(np.mean(self.in_band)) if n else 0.0,
            "write_errors": int(np.count_nonzero(self.finished & ~self.in_band)),
            "max_pulses_errors": int(np.count_nonzero(self.status == MAX_PULSES)),
            "unresponsive": int(np.count_nonzero(self.status == UNRESPONSIVE)),
            "not_finished": int(np.count_nonzero(~self.finished)),
            "mean_pulses": float(np.mean(p)) if n else 0.0,
            "median_pulses": float(np.median(p)) if n else 0.0,
            "max_pulses": int(p.max()) if n else 0,
            "iterations": int(self.iterations),
            "seconds": float(self.wall_seconds),
            "backend_seconds": float(self.backend_seconds),
        }

    def resume_kwargs(self) -> dict:
        """Keyword arguments for `write_verify` that resume this (interrupted) run: finished
        cells are skipped and reported from this report."""
        return {"done_mask": self.finished.copy(), "prior_final_s": self.final_s.copy(),
                "prior_pulses": self.pulses.copy(), "prior_status": self.status.copy()}

    def to_dict(self) -> dict:
        return {"targets_s": self.targets_s.tolist(), "final_s": self.final_s.tolist(),
                "pulses": self.pulses.tolist(), "status": self.status.tolist(),
                "wall_seconds": float(self.wall_seconds), "backend_seconds": float(self.backend_seconds),
                "iterations": int(self.iterations)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ProgramReport":
        try:
            return cls(d["targets_s"], d["final_s"], d["pulses"], d["status"],
                       float(d.get("wall_seconds", 0.0)), float(d.get("backend_seconds", 0.0)),
                       int(d.get("iterations", 0)))
        except KeyError as e:
            raise ConfigError(f"program report is missing {e}") from None


# ---- argument checks ---------------------------------------------------------------------
