"""Retention: read the selection every `interval_s` for `duration_s`, G against time.

Time passes on the station clock: a simulated chip's virtual clock moves forward (`advance`),
an instrument station waits in real time in short sleeps the cancel token ends. The `log`
schedule spaces the reads evenly in log time from `interval_s` to `duration_s`
(`points_per_decade`), the usual view of retention. Every read streams rows (t_s, cell, g_s)
into the record table `<group>/series`.

This module is declared only as an entry point of the package (pyproject.toml), exactly as a
third-party plugin would be: it proves the plugin contract.
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
from hil.limits import MAX_LIMIT_V, SafetyLimits
from hil.modules.base import LabModule, ModuleContext, ModuleResult
from hil.modules.stability import MAX_DRIFT_DAYS, DAY, format_duration
from hil.options import MAX_N_AVG

US_PER_S = 1e6
MAX_READS = 100_000


@dataclass
class RetentionConfig(Config):
    """Read every `interval_s` (linear) or `points_per_decade` per decade from `interval_s`
    (log) until `duration_s`; each read the mean of `n_avg`."""

    interval_s: float = param(60.0, lo=0.0, hi=MAX_DRIFT_DAYS * DAY, lo_open=True)
    duration_s: float = param(3600.0, lo=0.0, hi=MAX_DRIFT_DAYS * DAY, lo_open=True)
    schedule: str = param("linear", choices=("linear", "log"))
    points_per_decade: int = param(10, lo=1, hi=1000)
    n_avg: int = param(1, lo=1, hi=MAX_N_AVG)
    v_read: Optional[float] = param(None, lo=0.0, hi=MAX_LIMIT_V, lo_open=True)


def read_times(cfg: RetentionConfig) -> np.ndarray:
    """Seconds after the start of every read (the first at 0)."""
    if cfg.interval_s > cfg.duration_s:
        raise ConfigError(f"module retention: interval_s {cfg.interval_s:g} s exceeds duration_s "
                          f"{cfg.duration_s:g} s")
    if cfg.schedule == "log":
        decades = np.log10(cfg.duration_s / cfg.interval_s)
        t = np.logspace(np.log10(cfg.interval_s), np.log10(cfg.duration_s),
                        int(np.ceil(decades * cfg.points_per_decade)) + 1)
    else:
        n = int(np.floor(cfg.duration_s / cfg.interval_s + 1e-9))
        if n > MAX_READS:
            raise ConfigError(f"module retention: {n} reads is too many (at most {MAX_READS}); use a longer "
                              f"interval_s or the log schedule")
        t = cfg.interval_s * np.arange(1, n + 1)
    t = t[t < cfg.duration_s * (1 - 1e-9)]
    return np.unique(np.concatenate([[0.0], t, [cfg.duration_s]]))


@dataclass
class RetentionResult(ModuleResult):
    """`g_s[k, i]`: conductance (S) of cell i read `t_s[k]` seconds after the start."""

    t_s: np.ndarray
    g_s: np.ndarray
    virtual_clock: bool

    def arrays(self) -> dict[str, np.ndarray]:
        return {"t_s": self.t_s, "g_s": self.g_s}

    def to_dict(self) -> dict:
        g0, g1 = self.g_s[0], self.g_s[-1]
        rel = (g1 - g0) / np.maximum(np.abs(g0), 1e-12)
        return {"module": "retention", "cells": int(g0.size), "reads": int(self.t_s.size),
                "duration_s": float(self.t_s[-1]), "duration": format_duration(self.t_s[-1]),
                "mean_g_first_us": float(np.mean(g0) * US_PER_S), "mean_g_last_us": float(np.mean(g1) * US_PER_S),
                "median_rel_change": float(np.median(rel)), "max_abs_change_us": float(np.max(np.abs(g1 - g0)) * US_PER_S),
                "virtual_clock": bool(self.virtual_clock)}


class Retention(LabModule):
    name = "retention"
    title = "Retention"
    description = "read the selection every X for Y (virtual clock on the simulator): G against time"
    config_type = RetentionConfig
    unit = "reads"

    def check(self, limits: SafetyLimits, geometry: Geometry, cfg: RetentionConfig) -> None:
        read_times(cfg)
        if cfg.v_read is not None:
            check_read(limits, cfg.v_read)

    def execute(self, ctx: ModuleContext) -> RetentionResult:
        cfg = ctx.cfg
        times, rows = read_times(cfg), []
        for k, t in enumerate(times):
            ctx.wait(t - ctx.elapsed_s())
            ctx.check()
            t_now = ctx.elapsed_s()
            g = ctx.read(cfg.n_avg, cfg.v_read)
            rows.append((t_now, g))
            ctx.emit(k + 1, times.size, f"{format_duration(t_now)}: mean G {np.mean(g) * US_PER_S:.2f} µS",
                     series="series", t_s=t_now, cell=ctx.flat, g_s=g)
        t, g = zip(*rows)
        return RetentionResult(np.asarray(t), np.vstack(g), ctx.virtual_clock)

    def plot(self, result: RetentionResult, path: Path) -> list[Path]:
        from hil.plots import new_figure, save_png
        fig, (ax,) = new_figure()
        t = np.maximum(result.t_s, result.t_s[1] / 10 if result.t_s.size > 1 else 1.0)   # t = 0 on a log axis
        g = result.g_s * US_PER_S
        ax.plot(t, g, "-", color="0.7", lw=0.8)
        ax.plot(t, np.median(g, axis=1), "-o", ms=3, color="tab:red", label="median")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("time since start (s)" + (", virtual clock" if result.virtual_clock else ""))
        ax.set_ylabel("conductance (µS)")
        ax.set_title(f"Retention, {g.shape[1]} cells over {format_duration(result.t_s[-1])}")
        ax.legend(loc="best")
        return [save_png(fig, Path(f"{path}-retention.png"))]
