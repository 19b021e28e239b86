"""Curve tracer: I–V cycles of the selected cells, DC staircase or pulsed.

Each cycle sweeps 0 → +`v_set_max` → 0 → −`v_reset_max` → 0 in steps of `v_step` (cell voltage
V_BL − V_SL; the gate is `v_gate_set` on the positive half, `v_gate_reset` on the negative half).
`dc`: a staircase through the SMU (`Crossbar.dc_sweep`, capability dc_sweep) with `compliance_a`
and `dwell_s` per point, one branch per call so an abort lands within a branch. `pulsed`: a pulse
of each amplitude then a read (hil.ops.iv), the current estimated as G·V. Rows (cycle, point, v,
cell, i_a) stream into `<group>/series`. The result holds I and R = V/I per cycle and each
cycle's SET and RESET voltages. `dc` (abrupt SET at a threshold): the first positive point where
I/V jumps by more than `SET_JUMP` over the point before, the first negative point where it falls
by more than `RESET_DROP`. `pulsed` (switching may be gradual, a little per pulse, as on the
simulated Yao chip): the first amplitude where G (read after the pulse) has covered
`SWITCH_FRACTION` of the way from its value after the branch's first pulse to the branch's
extreme (highest G going up, lowest going down), counted only where that extreme is at least
`SET_JUMP` times (`RESET_DROP` times below) the starting G; NaN where the cell did not switch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hil.config import Config, param
from hil.crossbar import check_read
from hil.errors import ConfigError
from hil.geometry import Geometry
from hil.limits import MAX_LIMIT_COMPLIANCE_A, MAX_LIMIT_V, MAX_LIMIT_V_GATE, MAX_LIMIT_WIDTH_S, Op, SafetyLimits
from hil.modules.base import LabModule, ModuleContext, ModuleResult
from hil.ops.iv import pulse_and_read, sweep_voltages
from hil.options import MAX_N_AVG

UA_PER_A = 1e6
SET_JUMP = 2.0        # V/I rises by this factor from one point to the next at SET
RESET_DROP = 2.0      # ... and falls by this factor at RESET
#: pulsed mode: the switching voltage is where G has covered this fraction of its change on the branch
SWITCH_FRACTION = 0.5
#: the read voltage at which R_on and R_off are quoted (the sweep point nearest to it)
R_READ_V = 0.2

_V = dict(lo=0.0, hi=MAX_LIMIT_V, lo_open=True)


@dataclass
class CurveTracerConfig(Config):
    """I–V cycles: `mode` dc (SMU staircase) or pulsed; volts, seconds, amperes."""

    mode: str = param("dc", choices=("dc", "pulsed"))
    cycles: int = param(3, lo=1, hi=10_000)
    v_set_max: float = param(1.5, **_V)
    v_reset_max: float = param(1.5, **_V)
    v_step: float = param(0.05, **_V)
    v_gate_set: float = param(1.6, lo=0.0, hi=MAX_LIMIT_V_GATE)
    v_gate_reset: float = param(5.0, lo=0.0, hi=MAX_LIMIT_V_GATE)
    compliance_a: float = param(100e-6, lo=0.0, hi=MAX_LIMIT_COMPLIANCE_A, lo_open=True)
    dwell_s: float = param(1e-3, lo=0.0, hi=MAX_LIMIT_WIDTH_S, lo_open=True)
    terminal: str = param("BL", choices=("BL", "SL"))
    width_s: float = param(1e-6, lo=0.0, hi=MAX_LIMIT_WIDTH_S, lo_open=True)
    n_avg: int = param(1, lo=1, hi=MAX_N_AVG)
    v_read: Optional[float] = param(None, lo=0.0, hi=MAX_LIMIT_V, lo_open=True)


def branches(cfg: CurveTracerConfig) -> list[np.ndarray]:
    """One cycle's cell voltages as four branches: up to +max, back to 0, down to −max, back to 0."""
    try:
        v = sweep_voltages(cfg.v_set_max, cfg.v_reset_max, cfg.v_step)
    except ConfigError as e:
        raise ConfigError(f"module curve-tracer: {e}") from None
    ends = np.flatnonzero((v == 0) | (v == v.max()) | (v == v.min()))
    return [v[a + (k > 0):b + 1] for k, (a, b) in enumerate(zip(ends[:-1], ends[1:]))]


def gates(cfg: CurveTracerConfig, v_cell: np.ndarray) -> np.ndarray:
    return np.where(v_cell >= 0, cfg.v_gate_set, cfg.v_gate_reset)


@dataclass
class CurveTracerResult(ModuleResult):
    """`i_a[c, k, i]`: current (A) of cell i at point k (cell voltage `v[k]`) of cycle c;
    `v_set[c, i]` / `v_reset[c, i]` the switching voltages (NaN where none was seen)."""

    mode: str
    v: np.ndarray
    i_a: np.ndarray
    v_set: np.ndarray
    v_reset: np.ndarray

    @property
    def r_ohm(self) -> np.ndarray:
        """R = V / I per point (NaN at 0 V or zero current)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.v[None, :, None] / self.i_a
        return np.where(np.isfinite(r) & (r > 0), r, np.nan)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"v": self.v, "i_a": self.i_a, "r_ohm": self.r_ohm, "v_set": self.v_set, "v_reset": self.v_reset}

    def _r_at_read(self) -> tuple[np.ndarray, np.ndarray]:
        """(R before SET on the way up, R after SET on the way down) at the point nearest R_READ_V."""
        top = int(np.argmax(self.v))
        up = int(np.argmin(np.abs(self.v[:top + 1] - R_READ_V)))
        down = top + int(np.argmin(np.abs(self.v[top:self.v.size // 2 + 1] - R_READ_V)))
        r = self.r_ohm
        return r[:, up], r[:, down]

    def to_dict(self) -> dict:
        r_off, r_on = self._r_at_read()
        med = lambda a: float(np.nanmedian(a)) if np.isfinite(a).any() else None   # noqa: E731
        return {"module": "curve-tracer", "mode": self.mode, "cycles": int(self.i_a.shape[0]),
                "points": int(self.v.size), "cells": int(self.i_a.shape[2]),
                "v_set_median": med(self.v_set), "v_reset_median": med(self.v_reset),
                "set_seen_fraction": float(np.mean(np.isfinite(self.v_set))),
                "reset_seen_fraction": float(np.mean(np.isfinite(self.v_reset))),
                "r_off_median_ohm": med(r_off), "r_on_median_ohm": med(r_on),
                "max_abs_i_ua": float(np.nanmax(np.abs(self.i_a)) * UA_PER_A)}


def switching_voltages(v: np.ndarray, i_a: np.ndarray, gradual: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per cell (i_a: points × cells) the SET voltage (on V > 0) and the RESET voltage (on V < 0),
    NaN where none: the first rise of I/V by SET_JUMP (fall by RESET_DROP) from one point to the
    next, or with `gradual` the first point past SWITCH_FRACTION of the branch's change (see the
    module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.abs(i_a / v[:, None])
    out = []
    for sign, factor in ((1, SET_JUMP), (-1, RESET_DROP)):
        k = np.flatnonzero(sign * v > 0)
        k = k[: int(np.argmax(np.diff(np.append(sign * v[k], -np.inf)) < 0)) + 1]   # the outgoing branch
        gk = g[k]
        switched = (lambda a, b: b > factor * a) if sign > 0 else (lambda a, b: a > factor * b)  # noqa: E731
        if gradual:
            start, end = gk[0], (gk.max(axis=0) if sign > 0 else gk.min(axis=0))
            hit = (sign * (gk - (start + SWITCH_FRACTION * (end - start))) >= 0) & switched(start, end)
            at = v[k]
        else:
            hit, at = switched(gk[:-1], gk[1:]), v[k[1:]]
        out.append(np.where(hit.any(axis=0), at[np.argmax(hit, axis=0)], np.nan))
    return out[0], out[1]


class CurveTracer(LabModule):
    name = "curve-tracer"
    title = "Curve tracer"
    description = "I–V cycles: DC staircase through an SMU (capability dc_sweep) or pulsed; |I| and R views"
    config_type = CurveTracerConfig
    unit = "branches"

    def check(self, limits: SafetyLimits, geometry: Geometry, cfg: CurveTracerConfig) -> None:
        v = np.concatenate(branches(cfg))
        if cfg.mode == "dc":
            for op, mask in ((Op.SET, v > 0), (Op.RESET, v < 0)):
                limits.check(op, np.abs(v[mask]), gates(cfg, v)[mask], cfg.dwell_s, cfg.compliance_a)
        else:
            limits.check(Op.SET, cfg.v_set_max, cfg.v_gate_set, cfg.width_s)
            limits.check(Op.RESET, cfg.v_reset_max, cfg.v_gate_reset, cfg.width_s)
            if cfg.v_read is not None:
                check_read(limits, cfg.v_read)

    def execute(self, ctx: ModuleContext) -> CurveTracerResult:
        cfg, xbar = ctx.cfg, ctx.xbar
        if cfg.mode == "dc" and not xbar.has("dc_sweep"):
            raise ConfigError(f"module curve-tracer: this station has no DC sweep (no SMU on the bit line); "
                              f"use mode = \"pulsed\"")
        parts = branches(cfg)
        v = np.concatenate(parts)
        i_a = np.empty((cfg.cycles, v.size, len(ctx.cells)))
        total, done = cfg.cycles * len(parts), 0
        for c in range(cfg.cycles):
            k0 = 0
            for part in parts:
                ctx.check()
                cur = self._branch(ctx, part)
                i_a[c, k0:k0 + part.size] = cur
                done += 1
                ctx.emit(done, total, f"cycle {c + 1}: {round(part[0], 2) + 0.0:+.2f} → {round(part[-1], 2) + 0.0:+.2f} V", series="series",
                         cycle=np.repeat(np.int64(c), cur.size), point=np.repeat(np.arange(k0, k0 + part.size), cur.shape[1]),
                         v=np.repeat(part, cur.shape[1]), cell=np.tile(ctx.flat, part.size), i_a=cur.ravel())
                k0 += part.size
        v_set, v_reset = zip(*(switching_voltages(v, i_a[c], gradual=cfg.mode == "pulsed") for c in range(cfg.cycles)))
        return CurveTracerResult(cfg.mode, v, i_a, np.vstack(v_set), np.vstack(v_reset))

    def _branch(self, ctx: ModuleContext, part: np.ndarray) -> np.ndarray:
        cfg, xbar = ctx.cfg, ctx.xbar
        if cfg.mode == "dc":
            volts = part if cfg.terminal == "BL" else -part
            return xbar.dc_sweep(ctx.cells, volts, v_gate=gates(cfg, part), compliance_a=cfg.compliance_a,
                                 terminal=cfg.terminal, dwell_s=cfg.dwell_s).i_a
        out = np.empty((part.size, len(ctx.cells)))
        for k, vk in enumerate(part):
            ctx.check()
            out[k] = vk * pulse_and_read(xbar, ctx.cells, vk, cfg.v_gate_set, cfg.v_gate_reset, cfg.width_s,
                                         cfg.n_avg, cfg.v_read)
        return out

    def plot(self, result: CurveTracerResult, path: Path) -> list[Path]:
        from hil.plots import new_figure, save_png
        fig, (ax_i, ax_r) = new_figure(ncols=2, width=11.0)
        cycles = result.i_a.shape[0]
        for c in range(cycles):
            colour = f"C{c % 10}"
            ax_i.plot(result.v, np.abs(result.i_a[c]), "-", color=colour, lw=0.8, alpha=0.6)
            ax_r.plot(result.v, result.r_ohm[c], ".", color=colour, ms=2, alpha=0.6)
        ax_i.set_yscale("log")
        ax_r.set_yscale("log")
        ax_i.set_xlabel("cell voltage V_BL − V_SL (V)")
        ax_r.set_xlabel("cell voltage V_BL − V_SL (V)")
        ax_i.set_ylabel("|I| (A)")
        ax_r.set_ylabel("R = V / I (Ω)")
        ax_i.set_title(f"I–V ({result.mode}), {cycles} cycles, {result.i_a.shape[2]} cells")
        ax_r.set_title("Resistance")
        return [save_png(fig, Path(f"{path}-curve-tracer.png"))]
