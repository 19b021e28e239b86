"""Write-verify of 2,048 cells through the array board, two ways, against the emulated board:

  host   - hil.ops.write_verify.write_verify_host on the host, one READ_CELLS / PULSE command per step
  job    - the board's firmware PROGRAM_JOB (same algorithm, on the board)

Prints bus transactions, bytes, estimated probe-station time (virtual clock: serial-bus latency
and transfer + firmware + device timing) and wall time, and the ratios host/job.

    python benchmarks/bench_board.py [--cells 2048] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import sim_backend.urlhandler  # noqa: E402,F401  (registers hilsim://)
from drivers.board import ArrayBoard  # noqa: E402
from hil.crossbar import Crossbar  # noqa: E402
from hil.geometry import YAO, Cells  # noqa: E402
from hil.limits import SafetyLimits  # noqa: E402
from hil.programming import WriteVerifyPolicy
from hil.threads import configure_blas  # noqa: E402
from hil.ops.write_verify import write_verify_host  # noqa: E402
from sim_backend.world import EmulatedWorld, drop_world, register_world  # noqa: E402


class _BoardLoop(Crossbar):
    """Just enough of a crossbar to run the host-side loop over board commands."""

    def __init__(self, board: ArrayBoard, world: EmulatedWorld) -> None:
        self.board, self.world = board, world
        self.geometry, self.limits = YAO, SafetyLimits()

    def _read(self, cells, v_read, n_avg):
        return self.board.read_cells(cells, v_read=v_read, n_avg=n_avg)

    def _pulse(self, cells, op, v, v_gate, width):
        self.board.pulse(cells, op, v, v_gate, width)

    def _vmm(self, *a):
        raise NotImplementedError

    def now(self) -> float:
        return self.world.now()


def run(way: str, n: int, seed: int) -> dict:
    world = register_world(EmulatedWorld(YAO, seed=seed, name=f"bench-board-{way}"))
    try:
        cells = Cells.from_flat(np.arange(n), YAO)
        rng = np.random.default_rng(seed)
        targets = rng.choice(np.linspace(2e-6, 20e-6, 32), n)
        policy = WriteVerifyPolicy()
        tol = 0.5e-6 * policy.verify_margin
        with ArrayBoard(f"hilsim://{world.name}/board", expected_geometry=YAO) as board:
            c0, t0, w0 = dict(world.counters["board"]), world.now(), time.perf_counter()
            if way == "job":
                rep = board.program_job(cells, targets, targets - tol, targets + tol, policy)
            else:
                rep = write_verify_host(_BoardLoop(board, world), cells, targets, targets - tol, targets + tol, policy)
            c = world.counters["board"]
            return {"transactions": c["transactions"] - c0["transactions"],
                    "bytes": c["bytes_in"] + c["bytes_out"] - c0["bytes_in"] - c0["bytes_out"],
                    "station_s": world.now() - t0, "wall_s": time.perf_counter() - w0,
                    "in_band": float(rep.in_band.mean()), "mean_pulses": float(rep.pulses.mean())}
    finally:
        drop_world(world.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args()
    configure_blas()
    res = {way: run(way, a.cells, a.seed) for way in ("host", "job")}
    if a.json:
        print(json.dumps({"cells": a.cells, **res}, default=float))
        return
    print(f"write-verify of {a.cells} cells through the array board (serial bus, emulated)")
    print(f"{'way':6s} {'transactions':>12s} {'bytes':>10s} {'station s':>10s} {'wall s':>8s} {'in band':>8s} {'pulses/cell':>11s}")
    for way, r in res.items():
        print(f"{way:6s} {r['transactions']:12d} {r['bytes']:10d} {r['station_s']:10.3f} {r['wall_s']:8.2f} "
              f"{100 * r['in_band']:7.1f}% {r['mean_pulses']:11.1f}")
    h, j = res["host"], res["job"]
    print(f"ratio host/job: transactions {h['transactions'] / j['transactions']:.1f}x, "
          f"station time {h['station_s'] / j['station_s']:.1f}x, bytes {h['bytes'] / j['bytes']:.2f}x")


if __name__ == "__main__":
    main()
