"""Run a sweep on dask.distributed: one task per point, results streamed into the sweep
folder's table as they complete.

A `LocalCluster` on this machine's cores by default (one single-threaded worker process per
core), an existing cluster with `scheduler="tcp://HOST:PORT"`. Points already in the table are
skipped (resume). A worker that dies mid-task: the scheduler runs its task again elsewhere, and
the table is keyed by point, so nothing is lost or counted twice. Work points share (a target's
`prepare`, e.g. the Yao software-trained model per training seed) is one task per key whose
result is cached in the folder's `cache/` and passed to the points that need it."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from hil.errors import Cancelled, ConfigError
from hil.progress import CancelToken, Progress
from hil.registry import sweep_target
from hil.sweep.point import PointTask, run_point
from hil.sweep.spec import SweepSpec
from hil.sweep.statistical import programming_model
from hil.sweep.table import SweepTable

log = logging.getLogger(__name__)

CACHE = "cache"
RECORDS = "records"


@dataclass
class SweepOutcome:
    """What a run did: points in the spec, skipped (already in the table), finished ok, failed
    (recorded with their message) and lost (no result: run the sweep again to retry them)."""

    out: Path
    points: int
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    lost: list = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    def to_dict(self) -> dict:
        return {"out": str(self.out), "points": self.points, "skipped": self.skipped, "ok": self.ok,
                "failed": self.failed, "lost": len(self.lost), "seconds": self.seconds, "workers": self.workers}


@contextmanager
def dask_client(scheduler: Optional[str] = None, workers: Optional[int] = None):
    """A dask Client of the cluster at `scheduler`, else of a LocalCluster of `workers`
    single-threaded worker processes (default: this machine's cores)."""
    from distributed import Client, LocalCluster
    if scheduler is not None:
        if workers is not None:
            raise ConfigError("--workers starts a local cluster; with --scheduler the cluster's workers are used")
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise ConfigError(f"cannot reach the dask scheduler at {scheduler} ({e})") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def _key(target: str, shared_cfg: dict) -> str:
    return hashlib.sha1(json.dumps({"target": target, "key": shared_cfg}, sort_keys=True).encode()).hexdigest()[:16]


def run_prepare(target_name: str, config: dict):
    """A target's shared work on a worker: (arrays, attrs), or {"error": message}."""
    from hil.sweep.point import _one_line
    from hil.threads import configure_blas
    configure_blas()
    target = sweep_target(target_name)
    try:
        return target.prepare(target.config.from_dict(config, "config"))
    except Exception as e:
        return {"error": _one_line(e)}


def _save_shared(path: Path, shared) -> None:
    arrays, attrs = shared
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __attrs__=np.array(json.dumps(attrs)), **arrays)
    os.replace(tmp, path)


def _load_shared(path: Path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__attrs__"}, json.loads(str(z["__attrs__"]))


def run_sweep(spec: SweepSpec, out, *, scheduler: Optional[str] = None, workers: Optional[int] = None,
              keep_records: bool = False, on_point: Optional[Callable[[Progress, dict], None]] = None,
              cancel: Optional[CancelToken] = None) -> SweepOutcome:
    """Run every point of `spec` not yet in the table of folder `out`; `on_point(progress, row)`
    after each. With `programming = "statistical"` the programming model is fitted first (once:
    it is cached in the folder) and every point's chip opens with it. Ends by consolidating the table."""
    from distributed import as_completed
    t0 = time.perf_counter()
    out = Path(out)
    table = SweepTable(out)
    table.claim(spec.to_dict())
    target = sweep_target(spec.target)
    points = spec.points()
    done = table.point_ids()
    todo = [p for p in points if p.id not in done]
    outcome = SweepOutcome(out, len(points), skipped=len(points) - len(todo))
    if not todo:
        table.consolidate()
        return outcome
    model = programming_model(spec, out) if spec.programming == "statistical" else None
    preset = spec.preset or target.preset
    geometry = None if spec.geometry is None else spec.geometry.to_dict()
    if keep_records:
        (out / RECORDS).mkdir(exist_ok=True)
    tasks = []
    for p in todo:
        cfg, dev = spec.settings(p.coords)
        rec = str((out / RECORDS / f"{p.id}.h5").resolve()) if keep_records else None
        tasks.append(PointTask(spec.target, p.id, p.coords, p.seed, cfg, dev, preset, geometry, rec,
                               model))
    with dask_client(scheduler, workers) as client:
        outcome.workers = len(client.scheduler_info(n_workers=-1)["workers"])
        run = uuid.uuid4().hex[:8]
        shared, prepares = {}, {}
        if target.prepare is not None:
            (out / CACHE).mkdir(exist_ok=True)
            for t in tasks:
                cfg = target.config.from_dict(t.config, "config")
                k = _key(spec.target, target.prepare_key(cfg))
                if k in shared:
                    continue
                path = out / CACHE / f"{k}.npz"
                if path.is_file():
                    shared[k] = client.scatter([_load_shared(path)])[0]
                else:
                    shared[k] = client.submit(run_prepare, spec.target, t.config, key=f"prepare-{k}-{run}",
                                              pure=False)
                    prepares[shared[k].key] = path
        futures = []
        for t in tasks:
            dep = None
            if target.prepare is not None:
                dep = shared[_key(spec.target, target.prepare_key(target.config.from_dict(t.config, "config")))]
            futures.append(client.submit(run_point, t, dep, key=f"point-{t.point_id}-{run}", pure=False))
        by_key = {f.key: t for f, t in zip(futures, tasks)}
        pending = as_completed(futures + [shared[k] for k in shared if shared[k].key in prepares])
        n = 0
        try:
            for fut in pending:
                if cancel is not None and cancel.cancelled:
                    raise Cancelled(cancel.reason)
                if fut.key in prepares:
                    res = fut.result() if fut.status == "finished" else {"error": str(fut.exception())}
                    if not (isinstance(res, dict) and "error" in res):
                        _save_shared(prepares[fut.key], res)
                    continue
                task = by_key[fut.key]
                if fut.status != "finished":
                    log.warning("sweep point %s lost: %s", task.point_id, fut.exception())
                    outcome.lost.append(task.point_id)
                    continue
                row = fut.result()
                table.add(row)
                n += 1
                outcome.ok += row["status"] == "ok"
                outcome.failed += row["status"] != "ok"
                if on_point is not None:
                    on_point(Progress(n, len(tasks), f"{row['status']} {task.point_id}", "point"), row)
        finally:
            client.cancel(futures)
            table.consolidate()
    outcome.seconds = time.perf_counter() - t0
    return outcome
