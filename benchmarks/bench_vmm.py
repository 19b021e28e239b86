"""Benchmark: 10,000 bit-serial 128x16 VMMs (one call: read noise, ADC, shift-add) on the
simulated Yao chip against a float32 and a float64 matmul of the same sizes, pinned to one BLAS
thread and with the BLAS library's default threads, in one run. Medians of several repeats,
wall time (the figures) and process CPU time (steadier on a shared machine; all threads).

    python benchmarks/bench_vmm.py [--repeats 9] [--batch 10000] [--busy 2] [--quick] [--json]

--busy N keeps N busy-looping processes running while measuring (a loaded machine).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from hil.threads import blas_threads  # noqa: E402
from sim_backend.chip import SimulatedCrossbar  # noqa: E402


def median_time(fn, repeats: int, clock=time.perf_counter) -> float:
    """Median of `repeats` timings of fn() on `clock` (wall by default) after one warm-up."""
    fn()                                          # warm-up (caches, BLAS threads)
    ts = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return statistics.median(ts)


def thread_modes(which: str = "both") -> list[tuple[str, int]]:
    """("pinned", 1) and/or ("default", the BLAS library's own thread count, read before any limit)."""
    default = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)
    return [(name, n) for name, n in (("pinned", 1), ("default", default)) if which in (name, "both")]


@contextlib.contextmanager
def busy_load(n: int):
    """`n` busy-looping child processes for the duration (ended by their pids; each also stops
    by itself once this process is gone)."""
    loop = f"import os\nwhile os.getppid() == {os.getpid()}: pass"
    procs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGTERM)
            p.wait()


def load_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes while measuring (default 0)")
    ap.add_argument("--threads", choices=("both", "pinned", "default"), default="both",
                    help="BLAS thread settings to measure (default both)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    load_args(ap)
    a = ap.parse_args(argv)
    repeats = 3 if a.quick else a.repeats
    modes = thread_modes(a.threads)
    xbar = SimulatedCrossbar(seed=a.seed)
    rows, cols = xbar.geometry.rows, xbar.geometry.cols
    rng = np.random.default_rng(a.seed)
    x = rng.integers(0, 256, (a.batch, rows))
    x64, w64 = x.astype(np.float64), rng.random((rows, cols))
    x32, w32 = x64.astype(np.float32), w64.astype(np.float32)
    out = {"batch": a.batch, "rows": rows, "cols": cols, "repeats": repeats, "busy_processes": a.busy,
           "cpus": os.cpu_count(), "load_avg_1min_start": os.getloadavg()[0]}
    with busy_load(a.busy):
        for name, n in modes:
            with blas_threads(n):
                t_vmm = median_time(lambda: xbar.vmm(0, x), repeats)
                t64 = median_time(lambda: x64 @ w64, repeats)
                t32 = median_time(lambda: x32 @ w32, repeats)
                cpu = [median_time(f, repeats, time.process_time)
                       for f in (lambda: xbar.vmm(0, x), lambda: x64 @ w64, lambda: x32 @ w32)]
            out[name] = {"blas_threads": n, "vmm_s": t_vmm, "matmul_f64_s": t64, "matmul_f32_s": t32,
                         "ratio_vs_f64": t_vmm / t64, "ratio_vs_f32": t_vmm / t32,
                         "cpu_s": dict(zip(("vmm", "matmul_f64", "matmul_f32"), cpu))}
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{a.batch} bit-serial {rows}x{cols} VMMs (8 slots, noise, ADC), median of {repeats}, "
              f"{a.busy} busy processes")
        for name, _ in modes:
            r = out[name]
            print(f" {name} ({r['blas_threads']} BLAS threads)")
            print(f"  {'simulated vmm':22s} {r['vmm_s'] * 1e3:9.3f} ms")
            print(f"  {'float64 matmul':22s} {r['matmul_f64_s'] * 1e3:9.3f} ms   ratio {r['ratio_vs_f64']:6.1f}x")
            print(f"  {'float32 matmul':22s} {r['matmul_f32_s'] * 1e3:9.3f} ms   ratio {r['ratio_vs_f32']:6.1f}x")
    return out


if __name__ == "__main__":
    main()
