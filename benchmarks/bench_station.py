"""Bus transactions and estimated probe-station time (virtual clock of the emulated world) to
write-verify cells three ways, all through the real drivers against the emulated instruments:

  host    hil's generic host loop; every verify read and every pulse is an SCPI exchange with a
          Keysight B2900 (the board only routes each cell to the SMU bus)
  script  the on-instrument Keithley 2600B write-verify script (TSP), one exchange per cell
  board   the array board's firmware job (PROGRAM_JOB), a few frames per 451 cells

Same chip parameters, seed and write-verify policy for all three (pulse width 50 µs, the shortest
the B2900 makes). Ways run on fewer cells are extrapolated linearly to --target cells. Prints
figures and ratios; asserts nothing.

    python benchmarks/bench_station.py [--cells 2048] [--host-cells 128] [--bus gpib]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.station import open_instrument_station          # noqa: E402
from hil.geometry import YAO, Cells                           # noqa: E402
from hil.levels import LevelTable, make_pattern               # noqa: E402
from hil.programming import WriteVerifyPolicy
from hil.ops.write_verify import write_verify       # noqa: E402
from hil.registry import load_station_file                    # noqa: E402
from hil.threads import configure_blas  # noqa: E402
from sim_backend.world import drop_world, get_world           # noqa: E402

STATION = """
[station]
backend = "instruments"
name = "bench {way}"

[geometry]
preset = "yao"

[instruments.board]
kind = "array-board"
port = "hilsim://{world}/board"

[instruments.k2602]
kind = "keithley2600"
resource = "GPIB0::26::INSTR"
visa_library = "station.toml@hilsim"
nplc = 0.1
min_pulse_s = 1e-8

[instruments.b2901]
kind = "keysight-b2900"
resource = "GPIB0::23::INSTR"
visa_library = "station.toml@hilsim"
nplc = 0.1

[channels]
board = "board"
bl = "{bl}"
sl = "{bl}"
gate = "{gate}"

[program]
path = "{program}"

[read]
path = "{read}"

[pulse]
path = "{pulse}"

[emulation]
world = "{world}"
seed = {seed}
geometry = "yao"

[emulation.instruments.k2602]
kind = "keithley2602b"
resource = "GPIB0::26::INSTR"
bus = "{bus}"
wiring = {{ smua = ["BL", "SL"], smub = ["WL"] }}

[emulation.instruments.b2901]
kind = "keysight_b2901a"
resource = "GPIB0::23::INSTR"
bus = "{bus}"
wiring = {{ "1" = ["BL", "SL"] }}
"""

WAYS = {
    "host": dict(bl="b2901", gate="board", program="host", read="smu", pulse="smu"),
    "script": dict(bl="k2602.a", gate="k2602.b", program="smu-script", read="board", pulse="board"),
    "board": dict(bl="k2602.a", gate="board", program="board-firmware", read="board", pulse="board"),
}
LABEL = {"host": "host loop over SCPI (B2900)", "script": "2600B on-instrument script",
         "board": "board firmware job"}


def run(way: str, n: int, bus: str, seed: int, policy: WriteVerifyPolicy, tmp: Path) -> dict:
    world_name = f"bench-station-{way}"
    drop_world(world_name)
    d = tmp / way
    d.mkdir()
    path = d / "station.toml"
    path.write_text(STATION.format(way=way, world=world_name, seed=seed, bus=bus, **WAYS[way]))
    table = LevelTable.linear()
    cells = Cells.from_flat(np.arange(n), YAO)
    _, targets = make_pattern("levels32", n, table)
    with open_instrument_station(load_station_file(path)) as xb:
        w = get_world(world_name)
        c0 = {k: dict(v) for k, v in w.counters.items()}
        t0, wall = w.now(), time.perf_counter()
        rep = write_verify(xb, cells, targets, table.tolerance_s, policy)
        wall = time.perf_counter() - wall
        dt = w.now() - t0
        tx = {k: int(v["transactions"] - c0.get(k, {}).get("transactions", 0)) for k, v in w.counters.items()}
        by = sum(int(v["bytes_in"] + v["bytes_out"] - c0.get(k, {}).get("bytes_in", 0)
                     - c0.get(k, {}).get("bytes_out", 0)) for k, v in w.counters.items())
    drop_world(world_name)
    s = rep.summary()
    return {"way": way, "cells": n, "in_band": s["in_band_fraction"], "mean_pulses": s["mean_pulses"],
            "transactions": sum(tx.values()), "by_instrument": {k: v for k, v in tx.items() if v},
            "bytes": by, "station_s": dt, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2048, help="cells for the script and board ways")
    ap.add_argument("--host-cells", type=int, default=128, help="cells for the (slow) host way, extrapolated")
    ap.add_argument("--target", type=int, default=2048, help="report figures for this many cells")
    ap.add_argument("--bus", default="gpib", choices=["gpib", "usb", "lan"], help="SMU bus latency model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args()
    configure_blas()
    policy = WriteVerifyPolicy(width_s=50e-6)
    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for way in ("host", "script", "board"):
            n = a.host_cells if way == "host" else a.cells
            res.append(run(way, n, a.bus, a.seed, policy, Path(tmp)))
    if a.json:
        print(json.dumps({"target_cells": a.target, "bus": a.bus, "runs": res}, default=float))
        return
    print(f"write-verify to 32 levels (2-20 µS), policy width {policy.width_s * 1e6:g} µs, SMUs on {a.bus}, "
          f"board on serial 921600 Bd; figures for {a.target} cells (linear extrapolation where fewer were run)")
    print(f"  {'way':30s} {'cells':>6s} {'in band':>8s} {'pulses':>7s} {'transactions':>13s} {'bytes':>11s} "
          f"{'station time':>13s} {'wall':>8s}")
    for r in res:
        k = a.target / r["cells"]
        r["tx_t"], r["s_t"] = r["transactions"] * k, r["station_s"] * k
        print(f"  {LABEL[r['way']]:30s} {r['cells']:6d} {r['in_band']:8.1%} {r['mean_pulses']:7.1f} "
              f"{r['tx_t']:13,.0f} {r['bytes'] * k:11,.0f} {_dur(r['s_t']):>13s} {r['wall_s']:7.2f}s"
              f"   ({', '.join(f'{i}: {v}' for i, v in r['by_instrument'].items())})")
    h, s, b = res
    print(f"  ratios (host : script : board) transactions {h['tx_t'] / b['tx_t']:,.0f} : "
          f"{s['tx_t'] / b['tx_t']:,.0f} : 1, station time {h['s_t'] / b['s_t']:,.0f} : {s['s_t'] / b['s_t']:,.0f} : 1; "
          f"host/script: transactions x{h['tx_t'] / s['tx_t']:.1f}, time x{h['s_t'] / s['s_t']:.1f}")


def _dur(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s"


if __name__ == "__main__":
    main()
