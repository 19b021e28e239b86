"""Benchmark: write-verify all 16,384 cells of the simulated Yao chip to the levels32 pattern
(32 levels, 2-20 µS). Prints the median wall time of several runs and pulses/cell statistics.

    python benchmarks/bench_program.py [--runs 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from hil.geometry import Cells  # noqa: E402
from hil.levels import LevelTable, make_pattern  # noqa: E402
from hil.ops.write_verify import write_verify  # noqa: E402
from hil.threads import configure_blas  # noqa: E402
from sim_backend.chip import SimulatedCrossbar  # noqa: E402


def one_run(seed: int) -> dict:
    xbar = SimulatedCrossbar(seed=seed)
    cells = Cells.all(xbar.geometry)
    table = LevelTable.linear()
    _, targets = make_pattern("levels32", len(cells), table)
    t0 = time.perf_counter()
    rep = write_verify(xbar, cells, targets, table.tolerance_s)
    wall = time.perf_counter() - t0
    s = rep.summary()
    return {"wall_s": wall, "virtual_s": s["backend_seconds"], "in_band_fraction": s["in_band_fraction"],
            "mean_pulses": s["mean_pulses"], "median_pulses": s["median_pulses"],
            "p95_pulses": float(np.percentile(rep.pulses, 95)), "max_pulses": s["max_pulses"],
            "iterations": s["iterations"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    configure_blas()
    runs = [one_run(a.seed + i) for i in range(a.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out = {"cells": 16384, "pattern": "levels32", "runs": a.runs, "median": med, "per_run": runs}
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"write-verify of 16,384 cells (Yao 8x128x16, levels32), median of {a.runs} runs (seeds {a.seed}..)")
        labels = [("wall_s", "wall time, s", "{:.3f}"), ("virtual_s", "simulated chip time, s", "{:.3f}"),
                  ("in_band_fraction", "in band", "{:.4f}"), ("mean_pulses", "pulses/cell mean", "{:.2f}"),
                  ("median_pulses", "pulses/cell median", "{:.1f}"), ("p95_pulses", "pulses/cell p95", "{:.1f}"),
                  ("max_pulses", "pulses/cell max", "{:.0f}"), ("iterations", "iterations", "{:.0f}")]
        for key, label, fmt in labels:
            print(f"  {label:24s} {fmt.format(med[key]):>10s}")
    return out


if __name__ == "__main__":
    main()
