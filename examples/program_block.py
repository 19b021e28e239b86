"""Program a 4×4 block of cells to given conductances by write-verify and read it back.

    python examples/program_block.py [--station sim|STATION.toml] [--out runs/example-block.h5]
"""
import argparse

import numpy as np

import hil

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--station", default="sim", help="'sim' or a station TOML file (default: sim)")
p.add_argument("--seed", type=int, default=1, help="seed of the simulated chip (default 1)")
p.add_argument("--out", default="runs/example-block.h5", help="run record to create")
args = p.parse_args()

targets_s = np.linspace(4e-6, 19e-6, 16).reshape(4, 4)          # siemens
cells = hil.Cells.block(pe=0, rows=range(4), cols=range(4))     # row-major: targets_s.ravel() order

with hil.open_station(args.station, seed=args.seed) as xbar, hil.Session(xbar, args.out) as s:
    report = s.write_verify(cells, targets_s.ravel(), tolerance_s=0.5e-6)   # hil.ProgramReport
    g_s = s.read(cells, n_avg=4).reshape(4, 4)

print("target µS:\n", np.round(targets_s * 1e6, 2))
print("read back µS:\n", np.round(g_s * 1e6, 2))
read_in_band = np.abs(g_s - targets_s) <= 0.5e-6
print(f"in band at the last verify: {report.in_band.mean():.0%}, on read-back: {read_in_band.mean():.0%}; "
      f"mean pulses {report.pulses.mean():.1f}; record {args.out}")
