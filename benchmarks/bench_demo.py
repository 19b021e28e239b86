"""Wall time of the main job `hil demo` (both papers, or one with --paper) on this machine, per
paper and in total (aim: under 3 minutes on 2 cores), optionally against another checkout
(--base DIR, e.g. a clean checkout of main) in the same run, alternating the two so that a
changing machine load hits both alike; and what the Wang CNN's in-situ training costs on the
emulated station through the drivers: bus transactions and station time per batch, and the
estimated station time of the paper's whole 1,200-update run.

    .venv/bin/python benchmarks/bench_demo.py [--quick] [--paper yao2020] [--base /work/base]
        [--repeat 1] [--skip-demo] [--skip-station] [--batches 20]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATION = ROOT / "stations" / "sim-wang-instruments.toml"
WORLD = "sim-wang-instruments"
HIL = "import sys; from hil.cli import main; sys.argv[0] = 'hil'; sys.exit(main())"


def run_demo(root: Path, quick: bool, paper: str) -> tuple[float, float, dict]:
    """(wall seconds from process start to exit, CPU seconds (user + system) of the process, the
    JSON) of `hil demo --seed 0` run from the checkout `root` (its `hil` package first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", HIL, "demo", "--seed", "0", "--json", "--out", out, "--paper", paper]
        cmd += ["--quick"] * quick
        t0, c0 = time.perf_counter(), _children_cpu()
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root, env=env).stdout)
        return time.perf_counter() - t0, _children_cpu() - c0, res


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_demo(quick: bool, paper: str, base: Path | None, repeat: int) -> None:
    roots = {"this": ROOT, **({"base": base} if base else {})}
    runs: dict = {k: [] for k in roots}
    for _ in range(repeat):
        for name, root in roots.items():
            runs[name].append(run_demo(root, quick, paper))
    print(f"hil demo{' --quick' * quick} --seed 0 --paper {paper}, {repeat} run(s) each, alternating:")
    for name, rs in runs.items():
        walls, cpus = [w for w, _, _ in rs], [c for _, c, _ in rs]
        res = rs[-1][2]
        print(f"  {name:5s} {roots[name]}: wall median {statistics.median(walls):6.1f} s (min {min(walls):.1f}), "
              f"CPU median {statistics.median(cpus):6.1f} s")
        if "hybrid_acc" in res:
            print(f"        Yao 2020  {res['seconds']:6.1f} s  software {res['software_acc']:.2%}, "
                  f"transfer {res['transfer_acc']:.2%}, hybrid {res['hybrid_acc']:.2%}, parallel {res['parallel_acc']:.2%}")
        if "wang_seconds" in res:
            print(f"        Wang 2019 {res['wang_seconds']:6.1f} s  (CNN in situ {res['wang_cnn_acc']:.2%}, "
                  f"{res['wang_cnn_updates']} updates)")
    if base:
        for i, what in ((0, "wall"), (1, "CPU")):
            this, old = (statistics.median(r[i] for r in runs[k]) for k in ("this", "base"))
            print(f"  this / base {what} time: {this / old:.2f}")


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
    p.add_argument("--paper", choices=("all", "yao2020", "wang2019"), default="all", help="which paper's demo (default all)")
    p.add_argument("--base", type=Path, default=None, help="also time the demo of this checkout (e.g. /work/base)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each demo (default 1; the median is shown)")
    p.add_argument("--skip-demo", action="store_true", help="only the emulated-station figures")
    p.add_argument("--skip-station", action="store_true", help="only the demo wall times")
    p.add_argument("--batches", type=int, default=20, help="training batches on the emulated station (default 20)")
    a = p.parse_args()
    if not a.skip_demo:
        bench_demo(a.quick, a.paper, a.base, a.repeat)
    if not a.skip_station:
        bench_station(a.batches)


if __name__ == "__main__":
    main()
