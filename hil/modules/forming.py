"""Forming: a voltage ramp of FORM pulses on fresh cells until each one conducts.

Cells that already read above `g_formed_s` are skipped. The others get `pulses_per_step` FORM
pulses at each amplitude from `v_start` to `v_stop` (step `v_step`, width `width_s`, gate
`v_gate` setting the compliance) and are read after each step; a cell above `g_formed_s` is
formed at that amplitude and gets no more pulses. Cells still below at `v_stop` failed. Every
step streams rows (v, cell, g_s) of the cells still forming into `<group>/series`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hil.config import Config, param
from hil.errors import ConfigError
from hil.geometry import Geometry
from hil.limits import MAX_LIMIT_COMPLIANCE_A, MAX_LIMIT_V, MAX_LIMIT_V_GATE, MAX_LIMIT_WIDTH_S, Op, SafetyLimits
from hil.modules.base import LabModule, ModuleContext, ModuleResult
from hil.options import MAX_N_AVG

US_PER_S = 1e6
ALREADY, FORMED, FAILED = 0, 1, 2
MAX_STEPS = 10_000


@dataclass
class FormingConfig(Config):
    """FORM ramp `v_start`..`v_stop` by `v_step` (V), `pulses_per_step` pulses of `width_s` at gate
    `v_gate` (optional SMU `compliance_a`, checked against the FORM limit); formed when G >= `g_formed_s`."""

    v_start: float = param(2.0, lo=0.0, hi=MAX_LIMIT_V, lo_open=True)
    v_stop: float = param(4.0, lo=0.0, hi=MAX_LIMIT_V, lo_open=True)
    v_step: float = param(0.1, lo=0.0, hi=MAX_LIMIT_V, lo_open=True)
    width_s: float = param(1e-6, lo=0.0, hi=MAX_LIMIT_WIDTH_S, lo_open=True)
    v_gate: float = param(1.2, lo=0.0, hi=MAX_LIMIT_V_GATE)
    compliance_a: Optional[float] = param(None, lo=0.0, hi=MAX_LIMIT_COMPLIANCE_A, lo_open=True)
    pulses_per_step: int = param(1, lo=1, hi=1000)
    g_formed_s: float = param(2e-6, lo=0.0, hi=1.0, lo_open=True)
    n_avg: int = param(1, lo=1, hi=MAX_N_AVG)


def form_levels(cfg: FormingConfig) -> np.ndarray:
    """The ramp's amplitudes, v_start to v_stop inclusive."""
    if cfg.v_stop < cfg.v_start:
        raise ConfigError(f"module forming: v_stop {cfg.v_stop:g} V is below v_start {cfg.v_start:g} V")
    n = int(np.floor((cfg.v_stop - cfg.v_start) / cfg.v_step + 1e-9)) + 1
    if n > MAX_STEPS:
        raise ConfigError(f"module forming: {n} steps is too many (at most {MAX_STEPS}); use a larger v_step")
    v = np.round(cfg.v_start + cfg.v_step * np.arange(n), 9)
    return v if np.isclose(v[-1], cfg.v_stop) else np.append(v, cfg.v_stop)


@dataclass
class FormingResult(ModuleResult):
    """Per cell: `status` (0 already formed, 1 formed, 2 failed), `v_form` (V, NaN unless formed
    here), `g_initial_s` and `g_final_s` (S)."""

    status: np.ndarray
    v_form: np.ndarray
    g_initial_s: np.ndarray
    g_final_s: np.ndarray
    levels: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {"status": self.status, "v_form": self.v_form, "g_initial_s": self.g_initial_s,
                "g_final_s": self.g_final_s, "levels": self.levels}

    def to_dict(self) -> dict:
        v = self.v_form[self.status == FORMED]
        counts, _ = np.histogram(v, bins=np.append(self.levels, self.levels[-1] + 1e-9)) if v.size else (
            np.zeros(self.levels.size, np.int64), None)
        stat = (lambda f: float(f(v))) if v.size else (lambda f: None)
        return {"module": "forming", "cells": int(self.status.size),
                "already_formed": int(np.sum(self.status == ALREADY)), "formed": int(v.size),
                "failed": int(np.sum(self.status == FAILED)),
                "v_form_mean": stat(np.mean), "v_form_median": stat(np.median), "v_form_std": stat(np.std),
                "v_form_histogram": {"v": self.levels.tolist(), "cells": counts.tolist()}}


class Forming(LabModule):
    name = "forming"
    title = "Forming"
    description = "form fresh cells with a FORM voltage ramp until G passes a threshold (formed cells skipped)"
    config_type = FormingConfig
    unit = "steps"

    def check(self, limits: SafetyLimits, geometry: Geometry, cfg: FormingConfig) -> None:
        limits.check(Op.FORM, form_levels(cfg), cfg.v_gate, cfg.width_s, cfg.compliance_a)

    def execute(self, ctx: ModuleContext) -> FormingResult:
        cfg, xbar = ctx.cfg, ctx.xbar
        levels = form_levels(cfg)
        g0 = ctx.read(cfg.n_avg)
        g = g0.copy()
        status = np.where(g0 >= cfg.g_formed_s, ALREADY, FAILED)
        v_form = np.full(g0.size, np.nan)
        for k, v in enumerate(levels):
            todo = np.flatnonzero(status == FAILED)
            if todo.size == 0:
                break
            ctx.check()
            cells = ctx.cells[todo]
            for _ in range(cfg.pulses_per_step):
                xbar.pulse(cells, Op.FORM, v, cfg.v_gate, cfg.width_s, compliance_a=cfg.compliance_a)
            g[todo] = ctx.read(cfg.n_avg, cells=cells)
            done = todo[g[todo] >= cfg.g_formed_s]
            status[done], v_form[done] = FORMED, v
            ctx.emit(k + 1, levels.size, f"FORM {v:.2f} V: {np.sum(status == FORMED)} formed, "
                     f"{np.sum(status == FAILED)} to go", series="series", v=float(v), cell=ctx.flat[todo],
                     g_s=g[todo])
        return FormingResult(status.astype(np.int64), v_form, g0, g, levels)

    def plot(self, result: FormingResult, path: Path) -> list[Path]:
        from hil.plots import new_figure, save_png
        fig, (ax,) = new_figure()
        v = result.v_form[result.status == FORMED]
        step = result.levels[1] - result.levels[0] if result.levels.size > 1 else 0.1
        ax.hist(v, bins=np.append(result.levels, result.levels[-1] + step) - step / 2, color="tab:red")
        d = result.to_dict()
        ax.set_xlabel("forming voltage (V)")
        ax.set_ylabel("cells")
        ax.set_title(f"Forming: {d['formed']} formed, {d['failed']} failed, {d['already_formed']} already formed")
        return [save_png(fig, Path(f"{path}-forming.png"))]
