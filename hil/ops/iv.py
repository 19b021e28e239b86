"""Pulsed I–V sweep over the Crossbar contract (the DC staircase is `Crossbar.dc_sweep`).

The pulsed sweep works on any backend, as on a 1T1R probe station with a pulse generator:
the amplitude steps 0 → +V_set → 0 → −V_reset → 0; a positive step is
a SET pulse on the bit line (gate `v_gate_set` limits the current), a negative step a RESET
pulse on the source line (gate `v_gate_reset`); after every step the cells are read at the
read voltage. The current at each step is estimated as I = G_read · V (ohmic cell at the
pulse amplitude), so the curve shows the switching loop: SET near +V, RESET near −V. It is
not a measured I–V curve; `Crossbar.dc_sweep` (capability `dc_sweep`) measures one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from hil.crossbar import Crossbar
from hil.errors import ConfigError
from hil.geometry import Cells
from hil.limits import Op
from hil.progress import CancelToken, Progress, ProgressCallback, ensure

log = logging.getLogger(__name__)


@dataclass
class IVResult:
    """`v[k]` is the signed amplitude of step k (V; + SET on BL, − RESET on SL, 0 no pulse);
    `g_s[k, i]` the conductance of cell i read after step k (S); `i_a = g_s * v` (A)."""

    v: np.ndarray
    g_s: np.ndarray

    @property
    def i_a(self) -> np.ndarray:
        return self.g_s * self.v[:, None]

    def to_dict(self) -> dict:
        return {"v": self.v.tolist(), "g_s": self.g_s.tolist()}


def sweep_voltages(v_set_max: float, v_reset_max: float, v_step: float) -> np.ndarray:
    """Signed amplitudes 0 → +v_set_max → 0 → −v_reset_max → 0 in steps of `v_step`."""
    if not (np.isfinite(v_step) and v_step > 0):
        raise ConfigError(f"I–V sweep step must be a positive number of volts, got {v_step!r}")
    for name, v in (("V_set max", v_set_max), ("V_reset max", v_reset_max)):
        if not (np.isfinite(v) and v > 0):
            raise ConfigError(f"I–V sweep {name} must be a positive number of volts, got {v!r}")
        if v / v_step > 10_000:
            raise ConfigError(f"I–V sweep of {v} V in steps of {v_step} V is too fine; use a larger step")
    up = np.append(np.arange(0.0, v_set_max, v_step), v_set_max)
    dn = np.append(np.arange(0.0, v_reset_max, v_step), v_reset_max)
    return np.concatenate([up, up[-2::-1], -dn[1:], -dn[-2::-1]])


def check_sweep(xbar: Crossbar, v: np.ndarray, v_gate_set: float, v_gate_reset: float, width_s: float) -> None:
    """Refuse (SafetyViolation) a pulsed sweep whose extremes exceed the SET / RESET limits."""
    if (v > 0).any():
        xbar.limits.check(Op.SET, v.max(), v_gate_set, width_s)
    if (v < 0).any():
        xbar.limits.check(Op.RESET, -v.min(), v_gate_reset, width_s)


def pulse_and_read(xbar: Crossbar, cells: Cells, v: float, v_gate_set: float, v_gate_reset: float,
                   width_s: float, n_avg: int = 1, v_read: Optional[float] = None) -> np.ndarray:
    """One step of a pulsed sweep: a SET (v > 0) or RESET (v < 0, on the SL) pulse of |v|, none at
    0, then a read; the cells' conductance (S)."""
    if v > 0:
        xbar.pulse(cells, Op.SET, v, v_gate_set, width_s)
    elif v < 0:
        xbar.pulse(cells, Op.RESET, -v, v_gate_reset, width_s)
    return xbar.read(cells, n_avg=n_avg, v_read=v_read)


def iv_sweep(xbar: Crossbar, cells: Cells, *, v_set_max: float, v_reset_max: float, v_step: float,
             v_gate_set: float, v_gate_reset: float, width_s: float, n_avg: int = 1,
             progress: Optional[ProgressCallback] = None,
             cancel: Optional[CancelToken] = None) -> IVResult:
    """Pulsed I–V sweep of `cells` (all in parallel). Every extreme is checked against the
    station limits before the first pulse; the cancel token is checked after every step."""
    cancel, progress = ensure(cancel, progress)
    if not isinstance(cells, Cells) or len(cells) == 0:
        raise ConfigError("select at least one cell for the I–V sweep")
    cells = cells.validate(xbar.geometry)
    v = sweep_voltages(v_set_max, v_reset_max, v_step)
    check_sweep(xbar, v, v_gate_set, v_gate_reset, width_s)       # refuse before anything is applied
    g = np.full((v.size, len(cells)), np.nan)
    for k, vk in enumerate(v):
        cancel.raise_if_cancelled()
        g[k] = pulse_and_read(xbar, cells, vk, v_gate_set, v_gate_reset, width_s, n_avg)
        progress(Progress(k + 1, v.size, f"I–V sweep: {vk:+.2f} V, mean G {np.mean(g[k]) * 1e6:.2f} µS",
                          unit="steps"))
    log.info("I–V sweep of %d cells: %d steps, +%.2f V / −%.2f V", len(cells), v.size, v_set_max, v_reset_max)
    return IVResult(v, g)
