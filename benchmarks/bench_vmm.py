"""Benchmark: 10,000 bit-serial 128x16 VMMs (one call, noise + ADC) on the simulated Yao chip
versus a plain float64 and float32 matmul of the same sizes. Medians of several repeats.

    python benchmarks/bench_vmm.py [--repeats 9] [--batch 10000] [--json]
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

from hil.threads import configure_blas  # noqa: E402
from sim_backend.chip import SimulatedCrossbar  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()                                          # warm-up (caches, noise pool, BLAS threads)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    configure_blas()
    xbar = SimulatedCrossbar(seed=a.seed)
    rows, cols = xbar.geometry.rows, xbar.geometry.cols
    rng = np.random.default_rng(a.seed)
    x = rng.integers(0, 256, (a.batch, rows))
    x64, w64 = x.astype(np.float64), rng.random((rows, cols))
    x32, w32 = x64.astype(np.float32), w64.astype(np.float32)
    t_vmm = median_time(lambda: xbar.vmm(0, x), a.repeats)
    t64 = median_time(lambda: x64 @ w64, a.repeats)
    t32 = median_time(lambda: x32 @ w32, a.repeats)
    out = {"batch": a.batch, "rows": rows, "cols": cols, "repeats": a.repeats,
           "vmm_s": t_vmm, "matmul_f64_s": t64, "matmul_f32_s": t32,
           "ratio_vs_f64": t_vmm / t64, "ratio_vs_f32": t_vmm / t32}
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{a.batch} bit-serial {rows}x{cols} VMMs (8 slots, noise, ADC), median of {a.repeats}")
        print(f"  {'simulated vmm':22s} {t_vmm * 1e3:9.3f} ms")
        print(f"  {'float64 matmul':22s} {t64 * 1e3:9.3f} ms   ratio {t_vmm / t64:6.1f}x")
        print(f"  {'float32 matmul':22s} {t32 * 1e3:9.3f} ms   ratio {t_vmm / t32:6.1f}x")
    return out


if __name__ == "__main__":
    main()
