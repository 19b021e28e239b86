"""Long operations as plain functions over (crossbar, run writer, progress, cancel): the CLI
shows them with a progress bar, the GUI runs the same functions in a worker thread.

`program` is the programming stage `hil program` and the GUI's Programming tab both run: its
settings are a `ProgramConfig`, stored with the plan (attr ``stage_config`` of
``programming/targets``, one journal record: a run cut off at any write has both or neither); a
resumed run reads the config and the plan from there."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hil.config import Config, param
from hil.crossbar import Crossbar
from hil.errors import ConfigError, DataError, HilError
from hil.geometry import Cells
from hil.levels import PATTERNS, LevelTable, validate_targets
from hil.options import MAX_LEVELS, MAX_PE, MAX_PULSES, MAX_SEED
from hil.programming import NOT_FINISHED, ProgramReport, ProgramStep, WriteVerifyPolicy, policy_within
from hil.ops.write_verify import write_verify
from hil.progress import CancelToken, ProgressCallback
from hil.runstore import RunRecord, RunWriter

log = logging.getLogger(__name__)

PROGRAMMING = "programming"
TARGETS = "programming/targets"
CELLS = "programming/cells"
VERIFY = "programming/verify"
PULSES = "programming/pulses"
#: where a target can come from: a level pattern, a weights file or a run's snapshot
SOURCES = tuple(PATTERNS) + ("weights", "snapshot")
#: conductance window of a level table: up to 500 µS (the GUI's range)
MAX_G_S = 500e-6


def _names(prefix: str) -> tuple[str, str, str, str]:
    """(targets, cells, verify, pulses) dataset/table names of a programming phase."""
    return tuple(f"{prefix}/{n}" for n in ("targets", "cells", "verify", "pulses"))


@dataclass
class ProgramConfig(Config):
    """A programming job: targets from `source` (a level pattern; "weights": a .npy of one
    conductance per cell in siemens; "snapshot": a run record's snapshots/after_programming,
    snapped to the nearest level) in `target_file`, on `pes` (() = all), `levels` levels from
    `g_min_s` to `g_max_s` (siemens), `seed` (random pattern) and `max_pulses` per cell."""

    source: str = param("levels32", choices=SOURCES)
    target_file: Optional[str] = None
    levels: int = param(32, lo=2, hi=MAX_LEVELS)
    g_min_s: float = param(2e-6, lo=0.0, hi=MAX_G_S)
    g_max_s: float = param(20e-6, lo=0.0, hi=MAX_G_S)
    pes: tuple[int, ...] = param((), lo=0, hi=MAX_PE - 1)
    seed: Optional[int] = param(None, lo=0, hi=MAX_SEED)
    max_pulses: int = param(WriteVerifyPolicy.max_pulses, lo=1, hi=MAX_PULSES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.g_min_s >= self.g_max_s:
            raise ConfigError(f"ProgramConfig: g_min_s {self.g_min_s!r} must be below g_max_s {self.g_max_s!r}")
        if (self.source in ("weights", "snapshot")) != (self.target_file is not None):
            raise ConfigError(f"ProgramConfig: source {self.source!r} "
                              + ("needs a target_file" if self.target_file is None else "takes no target_file"))

    def table(self) -> LevelTable:
        return LevelTable.linear(self.g_min_s, self.g_max_s, self.levels)

    def policy(self, limits=None) -> WriteVerifyPolicy:
        """The write-verify policy of this job; capped at a station's `limits` when given
        (hil.programming.policy_within)."""
        policy = WriteVerifyPolicy(max_pulses=self.max_pulses)
        return policy if limits is None else policy_within(limits, policy)[0]


@dataclass
class ProgramPlan:
    """Which cells get which targets: flat cell indices, level indices and targets (S)."""

    flat: np.ndarray
    level_index: np.ndarray
    targets_s: np.ndarray
    tolerance_s: float


def journal_program_steps(writer: RunWriter, flat: np.ndarray, prefix: str = PROGRAMMING,
                          earlier_pulses: Optional[np.ndarray] = None):
    """on_step callback that appends every verify read, pulse and finished cell to the run.
    `earlier_pulses` (per plan cell) are pulses a cut-off run already journaled for unfinished
    cells: a cell's `pulses` counts every pulse of the pulse table, across sessions."""
    _, CELLS, VERIFY, PULSES = _names(prefix)

    def on_step(step: ProgramStep) -> None:
        it = np.int64(step.iteration)
        if step.read_idx.size:
            writer.append(VERIFY, iteration=np.full(step.read_idx.size, it), cell=flat[step.read_idx],
                          g_s=step.read_g_s, time_s=np.full(step.read_idx.size, step.time_s))
        if step.pulse_idx.size:
            writer.append(PULSES, iteration=np.full(step.pulse_idx.size, it), cell=flat[step.pulse_idx],
                          op=step.pulse_op, v=step.pulse_v, v_gate=step.pulse_v_gate,
                          width_s=step.pulse_width_s, time_s=np.full(step.pulse_idx.size, step.time_s))
        if step.done_idx.size:
            pulses = step.done_pulses if earlier_pulses is None else step.done_pulses + earlier_pulses[step.done_idx]
            writer.append(CELLS, cell=flat[step.done_idx], final_g_s=step.done_g_s,
                          pulses=np.asarray(pulses, np.int64), status=step.done_status)
    return on_step


def start_program_run(writer: RunWriter, plan: ProgramPlan, policy: WriteVerifyPolicy,
                      prefix: str = PROGRAMMING, config: Optional[Config] = None) -> None:
    """Store the plan (with `config`, the job's settings, if given) and the policy."""
    extra = {} if config is None else {"stage_config": config.to_dict()}
    writer.put(_names(prefix)[0], np.stack([plan.flat.astype(float), plan.level_index.astype(float), plan.targets_s]),
               rows="cell, level_index, target_s", tolerance_s=plan.tolerance_s,
               levels_s=[float(v) for v in np.unique(plan.targets_s)], **extra)
    writer.set_attrs(prefix, policy=policy.to_dict(), tolerance_s=plan.tolerance_s, cells=int(plan.flat.size))


def plan_from_run(writer: RunWriter, prefix: str = PROGRAMMING) -> ProgramPlan:
    """The plan an interrupted run was following."""
    return plan_from_content(writer.content, prefix, where=str(writer.path))


def plan_from_content(content, prefix: str = PROGRAMMING, where: str = "the run record") -> ProgramPlan:
    """The programming plan stored in a run's content (see `hil.runstore.read_content`)."""
    TARGETS = _names(prefix)[0]
    if TARGETS not in content.datasets:
        raise DataError(f"{where} holds no programming targets; it is not a programming run")
    arr, attrs = content.datasets[TARGETS]
    return ProgramPlan(arr[0].astype(np.int64), arr[1].astype(np.int64), arr[2], float(attrs["tolerance_s"]))


def prior_from_run(writer: RunWriter, plan: ProgramPlan, prefix: str = PROGRAMMING) -> dict:
    """write_verify resume arguments from the cells an earlier run finished."""
    CELLS = _names(prefix)[1]
    n = plan.flat.size
    final = np.full(n, np.nan)
    pulses = np.zeros(n, np.int64)
    status = np.full(n, NOT_FINISHED, np.int64)
    table = writer.content.tables.get(CELLS)
    if table:
        idx = _positions(plan.flat, table["cell"])
        final[idx], pulses[idx], status[idx] = table["final_g_s"], table["pulses"], table["status"]
    return {"done_mask": status != NOT_FINISHED, "prior_final_s": final, "prior_pulses": pulses,
            "prior_status": status}


def earlier_pulses(writer: RunWriter, plan: ProgramPlan, done: np.ndarray, prefix: str = PROGRAMMING) -> np.ndarray:
    """Pulses already in the pulse table for each plan cell that is not finished (0 for finished)."""
    out = np.zeros(plan.flat.size, np.int64)
    order = np.argsort(plan.flat)
    for rows in writer.content.iter_table(_names(prefix)[3]):       # piece by piece: bounded memory
        pos = np.clip(np.searchsorted(plan.flat, rows["cell"], sorter=order), 0, plan.flat.size - 1)
        known = plan.flat[order[pos]] == rows["cell"]
        out += np.bincount(order[pos[known]], minlength=plan.flat.size)
    out[done] = 0
    return out


def _positions(flat: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Position in `flat` of each of `cells` (all of which are in `flat`)."""
    order = np.argsort(flat)
    return order[np.searchsorted(flat, cells, sorter=order)]


def program_job(xbar: Crossbar, writer: RunWriter, plan: ProgramPlan, policy: WriteVerifyPolicy, *,
                resume: bool = False, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None, prefix: str = PROGRAMMING,
                config: Optional[Config] = None) -> ProgramReport:
    """Write-verify `plan` on `xbar`, journaling every step into `writer` under `prefix`
    (several programming phases can share one run); snapshot before and after. A new run
    stores `config` (the job's settings) with the plan."""
    geom = xbar.geometry
    cells = Cells.from_flat(plan.flat, geom)
    prior = prior_from_run(writer, plan, prefix) if resume else {}
    extra = earlier_pulses(writer, plan, prior["done_mask"], prefix) if resume else None
    if not resume:
        start_program_run(writer, plan, policy, prefix, config)
        writer.put(f"snapshots/before_{prefix}", _snapshot(xbar), time_s=xbar.now())
    try:
        report = write_verify(xbar, cells, plan.targets_s, plan.tolerance_s, policy,
                              on_step=journal_program_steps(writer, plan.flat, prefix, extra),
                              progress=progress, cancel=cancel, **prior)
    except HilError as e:
        if extra is not None and getattr(e, "report", None) is not None:
            e.report.pulses += extra
        raise
    if extra is not None:
        report.pulses += extra
    writer.put(f"snapshots/after_{prefix}", _snapshot(xbar), time_s=xbar.now())
    writer.set_attrs(prefix, summary=report.summary())
    return report


def _snapshot(xbar: Crossbar) -> np.ndarray:
    """Read every cell of the chip (4 averaged reads), shaped (PE, rows, cols), in siemens."""
    g = xbar.geometry
    return xbar.read(Cells.all(g), n_avg=4).reshape(g.shape)


def program(xbar: Crossbar, writer: RunWriter, cfg: ProgramConfig, *, plan: Optional[ProgramPlan] = None,
            resume: bool = False, progress: Optional[ProgressCallback] = None,
            cancel: Optional[CancelToken] = None) -> ProgramReport:
    """The programming stage: a new record stores `cfg` and the plan (`plan`, else `plan_for`);
    a resumed one continues the plan it holds. The report's summary goes to the root attrs."""
    if resume:
        plan = plan_from_run(writer)
    elif plan is None:
        plan = plan_for(cfg, xbar.geometry)
    policy, capped = policy_within(xbar.limits, cfg.policy())
    if capped:
        log.warning("write-verify defaults capped at the station's limits: %s", "; ".join(capped))
    report = program_job(xbar, writer, plan, policy, resume=resume, progress=progress, cancel=cancel,
                         config=cfg)
    summary = report.summary()
    summary.update(out=str(writer.path), virtual_seconds=summary.pop("backend_seconds"))
    writer.set_attrs("/", summary=summary)
    return report


def stored_program_config(content, where: str = "the run record") -> ProgramConfig:
    """The ProgramConfig a programming run stored with its plan (DataError if it holds none)."""
    d = content.datasets.get(TARGETS, (None, {}))[1].get("stage_config")
    if d is None:
        raise DataError(f"{where} holds no programming job settings (stage_config of {TARGETS}); "
                        f"it was not made by a programming job")
    return ProgramConfig.from_dict(d, f"{where}: {TARGETS} stage_config")


def carry_programming(writer: RunWriter, content) -> None:
    """Copy the programming of another record (plan, config, every pulse and verify read, the
    snapshots around it, its summary) into `writer`: an experiment record holds the history of
    the cells it follows."""
    for group, attrs in content.attrs.items():
        if group == "/":
            if "summary" in attrs:
                writer.set_attrs("/", summary=attrs["summary"])
        elif group.lstrip("/").split("/")[0] == PROGRAMMING:
            writer.set_attrs(group, **attrs)
    for name in content.tables:
        if name.startswith(PROGRAMMING + "/"):
            for rows in content.iter_table(name):
                writer.append(name, **rows)
    for name, (arr, attrs) in content.datasets.items():
        if name.startswith(PROGRAMMING + "/") or (name.startswith("snapshots/") and name.endswith(PROGRAMMING)):
            writer.put(name, arr, **attrs)


def plan_for(cfg: ProgramConfig, geometry) -> ProgramPlan:
    """The plan of `cfg` on a chip of `geometry` (ConfigError / DataError say what is wrong)."""
    bad = [p for p in cfg.pes if p >= geometry.n_pe]
    if bad:
        raise ConfigError(f"PE {bad[0]} does not exist: this station has PEs 0..{geometry.n_pe - 1}")
    pes = list(cfg.pes) or list(range(geometry.n_pe))
    table = cfg.table()
    if cfg.source in PATTERNS:
        return level_plan(geometry, pes, table, cfg.source, cfg.seed)
    cells = Cells.all(geometry, pes)
    path = Path(cfg.target_file)
    if cfg.source == "weights":
        if not path.is_file():
            raise ConfigError(f"weights file {str(path)!r} does not exist; choose a .npy file of conductances")
        try:
            w = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DataError(f"{path} is not a readable .npy array ({e})") from None
        if w.size != len(cells):
            raise ConfigError(f"{path.name} holds {w.size} values but PEs {pes} have {len(cells)} cells; give one "
                              f"conductance (siemens) per cell, shaped ({len(pes)}, {geometry.rows}, {geometry.cols})")
        targets = validate_targets(w.astype(float).ravel(), table.g_window)
    else:
        with RunRecord.open(path) as rec:
            snap, _ = rec.dataset("snapshots/after_programming")
        if snap.shape != geometry.shape:
            raise ConfigError(f"snapshot in {path.name} has shape {snap.shape}, the station {geometry.shape}")
        lo, hi = table.g_window
        targets = table.targets(table.nearest_level(np.clip(snap[pes].ravel(), lo, hi)))
    return ProgramPlan(cells.flat(geometry), table.nearest_level(targets).astype(np.int64), targets,
                       table.tolerance_s)


def level_plan(geometry, pes, table: LevelTable, pattern: str = "levels32", seed: Optional[int] = None) -> ProgramPlan:
    """Plan for every cell of `pes` following a level pattern."""
    from hil.levels import make_pattern
    cells = Cells.all(geometry, pes)
    li, targets = make_pattern(pattern, len(cells), table, **({"seed": seed} if pattern == "random" else {}))
    return ProgramPlan(cells.flat(geometry), np.asarray(li, np.int64), np.asarray(targets, float), table.tolerance_s)
