"""The lab-module contract: a small base class every module (built-in or plugin) derives from.

A module is a name, a title and a description, a typed config (`config_type`, a hil.config
Config), a limits check that needs no hardware (`check`) and `execute`, the experiment itself.
`run_module` is the stage the CLI, the GUI, the sequencer and the sweep engine all call: it
checks the config and the cells against the station limits before anything is applied, records
the config (`<group>` attrs `module`, `stage_config`) and the cells, runs `execute`, and records
the result arrays (`<group>/result/<name>`) and the summary (`<group>` attr `summary`).

While it runs a module streams its measurements through `ModuleContext.emit`: each call appends
rows to the record table `<group>/<series>` (journaled, so a crash keeps every point) and reports
a `ModuleProgress` carrying the same rows in `data`, which a live plot appends to its curves.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Optional

import numpy as np

from hil.config import Config
from hil.crossbar import Crossbar
from hil.errors import AddressError, BackendError, ConfigError
from hil.geometry import Cells, Geometry
from hil.limits import SafetyLimits
from hil.modules.stability import wait_real
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.runstore import RunWriter

__all__ = ["LabModule", "ModuleContext", "ModuleProgress", "ModuleResult", "run_module", "parse_cells"]


@dataclass(frozen=True)
class ModuleProgress(Progress):
    """A progress report with the rows just measured: `series` names the record table they were
    appended to, `data` maps each column to a 1-D array (e.g. pulse, cell, v, g_s)."""

    series: str = ""
    data: Mapping[str, np.ndarray] = field(default_factory=dict)


class ModuleResult:
    """Base of a module's typed result: `to_dict()` a JSON-able summary, `arrays()` the data
    (name -> numpy array) that `run_module` stores under `<group>/result/`."""

    def to_dict(self) -> dict:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError


class ModuleContext:
    """What `LabModule.execute` works with: the crossbar, the checked cells and config, the record
    group, and helpers that stream rows (`emit`), read, wait on the station clock and cancel."""

    def __init__(self, xbar: Crossbar, writer: RunWriter, group: str, cfg: Config, cells: Cells, *,
                 progress: ProgressCallback, cancel: CancelToken, unit: str) -> None:
        self.xbar, self.writer, self.group, self.cfg, self.cells = xbar, writer, group, cfg, cells
        self.flat = cells.flat(xbar.geometry)
        self.progress, self.cancel, self.unit = progress, cancel, unit
        self.virtual_clock = xbar.has("advance")
        self._t0_backend, self._t0_wall = float(xbar.now()), time.monotonic()

    def check(self) -> None:
        """Raise Cancelled if the run was aborted."""
        self.cancel.raise_if_cancelled()

    def elapsed_s(self) -> float:
        """Seconds since the module started: the virtual clock on a simulator, else wall time."""
        if self.virtual_clock:
            return float(self.xbar.now()) - self._t0_backend
        return time.monotonic() - self._t0_wall

    def wait(self, seconds: float) -> None:
        """Let `seconds` pass: `advance` on a virtual clock, else a wait the cancel token ends."""
        if seconds <= 0:
            return
        if self.virtual_clock:
            self.check()
            self.xbar.advance(seconds)
        else:
            wait_real(seconds, self.cancel)

    def read(self, n_avg: int = 1, v_read: Optional[float] = None, cells: Optional[Cells] = None) -> np.ndarray:
        """Conductance (S) of the module's cells (or `cells`), one value per cell."""
        cells = self.cells if cells is None else cells
        g = np.asarray(self.xbar.read(cells, v_read=v_read, n_avg=n_avg), dtype=float).ravel()
        if g.size != len(cells):
            raise BackendError(f"{type(self.xbar).__name__}.read returned {g.size} values for {len(cells)} cells")
        return g

    def emit(self, done: float, total: float, message: str, series: str = "", **columns) -> None:
        """Append `columns` (equal-length 1-D arrays; scalars are repeated) as rows of the record
        table `<group>/<series>` and report progress carrying them; without `series`, progress only."""
        data = {}
        if series:
            n = max((np.size(v) for v in columns.values()), default=0)
            data = {k: (np.full(n, v) if np.ndim(v) == 0 else np.asarray(v)).ravel() for k, v in columns.items()}
            self.writer.append(f"{self.group}/{series}", **data)
        self.progress(ModuleProgress(done, total, message, unit=self.unit, series=series, data=data))


class LabModule:
    """Base class of lab modules. Subclasses set the class attributes and implement `execute`
    (and usually `check` and `plot`); they are found through the entry-point group
    `memristor_hil.modules` (hil.modules.plugins)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_type: ClassVar[type[Config]] = Config
    #: unit of the progress reports (steps, cycles, points ...)
    unit: ClassVar[str] = "steps"

    def config(self, values: Optional[Mapping] = None, where: str = "") -> Config:
        """The module's config from a table of settings (defaults for the rest); ConfigError naming
        the module and the bad key or value."""
        return self.config_type.from_dict(dict(values or {}), where or f"module {self.name}")

    def check(self, limits: SafetyLimits, geometry: Geometry, cfg: Config) -> None:
        """Every level the run would apply against `limits` (SafetyViolation / ConfigError), with
        no hardware; the base accepts everything (a module that applies only reads)."""

    def execute(self, ctx: ModuleContext) -> ModuleResult:
        """Run the experiment on `ctx.cells`, streaming rows through `ctx.emit`."""
        raise NotImplementedError

    def plot(self, result: ModuleResult, path: Path) -> list[Path]:
        """PNG figures of `result` written at `path` (a file stem); none by default."""
        return []


def run_module(module: LabModule, xbar: Crossbar, writer: RunWriter, cfg: Config, cells: Cells, *,
               group: Optional[str] = None, progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None) -> ModuleResult:
    """The stage of every lab module: check, record the config and cells under `group` (default
    `modules/<name>`), execute, record the result arrays and summary; returns the typed result."""
    cancel, progress = ensure(cancel, progress)
    if not isinstance(cfg, module.config_type):
        raise ConfigError(f"module {module.name} takes a {module.config_type.__name__}, got {type(cfg).__name__}")
    if not isinstance(cells, Cells) or len(cells) == 0:
        raise ConfigError(f"module {module.name}: select at least one cell")
    cells = cells.validate(xbar.geometry)
    if np.unique(cells.flat(xbar.geometry)).size != len(cells):
        raise AddressError(f"module {module.name}: a cell appears twice in the selection")
    module.check(xbar.limits, xbar.geometry, cfg)
    group = group or f"modules/{module.name}"
    writer.set_attrs(group, module=module.name, stage_config=cfg.to_dict())
    writer.put(f"{group}/cells", cells.flat(xbar.geometry))
    cancel.raise_if_cancelled()
    ctx = ModuleContext(xbar, writer, group, cfg, cells, progress=progress, cancel=cancel, unit=module.unit)
    res = module.execute(ctx)
    for name, arr in res.arrays().items():
        writer.put(f"{group}/result/{name}", np.asarray(arr))
    writer.set_attrs(group, summary=res.to_dict())
    return res


# ---- cell selections as text ----------------------------------------------------------------
_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def _indices(text: str, n: int, what: str, spec: str) -> np.ndarray:
    text = text.strip()
    if text in ("*", ""):
        return np.arange(n)
    out = []
    for part in text.split(","):
        m = _PART.match(part)
        if not m:
            raise ConfigError(f"cells {spec!r}: {what} {part.strip()!r} is not a number or a range a-b")
        a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if b < a or b >= n:
            raise ConfigError(f"cells {spec!r}: {what} {part.strip()} is outside 0..{n - 1}")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ConfigError(f"cells {spec!r}: a {what} repeats")
    return np.asarray(out, dtype=np.int64)


def parse_cells(spec: str, geometry: Geometry) -> Cells:
    """Cells from 'PE:ROWS:COLS', each part a number, a range a-b, a comma list or '*' (all);
    several blocks joined by ';'. Example: '0:0-3:0-1' (8 cells of PE 0). ConfigError otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("cells must be text like '0:0-3:0-1' (PE:rows:cols)")
    blocks = []
    for block in spec.split(";"):
        parts = block.split(":")
        if len(parts) != 3:
            raise ConfigError(f"cells {spec!r}: each block is PE:rows:cols, got {block.strip()!r}")
        for pe in _indices(parts[0], geometry.n_pe, "PE", spec):
            blocks.append(Cells.block(int(pe), _indices(parts[1], geometry.rows, "row", spec),
                                      _indices(parts[2], geometry.cols, "column", spec)))
    flat = np.concatenate([b.flat(geometry) for b in blocks])
    if np.unique(flat).size != flat.size:
        raise ConfigError(f"cells {spec!r}: blocks overlap")
    return Cells.from_flat(flat, geometry)

