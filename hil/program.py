"""Closed-loop write-verify programming, vectorized over a selection of cells.

`write_verify` validates everything first (targets, tolerances, the policy against the
station's safety limits), then either delegates to a backend's `program` capability or runs
the generic host-side loop `write_verify_host`, which any backend may reuse:

    each iteration:  read all active cells (one read call)
                     -> finish cells in band / out of pulses / unresponsive
                     -> FORM unformed cells, SET cells below the band (gate ramp),
                        RESET cells above it (SL ramp): at most one pulse call per operation
                     -> on_step(ProgramStep) -> progress -> cancel check

A ramp restarts from its start value whenever a cell's direction flips (SET after RESET or
vice versa). Every array in a `ProgramStep` is indexed by position in the selection, so a
journal can replay or resume a run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Mapping, Optional

import numpy as np

from .crossbar import Crossbar
from .errors import AddressError, BackendError, ConfigError, HilError, SafetyViolation
from .geometry import Cells
from .levels import format_us, validate_targets
from .limits import OP_CODES, Op, SafetyLimits
from .progress import CancelToken, Progress, ProgressCallback, ensure

log = logging.getLogger(__name__)

__all__ = [
    "WriteVerifyPolicy", "ProgramStep", "ProgramReport", "write_verify", "write_verify_host",
    "validate_program_args", "STATUS_NAMES", "IN_BAND", "MAX_PULSES", "UNRESPONSIVE", "NOT_FINISHED",
    "MIN_STUCK_CHANGE_S",
]

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

_SET_CODE = OP_CODES[Op.SET]
_RESET_CODE = OP_CODES[Op.RESET]
_FORM_CODE = OP_CODES[Op.FORM]


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
def _check_cells(xbar: Crossbar, cells) -> Cells:
    if not isinstance(cells, Cells):
        raise TypeError(f"expected a Cells selection, got {type(cells).__name__}")
    cells.validate(xbar.geometry)
    flat = cells.flat(xbar.geometry)
    if np.unique(flat).size != flat.size:
        order = np.argsort(flat, kind="stable")
        dup = np.flatnonzero(np.diff(flat[order]) == 0)[0]
        i, j = sorted((int(order[dup]), int(order[dup + 1])))
        raise AddressError(f"cell #{j} of the selection (PE {cells.pe[j]} row {cells.row[j]} col "
                           f"{cells.col[j]}) repeats cell #{i}; program each cell once")
    return cells


def _targets(targets_s, n: int) -> np.ndarray:
    t = np.asarray(targets_s, dtype=float) if np.ndim(targets_s) == 0 else targets_s
    if np.ndim(t) == 0:
        t = np.full(n, float(t))
    t = validate_targets(t, None, n_cells=n)
    if (t < 0).any():
        i = int(np.argmax(t < 0))
        raise ConfigError(f"target #{i} = {format_us(t[i])} µS is negative")
    return t


def _per_cell(a, n: int, name: str, positive: bool) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be numbers (siemens)") from None
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.ndim != 1 or arr.size != n:
        raise ConfigError(f"{name} must be a scalar or one value per cell ({n}), got shape {arr.shape}")
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else np.zeros(n, bool))
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{name} #{i} = {arr[i]!r} must be a {'positive ' if positive else ''}finite number")
    return arr


def validate_program_args(xbar: Crossbar, cells, targets_s, lo_s, hi_s, policy):
    """Checks of `Crossbar.program` before anything is applied: the selection (in the geometry,
    no repeats), targets and bands (finite, one per cell or scalars, lo <= hi) and the policy
    against `xbar.limits` (every ramp's top and the width). Returns (cells, targets, lo, hi)."""
    if not isinstance(policy, WriteVerifyPolicy):
        raise ConfigError(f"policy must be a WriteVerifyPolicy, got {type(policy).__name__}")
    cells = _check_cells(xbar, cells)
    n = len(cells)
    targets = _targets(targets_s, n)
    lo = _per_cell(lo_s, n, "lo_s", positive=False)
    hi = _per_cell(hi_s, n, "hi_s", positive=False)
    if (lo > hi).any():
        i = int(np.argmax(lo > hi))
        raise ConfigError(f"cell #{i}: band lower edge {format_us(lo[i])} µS is above the upper edge "
                          f"{format_us(hi[i])} µS")
    policy.validate(xbar.limits)
    return cells, targets, lo, hi


def _bool_mask(mask, n: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise ConfigError(f"done_mask must be a boolean array with one value per cell ({n}), "
                          f"got {m.dtype} of shape {m.shape}")
    return m


# ---- public entry point ------------------------------------------------------------------
def write_verify(xbar: Crossbar, cells: Cells, targets_s, tolerance_s,
                 policy: WriteVerifyPolicy = WriteVerifyPolicy(), *,
                 on_step: Optional[Callable[[ProgramStep], None]] = None,
                 progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None,
                 done_mask=None, prior_final_s=None, prior_pulses=None,
                 prior_status=None) -> ProgramReport:
    """Program `cells` to `targets_s` ± `tolerance_s` (siemens; scalars or one per cell).

    Everything is validated before the backend is touched. Runs through the checked
    `xbar.program` (the backend's fast path when it has the `program` capability, else
    `write_verify_host`).

    Resuming: cells with `done_mask` True were finished by an earlier (interrupted) run; they are
    neither read nor pulsed and are reported from `prior_final_s`, `prior_pulses`, `prior_status`
    (all required then; see `ProgramReport.resume_kwargs`). The other cells start afresh.

    On Cancelled (or any HilError raised mid-run) the exception carries `.report`, the
    partial ProgramReport of the whole selection (unfinished cells have status -1)."""
    if not isinstance(policy, WriteVerifyPolicy):
        raise ConfigError(f"policy must be a WriteVerifyPolicy, got {type(policy).__name__}")
    cells = _check_cells(xbar, cells)
    n = len(cells)
    targets = _targets(targets_s, n)
    tol = _per_cell(tolerance_s, n, "tolerance_s", positive=True)
    lo, hi = targets - tol * policy.verify_margin, targets + tol * policy.verify_margin
    xbar.check_program(cells, targets, lo, hi, policy)      # all of program's checks, before any I/O

    final = np.full(n, np.nan)
    pulses = np.zeros(n, dtype=np.int64)
    status = np.full(n, NOT_FINISHED, dtype=np.int64)
    if done_mask is None:
        done = np.zeros(n, dtype=bool)
    else:
        done = _bool_mask(done_mask, n)
    if done.any():
        if prior_final_s is None or prior_pulses is None or prior_status is None:
            raise ConfigError("done_mask needs prior_final_s, prior_pulses and prior_status "
                              "(the earlier run's report) to report the skipped cells")
        try:
            pf = np.asarray(prior_final_s, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ConfigError("prior_final_s must be numbers (siemens)") from None
        pp = np.asarray(prior_pulses).ravel()
        ps = np.asarray(prior_status).ravel()
        for name, a in (("prior_final_s", pf), ("prior_pulses", pp), ("prior_status", ps)):
            if a.size != n:
                raise ConfigError(f"{name} has {a.size} values for {n} cells")
            if name != "prior_final_s" and not np.issubdtype(a.dtype, np.integer):
                raise ConfigError(f"{name} must be integers, got {a.dtype}")
        if (pp[done] < 0).any():
            raise ConfigError("prior_pulses must not be negative")
        bad = done & ~np.isin(ps, FINISHED_CODES)
        if bad.any():
            i = int(np.argmax(bad))
            raise ConfigError(f"cell #{i} is marked done but its prior status {int(ps[i])} is not a "
                              f"finished status {list(FINISHED_CODES)}")
        final[done], pulses[done], status[done] = pf[done], pp[done], ps[done]

    sel = np.flatnonzero(~done)
    n_prior = n - sel.size
    cancel, progress = ensure(cancel, progress)
    t_wall, t_backend = time.perf_counter(), xbar.now()

    def merged(sub: Optional[ProgramReport]) -> ProgramReport:
        f, p, s = final.copy(), pulses.copy(), status.copy()
        iters = 0
        if sub is not None:
            f[sel], p[sel], s[sel] = sub.final_s, sub.pulses, sub.status
            iters = sub.iterations
        try:
            backend_s = float(xbar.now() - t_backend)
        except Exception:          # a dead link must not replace the error being reported
            backend_s = float("nan")
        return ProgramReport(targets.copy(), f, p, s, time.perf_counter() - t_wall, backend_s, iters)

    if sel.size == 0:
        return merged(None)

    sub_step = None
    if on_step is not None:
        def sub_step(step: ProgramStep) -> None:
            on_step(step.remap(sel))

    def sub_progress(p: Progress) -> None:
        progress(Progress(p.done + n_prior, n, p.message, p.unit))

    sub_cells = cells if n_prior == 0 else cells[sel]
    try:
        log.debug("write-verify of %d cells through %s.program (fast path: %s)", sel.size,
                  type(xbar).__name__, xbar.has("program"))
        sub = xbar.program(sub_cells, targets[sel], lo[sel], hi[sel], policy,
                           on_step=sub_step, progress=sub_progress, cancel=cancel)
        if not isinstance(sub, ProgramReport) or len(sub) != sel.size:
            raise BackendError(f"{type(xbar).__name__}.program returned {type(sub).__name__} "
                               f"of wrong size; expected a ProgramReport of {sel.size} cells")
    except HilError as e:
        part = getattr(e, "report", None)
        if isinstance(part, ProgramReport) and len(part) == sel.size:
            e.report = merged(part)
        raise
    report = merged(sub)
    s = report.summary()
    log.log(logging.INFO if len(report) >= 64 else logging.DEBUG, "write-verify: %d cells, %.1f%% in band, %d write errors (%d unresponsive), "
             "mean %.1f pulses", s["cells"], 100 * s["in_band_fraction"], s["write_errors"],
             s["unresponsive"], s["mean_pulses"])
    return report


# ---- generic host-side loop --------------------------------------------------------------
def _ramp_value(k: np.ndarray, start: float, step: float, mx: float):
    """Ramp values for ramp indices `k` and whether each is at the top of the ramp."""
    v = np.minimum(start + k * step, mx)
    return v, v >= mx - 1e-12 * max(1.0, abs(mx))


def write_verify_host(xbar: Crossbar, cells: Cells, targets_s, lo_s, hi_s,
                      policy: WriteVerifyPolicy = WriteVerifyPolicy(), *,
                      on_step: Optional[Callable[[ProgramStep], None]] = None,
                      progress: Optional[ProgressCallback] = None,
                      cancel: Optional[CancelToken] = None) -> ProgramReport:
    """The generic write-verify loop over `xbar.read` / `xbar.pulse`, vectorized over cells.

    Same signature as the `program` capability, so a backend can implement `program` by calling
    this. Cells finish when a verify reading is within [lo_s, hi_s] (status 0), after
    `policy.max_pulses` pulses (1), or when unresponsive (2): `policy.stuck_after` consecutive
    pulses at the top of the active ramp moved the reading by no more than
    max(hi - lo, MIN_STUCK_CHANGE_S). Unresponsive takes precedence over max pulses."""
    cancel, progress = ensure(cancel, progress)
    cells, targets, lo, hi = validate_program_args(xbar, cells, targets_s, lo_s, hi_s, policy)
    n = len(cells)
    cancel.raise_if_cancelled()

    t_wall, t_backend = time.perf_counter(), xbar.now()
    final = np.full(n, np.nan)
    pulses = np.zeros(n, dtype=np.int64)
    status = np.full(n, NOT_FINISHED, dtype=np.int64)
    formed = np.zeros(n, dtype=bool)        # ever read at or above form_threshold_s
    last_dir = np.zeros(n, dtype=np.int8)   # +1 after SET/FORM, -1 after RESET, 0 before any pulse
    k_set = np.zeros(n, dtype=np.int64)
    k_reset = np.zeros(n, dtype=np.int64)
    k_form = np.zeros(n, dtype=np.int64)
    at_max = np.zeros(n, dtype=np.int64)    # consecutive pulses at the top of their ramp
    S = int(policy.stuck_after)
    hist = np.zeros((n, S + 1))             # ring of the last S+1 verify readings (column = iteration % (S+1))
    stuck_thr = np.maximum(hi - lo, MIN_STUCK_CHANGE_S)
    active = np.arange(n, dtype=np.int64)
    width = float(policy.width_s)
    it = 0

    def report() -> ProgramReport:
        return ProgramReport(targets.copy(), final.copy(), pulses.copy(), status.copy(),
                             time.perf_counter() - t_wall, float(xbar.now() - t_backend), it)

    try:
        while active.size:
            t_read = float(xbar.now())
            g = np.asarray(xbar.read(cells[active], n_avg=policy.n_verify_reads), dtype=float).ravel()
            if g.size != active.size or not np.all(np.isfinite(g)):
                raise BackendError(f"{type(xbar).__name__}.read returned {g.size} values "
                                   f"(finite: {int(np.isfinite(g).sum())}) for {active.size} cells")
            hist[active, it % (S + 1)] = g
            formed[active] |= g >= policy.form_threshold_s

            # 2-3: who finishes
            inb = (g >= lo[active]) & (g <= hi[active])
            if it >= S:
                moved = np.abs(g - hist[active, (it - S) % (S + 1)])
                unresp = ~inb & (at_max[active] >= S) & (moved <= stuck_thr[active])
            else:
                unresp = np.zeros(active.size, dtype=bool)
            outp = ~inb & ~unresp & (pulses[active] >= policy.max_pulses)
            fin = inb | unresp | outp
            d_idx = active[fin]
            d_status = np.where(inb, IN_BAND, np.where(unresp, UNRESPONSIVE, MAX_PULSES))[fin]
            final[d_idx] = g[fin]
            status[d_idx] = d_status

            # 4-6: who gets which pulse
            rem, g_rem = active[~fin], g[~fin]
            below = g_rem < lo[rem]
            need_form = below & ~formed[rem] & (g_rem < policy.form_threshold_s)
            need_set = below & ~need_form
            need_reset = ~below                      # not in band and not below: above hi

            p_idx, p_op, p_v, p_gate = [], [], [], []
            for op, mask in ((Op.FORM, need_form), (Op.SET, need_set), (Op.RESET, need_reset)):
                if not mask.any():
                    continue
                c = rem[mask]
                if op is Op.RESET:
                    k_reset[c[last_dir[c] > 0]] = 0          # direction flip: ramp restarts
                    v, top = _ramp_value(k_reset[c], policy.reset_v_sl_start, policy.reset_v_sl_step,
                                         policy.reset_v_sl_max)
                    gate = np.full(c.size, float(policy.reset_gate))
                    k_reset[c] += 1
                    last_dir[c] = -1
                else:
                    flip = c[last_dir[c] < 0]
                    k_set[flip] = 0
                    k_form[flip] = 0
                    if op is Op.FORM:
                        v, top = _ramp_value(k_form[c], policy.form_v_start, policy.form_v_step,
                                             policy.form_v_max)
                        gate = np.full(c.size, float(policy.form_gate))
                        k_form[c] += 1
                    else:
                        gate, top = _ramp_value(k_set[c], policy.set_gate_start, policy.set_gate_step,
                                                policy.set_gate_max)
                        v = np.full(c.size, float(policy.set_v_bl))
                        k_set[c] += 1
                    last_dir[c] = 1
                w = np.full(c.size, width)
                xbar.pulse(cells[c], op, v, gate, w)
                pulses[c] += 1
                at_max[c] = np.where(top, at_max[c] + 1, 0)
                p_idx.append(c)
                p_op.append(np.full(c.size, OP_CODES[op], dtype=np.int64))
                p_v.append(v)
                p_gate.append(gate)

            cat_i = (lambda parts: np.concatenate(parts) if parts else _i64())
            cat_f = (lambda parts: np.concatenate(parts).astype(float) if parts else _f64())
            p_idx_a = cat_i(p_idx)
            step = ProgramStep(
                iteration=it, time_s=t_read,
                read_idx=active.copy(), read_g_s=g.copy(),
                pulse_idx=p_idx_a, pulse_op=cat_i(p_op), pulse_v=cat_f(p_v), pulse_v_gate=cat_f(p_gate),
                pulse_width_s=np.full(p_idx_a.size, width),
                done_idx=d_idx, done_g_s=g[fin].copy(), done_pulses=pulses[d_idx].copy(),
                done_status=d_status.astype(np.int64))
            active = rem
            it += 1
            if on_step is not None:
                on_step(step)
            n_done = n - active.size
            n_ok = int(np.count_nonzero(status == IN_BAND))
            progress(Progress(done=n_done, total=n, message=(
                f"write-verify iteration {it}: {n_ok} in band, {n_done - n_ok} write errors, "
                f"{active.size} active")))
            cancel.raise_if_cancelled()
    except HilError as e:
        e.report = report()
        raise
    return report()
