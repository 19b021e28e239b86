"""Benchmark: cost of write-verify per cell from 2k to 4M cells, bare and through `hil program`.

Every size runs in its own subprocess (its peak memory is that process's maxrss): write-verify of
every cell of a simulated chip to the levels32 pattern (32 levels, 2-20 µS), then `hil program
--json` with its record at 16k and 1M cells. Prints µs per cell, peak memory per cell (maxrss
above the process before the chip was made; for `hil program` the whole process) and the ratios
the issue asks for; `--base DIR` measures another checkout (e.g. /work/base) in the same run.

    python benchmarks/bench_program.py [--quick] [--skip-4m] [--base /work/base] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: label -> (PEs, rows, columns)
SIZES = {"2k": (1, 128, 16), "16k": (8, 128, 16), "131k": (64, 128, 16), "1M": (64, 128, 128),
         "4M": (64, 256, 256)}
CLI_SIZES = ("16k", "1M")
STATION = '[station]\nbackend = "sim"\nname = "bench"\n[geometry]\nn_pe = {}\nrows = {}\ncols = {}\n[sim]\nseed = 0\n'


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_size(code: str, n_pe: int, rows: int, cols: int) -> dict:
    """(In the child) write-verify every cell once; time and peak memory above the start."""
    sys.path.insert(0, code)
    from hil.geometry import Cells, Geometry
    from hil.levels import LevelTable, make_pattern
    from hil.ops.write_verify import write_verify
    from hil.threads import configure_blas
    from sim_backend.chip import SimulatedCrossbar
    configure_blas()
    geo = Geometry(n_pe=n_pe, rows=rows, cols=cols)
    start = _rss_bytes()
    xbar = SimulatedCrossbar(geometry=geo, seed=0)
    cells = Cells.all(geo)
    table = LevelTable.linear()
    _, targets = make_pattern("levels32", len(cells), table)
    t0, c0 = time.perf_counter(), time.process_time()
    rep = write_verify(xbar, cells, targets, table.tolerance_s)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    s = rep.summary()
    return {"cells": geo.n_cells, "seconds": wall, "us_per_cell": 1e6 * wall / geo.n_cells,
            "cpu_us_per_cell": 1e6 * cpu / geo.n_cells,
            "peak_bytes_per_cell": (peak - start) / geo.n_cells, "maxrss_bytes": peak,
            "mean_pulses": s["mean_pulses"], "in_band_fraction": s["in_band_fraction"],
            "iterations": s["iterations"]}


def _child(argv: list[str], env: dict, out: Path) -> tuple[int, float, float, int]:
    """Run argv; (exit status, wall seconds, CPU seconds, that child's maxrss in bytes)."""
    t0 = time.perf_counter()
    with open(out, "w") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.DEVNULL, env=env, cwd=out.parent)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def measure(code: Path, label: str, tmp: Path) -> dict:
    out = tmp / f"wv-{label}.json"
    rc, *_ = _child([sys.executable, __file__, "--one", str(code), *map(str, SIZES[label])], dict(os.environ), out)
    if rc != 0:
        raise SystemExit(f"write-verify at {label} with {code} failed (exit {rc})")
    return {"size": label, **json.loads(out.read_text())}


def measure_cli(code: Path, label: str, tmp: Path) -> dict:
    """`hil program --json` with its record (and the chip state file) on a station of that size."""
    station = tmp / f"station-{label}.toml"
    station.write_text(STATION.format(*SIZES[label]))
    rec = tmp / f"program-{label}-{abs(hash(str(code)))}.h5"
    env = {**os.environ, "PYTHONPATH": str(code)}      # run from `tmp`: the current folder's hil cannot shadow it
    argv = [sys.executable, "-c", "import sys; from hil.cli import main; sys.exit(main())",
            "program", "--station", str(station), "--out", str(rec), "--json"]
    out = tmp / f"cli-{label}.json"
    rc, wall, cpu, rss = _child(argv, env, out)
    if rc != 0:
        raise SystemExit(f"hil program at {label} with {code} failed (exit {rc})")
    summary = json.loads(out.read_text())
    cells = summary["cells"]
    for p in tmp.glob(rec.name + "*"):
        p.unlink()
    return {"size": label, "cells": cells, "seconds": wall, "us_per_cell": 1e6 * wall / cells,
            "cpu_us_per_cell": 1e6 * cpu / cells,
            "program_seconds": summary["seconds"], "maxrss_bytes": rss, "bytes_per_cell": rss / cells}


def run(code: Path, labels, cli_labels) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-program-") as d:
        tmp = Path(d)
        wv = [measure(code, lab, tmp) for lab in labels]
        cli = [measure_cli(code, lab, tmp) for lab in cli_labels]
    by = {r["size"]: r for r in wv}
    cby = {r["size"]: r for r in cli}
    ratios = {}
    for kind, rows in (("wv", by), ("cli", cby)):
        for big in ("1M", "4M"):
            if big in rows and "16k" in rows:
                for key, name in (("us_per_cell", "wall"), ("cpu_us_per_cell", "cpu")):
                    ratios[f"{kind}_{big}_over_16k_{name}"] = rows[big][key] / rows["16k"][key]
    return {"code": str(code), "write_verify": wv, "program_cli": cli, "ratios": ratios}


def _print(res: dict) -> None:
    print(f"code: {res['code']}")
    print(f"  {'write-verify':14s} {'cells':>9s} {'s':>8s} {'µs/cell':>8s} {'cpu µs':>8s} {'peak B/cell':>11s}")
    for r in res["write_verify"]:
        print(f"  {r['size']:14s} {r['cells']:9d} {r['seconds']:8.2f} {r['us_per_cell']:8.2f} "
              f"{r['cpu_us_per_cell']:8.2f} {r['peak_bytes_per_cell']:11.0f}")
    for r in res["program_cli"]:
        print(f"  hil program {r['size']:4s} {r['cells']:9d} {r['seconds']:8.2f} {r['us_per_cell']:8.2f} "
              f"{r['cpu_us_per_cell']:8.2f} {r['bytes_per_cell']:11.0f}   peak {r['maxrss_bytes'] / 2**20:.0f} MiB")
    for k, v in res["ratios"].items():
        print(f"  {k}: {v:.2f}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2k, 16k and 131k only; `hil program` at 16k only")
    ap.add_argument("--skip-4m", action="store_true", help="leave out the 4M-cell chip (about 3 GB and minutes)")
    ap.add_argument("--base", type=Path, help="also measure this checkout (e.g. /work/base), same sizes")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--one", nargs=4, metavar=("CODE", "N_PE", "ROWS", "COLS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one_size(a.one[0], *map(int, a.one[1:]))))
        return {}
    labels = ["2k", "16k", "131k"] if a.quick else [s for s in SIZES if not (a.skip_4m and s == "4M")]
    cli_labels = ("16k",) if a.quick else CLI_SIZES
    out = {"after": run(REPO, labels, cli_labels)}
    if a.base:
        out["before"] = run(a.base.resolve(), labels, cli_labels)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for res in out.values():
            _print(res)
    return out


if __name__ == "__main__":
    main()
