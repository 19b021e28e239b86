"""One sweep point, run on a dask worker: the simulated chip of the point's seed and device
parameters, a run record, the target's stage(s); returns one table row. A point that fails
(bad parameters, a stage's error) comes back as a row with status "failed" and the message."""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hil import __version__
from hil.geometry import Geometry
from hil.registry import open_station, resolve, sweep_target
from hil.runstore.lifecycle import run_record, station_snapshot
from hil.threads import configure_blas

log = logging.getLogger(__name__)

#: the columns every row has besides the axes and the figures
META = ("point_id", "seed", "status", "error", "wall_s", "worker", "version", "finished_utc")


@dataclass(frozen=True)
class PointTask:
    """Everything a worker needs for one point (picklable, no open objects)."""

    target: str
    point_id: str
    coords: dict
    seed: int
    config: dict
    device: dict
    preset: str
    geometry: Optional[dict] = None          # Geometry.to_dict(); None: the target's
    record_path: Optional[str] = None        # keep the run record here (a folder the worker can write)
    programming_model: Optional[str] = None  # fitted statistical programming model (file), or None


def _worker_name() -> str:
    try:
        from distributed import get_worker
        w = get_worker()
        return str(w.name if w.name is not None else w.address)
    except (ImportError, ValueError):
        return "local"


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def run_point(task: PointTask, shared=None) -> dict:
    """Run `task` and return its row: coordinates, seed, the figures, status and error, wall
    time, worker and software version. `shared` is the target's prepared work (or
    {"error": message} when preparing it failed)."""
    configure_blas()
    t0 = time.perf_counter()
    row = {"point_id": task.point_id, "seed": task.seed, **task.coords}
    try:
        if isinstance(shared, dict) and "error" in shared:
            raise RuntimeError(f"shared preparation failed: {shared['error']}")
        figures = _run(task, shared)
        row.update({k: _plain(v) for k, v in figures.items()}, status="ok", error="")
    except Exception as e:                      # the sweep goes on; the row says why
        log.info("sweep point %s failed: %s", task.point_id, e)
        row.update(status="failed", error=_one_line(e))
    row.update(wall_s=time.perf_counter() - t0, worker=_worker_name(), version=__version__,
               finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return row


def _run(task: PointTask, shared) -> dict:
    target = sweep_target(task.target)
    cfg = target.config.from_dict(task.config, "config")
    geometry = Geometry(**task.geometry) if task.geometry else target.geometry
    params = resolve("sim-params").from_dict({"preset": task.preset, **task.device})
    with tempfile.TemporaryDirectory(prefix="hil-sweep-") as tmp:
        params_path = params.save(Path(tmp) / "params.json")
        options = {"seed": task.seed, "params_path": params_path, "geometry": geometry}
        if task.programming_model is not None:
            options["programming_model"] = task.programming_model
        record = Path(task.record_path) if task.record_path else Path(tmp) / "point.h5"
        with open_station("sim", **options) as xbar:
            snap = station_snapshot(xbar, client="sweep", spec="sim", seed=task.seed, argv=[],
                                    label=f"{task.target} {json.dumps(task.coords, sort_keys=True)}")
            with run_record(record, target.kind, station=snap,
                            meta={"sweep_point": task.point_id, "coords": task.coords}) as writer:
                return target.run(xbar, writer, cfg, shared)
