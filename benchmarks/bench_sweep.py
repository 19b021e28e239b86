"""Benchmark: `hil sweep` throughput on this machine's cores, and the statistical fast mode.

1. Points per minute of a write-verify sweep (32 levels on one 128 x 16 PE per point; 4 read
   noise levels x N seeds) on a LocalCluster of 1 and of 2 single-threaded worker processes, the
   cluster started and warmed up (imports, first point) before the clock starts; the ratio is
   measured in this one run.
2. The statistical fast programming mode: median wall time per point of the same sweep with
   `programming = "statistical"` (model fitted once, not timed) against pulse-level programming.

    python benchmarks/bench_sweep.py [--seeds N] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hil.threads import configure_blas  # noqa: E402

SPEC = """
[sweep]
target = "write_verify"
seeds = "0-{last}"
programming = "{programming}"
geometry = {{n_pe = 1, rows = 128, cols = 16}}
[[axis]]
name = "device.read_noise.rel"
values = [0.002, 0.004, 0.01, 0.02]
"""


def spec(tmp: Path, seeds: int, programming: str = "pulse"):
    from hil.sweep import load_spec
    p = tmp / f"{programming}-{seeds}.toml"
    p.write_text(SPEC.format(last=seeds - 1, programming=programming))
    return load_spec(p)


def points_per_minute(workers: int, seeds: int, tmp: Path) -> dict:
    from distributed import Client, LocalCluster
    from hil.sweep import run_sweep
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            Client(c):
        run_sweep(spec(tmp, workers), tmp / f"warm-{workers}", scheduler=c.scheduler_address)   # one point each
        s = spec(tmp, seeds)
        t0 = time.perf_counter()
        o = run_sweep(s, tmp / f"run-{workers}", scheduler=c.scheduler_address)
        dt = time.perf_counter() - t0
    return {"workers": workers, "points": o.ok, "seconds": dt, "points_per_minute": 60 * o.ok / dt}


def fast_mode(seeds: int, tmp: Path) -> dict:
    from hil.errors import HilError
    from hil.sweep import SweepTable, run_sweep
    out = {}
    for mode in ("pulse", "statistical"):
        s = spec(tmp, seeds, mode)
        folder = tmp / f"fast-{mode}"
        try:
            o = run_sweep(s, folder, workers=1)
        except HilError as e:
            return {"available": False, "why": str(e)}
        df = SweepTable(folder).frame()
        out[mode] = {"points": o.ok, "failed": o.failed, "median_point_s": statistics.median(df["wall_s"]),
                     "in_band_fraction": float(df["in_band_fraction"].mean())}
    out["speedup_per_point"] = out["pulse"]["median_point_s"] / out["statistical"]["median_point_s"]
    out["available"] = True
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6, help="seeds per read-noise level (points = 4 x seeds)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    configure_blas()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        one = points_per_minute(1, args.seeds, tmp)
        two = points_per_minute(2, args.seeds, tmp)
        fast = fast_mode(args.seeds, tmp)
    res = {"one_worker": one, "two_workers": two, "ratio_2_to_1": two["points_per_minute"] / one["points_per_minute"],
           "fast_mode": fast}
    if args.json:
        print(json.dumps(res))
        return
    for r in (one, two):
        print(f"{r['workers']} worker(s): {r['points']} points in {r['seconds']:.1f} s = "
              f"{r['points_per_minute']:.1f} points/min")
    print(f"2 workers / 1 worker: {res['ratio_2_to_1']:.2f}x")
    if fast.get("available"):
        print(f"per point: pulse-level {fast['pulse']['median_point_s']:.3f} s, statistical "
              f"{fast['statistical']['median_point_s']:.3f} s -> {fast['speedup_per_point']:.1f}x; in-band fraction "
              f"{fast['pulse']['in_band_fraction']:.4f} vs {fast['statistical']['in_band_fraction']:.4f}")
    else:
        print(f"fast mode not available: {fast['why']}")


if __name__ == "__main__":
    main()
