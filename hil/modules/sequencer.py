"""Sequencer: lab modules, write-verify programming, loops and delays chained in a TOML file.

A sequence file::

    [sequence]
    name = "form-program"
    cells = "0:0-3:0-3"            # default selection of every step (PE:rows:cols)

    [[steps]]
    module = "forming"             # a lab module (hil module list) ...
    [steps.config]                 # ... with its settings (defaults for the rest)
    v_stop = 4.0

    [[steps]]
    program = { levels = 8 }       # write-verify the cells (hil.ops.jobs ProgramConfig settings)

    [[steps]]
    delay_s = 3600                 # let time pass: the virtual clock on a simulator

    [[steps]]
    repeat = 3                     # a loop over its own steps
    [[steps.steps]]
    module = "retention"

Every step may set `cells` and `label`. `load_sequence` checks the whole file (keys, module
names, configs, cells, every level against the station limits) before anything runs.
`run_sequence` is the stage: one record holds each step under `sequence/steps/NNNN` (the
step's attrs, its module's series, result and summary, or its programming journal); a step
that finished is marked `done`, so a run cut off at any point resumes after the last done step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from hil.config import Config
from hil.crossbar import Crossbar, check_policy
from hil.errors import ConfigError, DataError
from hil.geometry import Cells, Geometry
from hil.limits import SafetyLimits
from hil.modules.base import LabModule, parse_cells, run_module
from hil.modules.plugins import get_module
from hil.modules.stability import DAY, MAX_DRIFT_DAYS, format_duration, wait_real
from hil.ops.jobs import ProgramConfig, ProgramPlan, plan_for, program_job
from hil.progress import Bars, CancelToken, Progress, no_bars
from hil.runstore import RunContent, RunWriter
from hil.runstore.lifecycle import resumable_content
from hil.schema import load_toml

GROUP = "sequence"
MAX_REPEAT = 10_000
MAX_DEPTH = 4
MAX_STEPS = 100_000
STEP_KEYS = {"module", "program", "delay_s", "repeat"}


@dataclass
class Step:
    """One executable step: `kind` module / program / delay, its label, cells and config."""

    kind: str
    label: str
    cells: Optional[Cells] = None
    config: Optional[Config] = None
    module: Optional[LabModule] = None
    delay_s: float = 0.0

    def describe(self) -> dict:
        d = {"type": self.kind, "label": self.label}
        if self.config is not None:
            d["config"] = self.config.to_dict()
        if self.kind == "delay":
            d["delay_s"] = self.delay_s
        if self.cells is not None:
            d["cells"] = int(len(self.cells))
        return d


@dataclass
class Sequence:
    """A checked sequence: its name and the steps in execution order (loops unrolled)."""

    name: str
    steps: list
    source: dict = field(default_factory=dict)


def _where(path: list) -> str:
    return "".join(f"steps[{i}]" if isinstance(i, int) else f".{i}" for i in path).lstrip(".")


def _table(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"{where} must be a table of settings, got {type(v).__name__}")
    return v


def _cells(spec, default: Optional[str], geometry: Geometry, where: str) -> Cells:
    spec = default if spec is None else spec
    if spec is None:
        raise ConfigError(f"{where}: no cells; set cells = \"PE:rows:cols\" in [sequence] or in the step")
    try:
        return parse_cells(spec, geometry)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _program_plan(cfg: ProgramConfig, cells: Cells, geometry: Geometry, where: str) -> ProgramPlan:
    """The write-verify plan of `cfg` restricted to `cells` (on the PEs they are on)."""
    pes = tuple(sorted(set(int(p) for p in cells.pe)))
    if cfg.pes and not set(pes) <= set(cfg.pes):
        raise ConfigError(f"{where}: the cells are on PE(s) {pes}, outside program.pes {cfg.pes}")
    full = plan_for(cfg.replace(pes=pes), geometry)
    keep = np.isin(full.flat, cells.flat(geometry))
    return ProgramPlan(full.flat[keep], full.level_index[keep], full.targets_s[keep], full.tolerance_s)


def _steps(items: Any, path: list, default_cells: Optional[str], geometry: Geometry, limits: SafetyLimits,
           depth: int, v_read: float) -> list:
    where = _where(path) or "steps"
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: give a non-empty list of steps ([[steps]] tables)")
    out = []
    for i, item in enumerate(items):
        p = path + [i]
        w = _where(p)
        item = _table(item, w)
        kinds = sorted(STEP_KEYS & set(item))
        if len(kinds) != 1:
            raise ConfigError(f"{w}: a step has exactly one of {', '.join(sorted(STEP_KEYS))}, got "
                              f"{', '.join(kinds) or 'none'}")
        kind = kinds[0]
        allowed = {kind, "label", "cells"} | ({"config"} if kind == "module" else set()) | (
            {"steps"} if kind == "repeat" else set())
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ConfigError(f"{w}: unknown key(s) {', '.join(unknown)} for a {kind} step; known: "
                              f"{', '.join(sorted(allowed))}")
        label = item.get("label")
        if label is not None and not isinstance(label, str):
            raise ConfigError(f"{w}.label must be text")
        cells_spec = item.get("cells", default_cells)
        if kind == "repeat":
            n = item["repeat"]
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REPEAT:
                raise ConfigError(f"{w}.repeat must be a whole number in 1..{MAX_REPEAT}, got {n!r}")
            if depth >= MAX_DEPTH:
                raise ConfigError(f"{w}: loops nest deeper than {MAX_DEPTH} levels")
            inner = _steps(item.get("steps"), p + ["steps"], cells_spec, geometry, limits, depth + 1, v_read)
            if len(out) + n * len(inner) > MAX_STEPS:
                raise ConfigError(f"{w}: the sequence unrolls to more than {MAX_STEPS} steps")
            for r in range(n):
                out.extend(Step(s.kind, f"{s.label} [{r + 1}/{n}]", s.cells, s.config, s.module, s.delay_s)
                           for s in inner)
        elif kind == "delay_s":
            d = item["delay_s"]
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) \
                    or not 0 <= d <= MAX_DRIFT_DAYS * DAY:
                raise ConfigError(f"{w}.delay_s must be a number of seconds in 0..{MAX_DRIFT_DAYS * DAY:g}, got {d!r}")
            out.append(Step("delay", label or f"wait {format_duration(d)}", delay_s=float(d)))
        elif kind == "program":
            cfg = ProgramConfig.from_dict(_table(item["program"], f"{w}.program"), f"{w}.program")
            cells = _cells(cells_spec, None, geometry, w)
            plan = _program_plan(cfg, cells, geometry, w)
            if plan.flat.size == 0:
                raise ConfigError(f"{w}: none of the cells is in the programming plan")
            check_policy(limits, cfg.policy(), v_read, where=f"{w}: ")
            out.append(Step("program", label or f"program {plan.flat.size} cells", cells, cfg))
        else:
            name = item["module"]
            if not isinstance(name, str):
                raise ConfigError(f"{w}.module must be a module name")
            module = get_module(name)
            cfg = module.config(_table(item.get("config", {}), f"{w}.config"), f"{w}.config")
            cells = _cells(cells_spec, None, geometry, w)
            module.check(limits, geometry, cfg)
            out.append(Step("module", label or name, cells, cfg, module))
    if len(out) > MAX_STEPS:
        raise ConfigError(f"{where}: the sequence unrolls to more than {MAX_STEPS} steps")
    return out


def load_sequence(source, geometry: Geometry, limits: SafetyLimits, v_read: float = 0.2) -> Sequence:
    """Read (a path) or take (a parsed dict) a sequence and check all of it for `geometry` and
    `limits`; ConfigError / SafetyViolation name the step and key."""
    doc = load_toml(source, "sequence file") if isinstance(source, (str, Path)) else source
    doc = _table(doc, "sequence file")
    unknown = sorted(set(doc) - {"sequence", "steps"})
    if unknown:
        raise ConfigError(f"sequence file: unknown table(s) {', '.join(unknown)}; use [sequence] and [[steps]]")
    head = _table(doc.get("sequence", {}), "[sequence]")
    bad = sorted(set(head) - {"name", "cells", "description"})
    if bad:
        raise ConfigError(f"[sequence]: unknown key(s) {', '.join(bad)}; known: cells, description, name")
    for key in ("name", "cells", "description"):
        if key in head and not isinstance(head[key], str):
            raise ConfigError(f"[sequence].{key} must be text")
    steps = _steps(doc.get("steps"), [], head.get("cells"), geometry, limits, 0, v_read)
    return Sequence(head.get("name", "sequence"), steps, doc)


def done_steps(content: RunContent) -> set:
    """Indices of the steps a (resumed) record's content holds as finished."""
    prefix = f"/{GROUP}/steps/"
    return {int(g[len(prefix):]) for g, a in content.attrs.items()
            if g.startswith(prefix) and g[len(prefix):].isdigit() and a.get("done")}


def stored_sequence(path) -> tuple[dict, set]:
    """The sequence (as parsed from its file) that the cut-off sequence record at `path` was
    running, and the indices of its steps done; DataError (one line) when there is nothing to
    resume. Pass the first to `load_sequence`, then resume the record (`run_record(...,
    resume=True)`) and `run_sequence` runs the rest."""
    content = resumable_content(path, "sequence", "sequence record")
    source = content.attrs.get(f"/{GROUP}", {}).get("source")
    if not isinstance(source, dict):
        raise DataError(f"{path} holds no sequence (it was cut off before its first step)")
    return source, done_steps(content)


def run_sequence(xbar: Crossbar, writer: RunWriter, seq: Sequence, *, bars: Bars = no_bars,
                 cancel: Optional[CancelToken] = None) -> list:
    """The sequencer stage: run every step not yet done in `writer`, each into
    `sequence/steps/NNNN`; returns the summaries of the steps run now (a dict per step). A step
    cut off midway runs again from its start, into `sequence/steps/NNNN-retryK`."""
    cancel = cancel or CancelToken()
    writer.set_attrs(GROUP, name=seq.name, steps=[s.describe() for s in seq.steps], source=seq.source)
    done = done_steps(writer.content)
    out = []
    for k, step in enumerate(seq.steps):
        if k in done:
            continue
        cancel.raise_if_cancelled()
        group = _free_group(writer, f"{GROUP}/steps/{k:04d}")
        writer.set_attrs(group, step=k, **step.describe())
        desc = f"step {k + 1}/{len(seq.steps)}: {step.label}"
        summary = _run_step(xbar, writer, step, group, bars(desc, "steps"), cancel)
        done_group = f"{GROUP}/steps/{k:04d}"
        if group != done_group:
            writer.set_attrs(done_group, retried_in=group)
        writer.set_attrs(done_group, done=True, summary=summary, time_s=float(xbar.now()))
        out.append({"step": k, "label": step.label, **summary})
    writer.set_attrs(GROUP, steps_done=len(seq.steps))
    return out


def _free_group(writer: RunWriter, group: str) -> str:
    taken = {g.lstrip("/") for g in writer.content.attrs}
    if group not in taken:
        return group
    n = 1
    while f"{group}-retry{n}" in taken:
        n += 1
    return f"{group}-retry{n}"


def _run_step(xbar: Crossbar, writer: RunWriter, step: Step, group: str, progress, cancel: CancelToken) -> dict:
    if step.kind == "module":
        return run_module(step.module, xbar, writer, step.config, step.cells, group=group, progress=progress,
                          cancel=cancel).to_dict()
    if step.kind == "program":
        plan = _program_plan(step.config, step.cells, xbar.geometry, step.label)
        report = program_job(xbar, writer, plan, step.config.policy(), progress=progress, cancel=cancel,
                             prefix=f"{group}/programming", config=step.config)
        return report.summary()
    t0 = xbar.now()
    if xbar.has("advance"):
        xbar.advance(step.delay_s)
    else:
        wait_real(step.delay_s, cancel)
    progress(Progress(1, 1, step.label, unit="steps"))
    return {"type": "delay", "delay_s": step.delay_s, "elapsed_s": float(xbar.now() - t0)}
