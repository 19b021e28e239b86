"""The core's sweep targets: write-verify programming and retention drift (the papers'
targets live in `hil.yao2020.sweep` and `hil.wang2019.sweep`). Each calls the existing stages:
`hil.ops.jobs.program` and `hil.modules.stability.experiment`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from hil.config import Config, param
from hil.geometry import Geometry
from hil.modules.stability import DriftConfig, experiment
from hil.ops.jobs import MAX_G_S, ProgramConfig, plan_for, program
from hil.sweep.target import Target

#: a small chip: one 32 x 16 PE (512 cells) is enough for the statistics of a programming figure
SMALL = Geometry(1, 32, 16, "sweep-small")
PROGRAM_FIGURES = ("in_band_fraction", "mean_pulses", "median_pulses", "write_errors", "max_pulses_errors",
                   "unresponsive")


@dataclass
class WriteVerifyPointConfig(Config):
    """Programming job of one point; `tolerance_s` (S) overrides the level table's half-width."""

    program: ProgramConfig = param(factory=ProgramConfig)
    tolerance_s: Optional[float] = param(None, lo=0.0, hi=MAX_G_S, lo_open=True)


@dataclass
class DriftPointConfig(WriteVerifyPointConfig):
    """Programming, then retention drift of the programmed cells."""

    drift: DriftConfig = param(factory=DriftConfig)


def _programmed(xbar, writer, cfg: WriteVerifyPointConfig):
    plan = plan_for(cfg.program, xbar.geometry)
    if cfg.tolerance_s is not None:
        plan = dataclasses.replace(plan, tolerance_s=cfg.tolerance_s)
    summary = program(xbar, writer, cfg.program, plan=plan).summary()
    return plan, {k: summary[k] for k in PROGRAM_FIGURES} | {"program_station_s": summary["backend_seconds"]}


def run_write_verify(xbar, writer, cfg: WriteVerifyPointConfig, shared=None) -> dict:
    """In-band fraction, pulse statistics and errors of one programming job."""
    return _programmed(xbar, writer, cfg)[1]


def run_drift(xbar, writer, cfg: DriftPointConfig, shared=None) -> dict:
    """The programming figures, then the in-band fraction at the last drift snapshot and the
    median growth of the levels' spread."""
    plan, figures = _programmed(xbar, writer, cfg)
    res = experiment(xbar, writer, cfg.drift, plan).to_dict()
    return figures | {"drift_in_band_first": res["in_band_fraction"][0],
                      "drift_in_band_last": res["in_band_fraction"][-1],
                      "drift_median_std_growth": res["median_std_growth"]}


def programming(cfg: WriteVerifyPointConfig) -> dict:
    """The write-verify of a point, for the statistical programming model."""
    p = cfg.program
    return {"levels": p.levels, "g_min_s": p.g_min_s, "g_max_s": p.g_max_s, "tolerance_s": cfg.tolerance_s,
            "policy": p.policy().to_dict()}


WRITE_VERIFY = Target("write_verify", WriteVerifyPointConfig, "program", SMALL, run_write_verify,
                      programming=programming)
DRIFT = Target("drift", DriftPointConfig, "drift", SMALL, run_drift, programming=programming)
