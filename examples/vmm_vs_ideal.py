"""A bit-serial VMM on the chip against the ideal dot product of the conductances read back.

    python examples/vmm_vs_ideal.py [--batch 64] [--out runs/example-vmm.h5]
"""
import argparse

import numpy as np

import hil

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--station", default="sim", help="'sim' or a station TOML file (default: sim)")
p.add_argument("--seed", type=int, default=1, help="seed of the simulated chip (default 1)")
p.add_argument("--batch", type=int, default=64, help="input vectors (default 64)")
p.add_argument("--out", default="runs/example-vmm.h5", help="run record to create")
args = p.parse_args()

rng = np.random.default_rng(args.seed)
with hil.open_station(args.station, seed=args.seed) as xbar, hil.Session(xbar, args.out) as s:
    rows, cols = xbar.geometry.rows, xbar.geometry.cols
    cells = hil.Cells.block(pe=0, geometry=xbar.geometry)          # the whole PE 0, row-major
    s.write_verify(cells, rng.uniform(2e-6, 20e-6, len(cells)), tolerance_s=0.5e-6)
    g_s = s.read(cells, n_avg=8).reshape(rows, cols)                # siemens
    # ADC full scale: the largest column current of one slot (every row at the read voltage)
    full_scale_a = 1.05 * xbar.v_read_default * g_s.sum(axis=0).max()
    x = rng.integers(0, 256, size=(args.batch, rows))               # 8-bit inputs
    r = s.vmm(0, x, adc_full_scale_a=full_scale_a)
ideal_a = r.v_read * x @ g_s                                        # amperes, shift-and-summed
err_a = np.abs(r.currents - ideal_a)
print(f"VMM of {args.batch} vectors on {rows}x{cols}: median |error| {np.median(err_a / ideal_a):.2%} "
      f"of the ideal current, max {err_a.max() * 1e6:.2f} µA against an ADC rounding bound of "
      f"{r.quantization_bound_a * 1e6:.2f} µA; {int(r.saturated.sum())} saturated; record {args.out}")
