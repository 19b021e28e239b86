"""Pulse train / endurance: SET/RESET cycles or an amplitude ramp, with reads, G against pulse number.

`endurance` mode applies `cycles` cycles of `pulses_per_op` SET pulses then `pulses_per_op`
RESET pulses to every selected cell (in parallel) and reads the cells after the SET and after the
RESET half of the chosen cycles: every `read_every`-th (linear schedule) or `reads_per_decade`
cycles per decade (log schedule, for 1e4+ cycles). `ramp` mode steps the amplitude of one
operation from `ramp_start_v` to `ramp_stop_v` (`pulses_per_op` pulses per step, a read after
each step). Every read streams rows (pulse, cell, v, g_s) into the record table
`<group>/series`.
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
from hil.limits import MAX_LIMIT_V, MAX_LIMIT_V_GATE, MAX_LIMIT_WIDTH_S, Op, SafetyLimits
from hil.modules.base import LabModule, ModuleContext, ModuleResult
from hil.options import MAX_N_AVG

US_PER_S = 1e6
MAX_CYCLES = 10**9
MAX_RAMP_STEPS = 10_000
#: a cell counts as switching in a cycle when G after SET exceeds G after RESET by this factor
SWITCH_RATIO = 2.0

_V = dict(lo=0.0, hi=MAX_LIMIT_V, lo_open=True)
_GATE = dict(lo=0.0, hi=MAX_LIMIT_V_GATE)
_W = dict(lo=0.0, hi=MAX_LIMIT_WIDTH_S, lo_open=True)


@dataclass
class PulseTrainConfig(Config):
    """Pulse train settings (volts, seconds). `mode` endurance: SET/RESET cycles; ramp: the
    amplitude of `ramp_op` stepped from `ramp_start_v` to `ramp_stop_v` by `ramp_step_v`."""

    mode: str = param("endurance", choices=("endurance", "ramp"))
    cycles: int = param(100, lo=1, hi=MAX_CYCLES)
    pulses_per_op: int = param(1, lo=1, hi=10_000)
    v_set: float = param(2.0, **_V)
    v_gate_set: float = param(1.6, **_GATE)
    width_set_s: float = param(100e-9, **_W)
    v_reset: float = param(2.0, **_V)
    v_gate_reset: float = param(5.0, **_GATE)
    width_reset_s: float = param(100e-9, **_W)
    read_schedule: str = param("linear", choices=("linear", "log"))
    read_every: int = param(1, lo=1, hi=MAX_CYCLES)
    reads_per_decade: int = param(10, lo=1, hi=1000)
    n_avg: int = param(1, lo=1, hi=MAX_N_AVG)
    v_read: Optional[float] = param(None, lo=0.0, hi=MAX_LIMIT_V, lo_open=True)
    ramp_op: str = param("SET", choices=("SET", "RESET"))
    ramp_start_v: float = param(0.5, **_V)
    ramp_stop_v: float = param(2.0, **_V)
    ramp_step_v: float = param(0.1, **_V)


@dataclass
class PulseTrainResult(ModuleResult):
    """`g_s[k, i]`: conductance (S) of cell i at read k, taken after `pulse[k]` pulses, the last
    of amplitude `v[k]` (V; positive SET, negative RESET)."""

    mode: str
    pulse: np.ndarray
    v: np.ndarray
    g_s: np.ndarray
    cycle: np.ndarray           # the cycle (endurance) or ramp step of each read, from 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {"pulse": self.pulse, "v": self.v, "g_s": self.g_s, "cycle": self.cycle}

    def to_dict(self) -> dict:
        g = self.g_s * US_PER_S
        d = {"module": "pulse-train", "mode": self.mode, "cells": int(g.shape[1]), "reads": int(g.shape[0]),
             "pulses": int(self.pulse[-1]) if self.pulse.size else 0}
        if self.mode == "endurance":
            on, off = g[self.v > 0], g[self.v < 0]
            n = min(len(on), len(off))
            d.update(cycles=int(self.cycle[-1]) if self.cycle.size else 0,
                     median_g_set_us=float(np.median(on)), median_g_reset_us=float(np.median(off)),
                     median_on_off_ratio=float(np.median(on[:n] / np.maximum(off[:n], 1e-3))),
                     switching_fraction=float(np.mean(on[:n] > SWITCH_RATIO * off[:n])))
        else:
            d.update(v_first=float(self.v[0]), v_last=float(self.v[-1]),
                     mean_g_first_us=float(np.mean(g[0])), mean_g_last_us=float(np.mean(g[-1])))
        return d


def read_cycles(cfg: PulseTrainConfig) -> np.ndarray:
    """The cycles after which an endurance run reads (always the first and the last)."""
    n = cfg.cycles
    if cfg.read_schedule == "log":
        pts = int(np.ceil(np.log10(n) * cfg.reads_per_decade)) + 1 if n > 1 else 1
        cyc = np.round(np.logspace(0.0, np.log10(n), pts)).astype(np.int64)
    else:
        cyc = np.arange(cfg.read_every, n + 1, cfg.read_every, dtype=np.int64)
    return np.unique(np.concatenate([[1, n], cyc]))


def ramp_levels(cfg: PulseTrainConfig) -> np.ndarray:
    """Amplitudes of a ramp, start to stop inclusive (descending when stop < start)."""
    span = cfg.ramp_stop_v - cfg.ramp_start_v
    steps = int(np.floor(abs(span) / cfg.ramp_step_v + 1e-9))
    if steps + 1 > MAX_RAMP_STEPS:
        raise ConfigError(f"module pulse-train: a ramp of {steps + 1} steps is too long (at most {MAX_RAMP_STEPS}); "
                          f"use a larger ramp_step_v")
    v = np.round(cfg.ramp_start_v + np.sign(span) * cfg.ramp_step_v * np.arange(steps + 1), 9)
    return v if np.isclose(v[-1], cfg.ramp_stop_v) else np.append(v, cfg.ramp_stop_v)


class PulseTrain(LabModule):
    name = "pulse-train"
    title = "Pulse train / endurance"
    description = "SET/RESET cycles (or an amplitude ramp) with reads: G against pulse number"
    config_type = PulseTrainConfig
    unit = "reads"

    def _ops(self, cfg: PulseTrainConfig):
        return {Op.SET: (cfg.v_set, cfg.v_gate_set, cfg.width_set_s),
                Op.RESET: (cfg.v_reset, cfg.v_gate_reset, cfg.width_reset_s)}

    def check(self, limits: SafetyLimits, geometry: Geometry, cfg: PulseTrainConfig) -> None:
        ops = self._ops(cfg)
        if cfg.mode == "endurance":
            for op, (v, gate, w) in ops.items():
                limits.check(op, v, gate, w)
        else:
            op = Op(cfg.ramp_op)
            _, gate, w = ops[op]
            limits.check(op, ramp_levels(cfg), gate, w)
        if cfg.v_read is not None:
            check_read(limits, cfg.v_read)

    def execute(self, ctx: ModuleContext) -> PulseTrainResult:
        return self._endurance(ctx) if ctx.cfg.mode == "endurance" else self._ramp(ctx)

    def _read(self, ctx: ModuleContext, rows: list, pulse: int, v: float, cycle: int, k: int, total: int,
              what: str) -> None:
        cfg = ctx.cfg
        g = ctx.read(cfg.n_avg, cfg.v_read)
        rows.append((pulse, v, cycle, g))
        ctx.emit(k, total, f"{what}: mean G {np.mean(g) * US_PER_S:.2f} µS", series="series",
                 pulse=np.int64(pulse), cell=ctx.flat, v=float(v), g_s=g)

    def _endurance(self, ctx: ModuleContext) -> PulseTrainResult:
        cfg, xbar, cells = ctx.cfg, ctx.xbar, ctx.cells
        ops = self._ops(cfg)
        reads = set(read_cycles(cfg).tolist())
        total, rows, p = 2 * len(reads), [], cfg.pulses_per_op
        for c in range(1, cfg.cycles + 1):
            ctx.check()
            for op, sign in ((Op.SET, 1.0), (Op.RESET, -1.0)):
                v, gate, w = ops[op]
                for _ in range(p):
                    xbar.pulse(cells, op, v, gate, w)
                if c in reads:
                    pulse = (c - 1) * 2 * p + (p if op is Op.SET else 2 * p)
                    self._read(ctx, rows, pulse, sign * v, c, len(rows) + 1, total, f"cycle {c} after {op.value}")
        return _result("endurance", rows)

    def _ramp(self, ctx: ModuleContext) -> PulseTrainResult:
        cfg, xbar, cells = ctx.cfg, ctx.xbar, ctx.cells
        op = Op(cfg.ramp_op)
        _, gate, w = self._ops(cfg)[op]
        sign = 1.0 if op is Op.SET else -1.0
        levels, rows = ramp_levels(cfg), []
        for k, v in enumerate(levels):
            ctx.check()
            for _ in range(cfg.pulses_per_op):
                xbar.pulse(cells, op, v, gate, w)
            self._read(ctx, rows, (k + 1) * cfg.pulses_per_op, sign * v, k + 1, k + 1, levels.size,
                       f"{op.value} {v:.3g} V")
        return _result("ramp", rows)

    def plot(self, result: PulseTrainResult, path: Path) -> list[Path]:
        from hil.plots import new_figure, save_png
        fig, (ax,) = new_figure()
        g = result.g_s * US_PER_S
        if result.mode == "endurance":
            for mask, label, colour in ((result.v > 0, "after SET", "tab:red"), (result.v < 0, "after RESET",
                                                                                  "tab:blue")):
                ax.plot(result.pulse[mask], g[mask], ".", ms=3, color=colour, alpha=0.5)
                ax.plot(result.pulse[mask], np.median(g[mask], axis=1), "-", color=colour, label=label + " (median)")
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            ax.plot(result.pulse, g, "-", color="0.7", lw=0.8)
            ax.plot(result.pulse, g.mean(axis=1), "-o", ms=3, color="tab:red", label="mean")
        ax.set_xlabel("pulse number")
        ax.set_ylabel("conductance (µS)")
        ax.set_title(f"Pulse train ({result.mode}), {g.shape[1]} cells")
        ax.legend(loc="best")
        return [save_png(fig, Path(f"{path}-pulse-train.png"))]


def _result(mode: str, rows: list) -> PulseTrainResult:
    pulse, v, cycle, g = zip(*rows)
    return PulseTrainResult(mode, np.asarray(pulse, np.int64), np.asarray(v, float), np.vstack(g),
                            np.asarray(cycle, np.int64))
