"""A custom pulse train: alternate SET and RESET pulses on a few cells, reading after each.

    python examples/pulse_train.py [--cycles 50] [--out runs/example-train.h5] [--plot train.png]
"""
import argparse

import numpy as np

import hil

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--station", default="sim", help="'sim' or a station TOML file (default: sim)")
p.add_argument("--seed", type=int, default=1, help="seed of the simulated chip (default 1)")
p.add_argument("--cycles", type=int, default=50, help="SET/RESET cycles (default 50)")
p.add_argument("--out", default="runs/example-train.h5", help="run record to create")
p.add_argument("--plot", help="PNG of conductance against pulse number")
args = p.parse_args()

cells = hil.Cells.block(pe=0, rows=[0], cols=range(4))
g = []
with hil.open_station(args.station, seed=args.seed) as xbar, hil.Session(xbar, args.out) as s:
    for k in range(args.cycles):
        s.pulse(cells, "SET", v=1.6, v_gate=1.6, width_s=50e-9)      # volts, volts, seconds
        g.append(s.read(cells))
        s.pulse(cells, "RESET", v=1.4, v_gate=4.0, width_s=50e-9)
        g.append(s.read(cells))
g = np.array(g)                                                   # (2 * cycles, cells), siemens
print(f"after SET: {g[0::2].mean() * 1e6:.2f} µS, after RESET: {g[1::2].mean() * 1e6:.2f} µS "
      f"(mean over {args.cycles} cycles and {len(cells)} cells); record {args.out}")
if args.plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(g) + 1), g * 1e6, lw=0.8)
    ax.set_xlabel("pulse number")
    ax.set_ylabel("conductance (µS)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=150)
