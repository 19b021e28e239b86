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
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from hil.errors import AddressError, BackendError, ConfigError, HilError
from hil.geometry import Cells
from hil.levels import format_us, validate_targets
from hil.limits import OP_CODES, Op
from hil.programming import (FINISHED_CODES, IN_BAND, MAX_PULSES, MIN_STUCK_CHANGE_S, NOT_FINISHED,
                              UNRESPONSIVE, ProgramReport, ProgramStep, WriteVerifyPolicy, _f64, _i64)
from hil.progress import CancelToken, Progress, ProgressCallback, ensure

if TYPE_CHECKING:            # the contract calls these loops; they need its type for annotations only
    from hil.crossbar import Crossbar

log = logging.getLogger(__name__)

__all__ = ["write_verify", "write_verify_host", "validate_program_args", "has_repeats"]


def has_repeats(flat: np.ndarray, n_cells: int) -> bool:
    """Whether flat cell indices (each in 0..n_cells-1) name a cell twice: a bitmap of the chip,
    linear in the selection and the chip size (no sort)."""
    seen = np.zeros(n_cells, dtype=bool)
    seen[flat] = True
    return int(np.count_nonzero(seen)) != flat.size


def _check_cells(xbar: Crossbar, cells) -> Cells:
    if not isinstance(cells, Cells):
        raise TypeError(f"expected a Cells selection, got {type(cells).__name__}")
    cells.validate(xbar.geometry)
    flat = cells.flat(xbar.geometry)
    if has_repeats(flat, xbar.geometry.n_cells):
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
    log.log(logging.INFO if len(report) >= 64 else logging.DEBUG, "write-verify: %d cells, %.2f%% in band, %d write errors (%d unresponsive), "
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
    # per-cell loop state in the smallest integer types that hold it (counts <= MAX_PULSES)
    pulses = np.zeros(n, dtype=np.int32)
    status = np.full(n, NOT_FINISHED, dtype=np.int8)
    formed = np.zeros(n, dtype=bool)        # ever read at or above form_threshold_s
    last_dir = np.zeros(n, dtype=np.int8)   # +1 after SET/FORM, -1 after RESET, 0 before any pulse
    k_set = np.zeros(n, dtype=np.int32)
    k_reset = np.zeros(n, dtype=np.int32)
    k_form = np.zeros(n, dtype=np.int32)
    at_max = np.zeros(n, dtype=np.int32)    # consecutive pulses at the top of their ramp
    S = int(policy.stuck_after)
    # Readings of the cells whose pulse was at the top of its ramp, per iteration (last S kept):
    # a cell with S consecutive top pulses at iteration `it` had one at `it - S`, so this is every
    # earlier reading the unresponsive test needs, without a ring of readings for every cell.
    top_reads: dict[int, tuple[np.ndarray, np.ndarray]] = {}
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
            g = np.asarray(xbar.read(cells if active.size == n else cells[active],
                                     n_avg=policy.n_verify_reads), dtype=float).ravel()
            if g.size != active.size or not np.all(np.isfinite(g)):
                raise BackendError(f"{type(xbar).__name__}.read returned {g.size} values "
                                   f"(finite: {int(np.isfinite(g).sum())}) for {active.size} cells")
            formed[active] |= g >= policy.form_threshold_s

            # 2-3: who finishes
            inb = (g >= lo[active]) & (g <= hi[active])
            unresp = ~inb & (at_max[active] >= S)
            earlier = top_reads.pop(it - S, None)
            if unresp.any():
                c = active[unresp]
                moved = np.abs(g[unresp] - earlier[1][np.searchsorted(earlier[0], c)])
                unresp[unresp] = moved <= stuck_thr[c]
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

            p_idx, p_op, p_v, p_gate, tops = [], [], [], [], []
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
                if top.any():
                    tops.append((c[top], g_rem[mask][top]))
                p_idx.append(c)
                p_op.append(np.full(c.size, OP_CODES[op], dtype=np.int64))
                p_v.append(v)
                p_gate.append(gate)

            if tops:
                c, g_top = (np.concatenate(a) for a in zip(*tops))
                order = np.argsort(c)
                top_reads[it] = (c[order], g_top[order])
            cat_i = (lambda parts: np.concatenate(parts) if parts else _i64())
            cat_f = (lambda parts: np.concatenate(parts).astype(float) if parts else _f64())
            p_idx_a = cat_i(p_idx)
            step = ProgramStep(
                iteration=it, time_s=t_read,
                read_idx=active.copy(), read_g_s=g.copy(),
                pulse_idx=p_idx_a, pulse_op=cat_i(p_op), pulse_v=cat_f(p_v), pulse_v_gate=cat_f(p_gate),
                pulse_width_s=np.full(p_idx_a.size, width),
                done_idx=d_idx, done_g_s=g[fin].copy(), done_pulses=pulses[d_idx].astype(np.int64),
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
