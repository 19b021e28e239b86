"""Wall time of the main job `hil demo` (both papers) on this machine, per paper and in total
(aim: under 3 minutes on 2 cores), and what the Wang CNN's in-situ training costs on the
emulated station through the drivers: bus transactions and station time per batch, and the
estimated station time of the paper's whole 1,200-update run.

    .venv/bin/python benchmarks/bench_demo.py [--quick] [--skip-demo] [--batches 20]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATION = ROOT / "stations" / "sim-wang-instruments.toml"
WORLD = "sim-wang-instruments"


def bench_demo(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(Path(sys.executable).with_name("hil")), "demo", "--seed", "0", "--json", "--out", out]
        cmd += ["--quick"] * quick
        t0 = time.perf_counter()
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
        total = time.perf_counter() - t0
    print(f"hil demo{' --quick' * quick} --seed 0 (both papers):")
    print(f"  Yao 2020  {res['seconds']:7.1f} s   (hybrid {res['hybrid_acc']:.2%}, parallel {res['parallel_acc']:.2%})")
    print(f"  Wang 2019 {res['wang_seconds']:7.1f} s   (CNN in situ {res['wang_cnn_acc']:.2%}, "
          f"{res['wang_cnn_updates']} updates)")
    print(f"  total     {total:7.1f} s   wall, process start to exit (aim: under 180 s)")


def bench_station(batches: int) -> None:
    from hil.registry import open_station
    from hil.runstore import RunWriter
    from hil.threads import configure_blas
    from hil.wang2019.demo import station_cost
    from sim_backend.world import drop_world, get_world
    configure_blas()

    def transactions() -> int:
        return sum(c["transactions"] for c in get_world(WORLD).counters.values())
    drop_world(WORLD)
    with tempfile.TemporaryDirectory() as tmp, open_station(str(STATION), seed=0) as x, \
            RunWriter.create(Path(tmp) / "cost.h5", "wang2019", {}, {}) as w:
        r = station_cost(x, w, transactions, batches=batches, batch=100, test_samples=100)
    n = r["transactions_per_batch"]
    print(f"\nWang CNN in situ through the drivers on {STATION.name} ({batches} batches of 100):")
    print(f"  yield scan          {r['yield_scan_transactions']:6d} transactions  "
          f"{r['yield_scan_s']:9.1f} s station time")
    print(f"  batch 1 (with init) {n[0]:6d} transactions  {r['station_s_per_batch'][0]:9.1f} s")
    print(f"  plain batch         {r['median_transactions_per_batch']:6.0f} transactions  "
          f"{r['median_station_s_per_batch']:9.1f} s   (median of batches 2..{batches - 1})")
    print(f"  last batch + test   {n[-1]:6d} transactions  {r['station_s_per_batch'][-1]:9.1f} s   "
          f"({r['eval_s_per_test_digit']:.3f} s per test digit)")
    print(f"  test accuracy after {batches} batches: {r['test_acc']:.2%} on 100 digits; "
          f"host wall time {r['wall_s_per_batch']:.2f} s per batch")
    h = r["whole_run_station_s"] / 3600
    print(f"  estimated station time of the whole run (yield scan, init, 1,200 batches, 10 evaluations "
          f"of 1,000 digits): {r['whole_run_station_s']:,.0f} s = {h:.1f} h")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="time `hil demo --quick` instead")
    p.add_argument("--skip-demo", action="store_true", help="only the emulated-station figures")
    p.add_argument("--batches", type=int, default=20, help="training batches on the emulated station (default 20)")
    a = p.parse_args()
    if not a.skip_demo:
        bench_demo(a.quick)
    bench_station(a.batches)


if __name__ == "__main__":
    main()
