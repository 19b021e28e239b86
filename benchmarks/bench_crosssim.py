"""The same bit-serial VMM job on Sandia CrossSim and on our simulated chip: 10,000 vectors of
8-bit inputs through a 128x16 array, inputs bit-sliced (8 slots, one ADC conversion per slot,
8-bit ADC), 1% proportional read noise; wall time of each and their ratio.

    python benchmarks/bench_crosssim.py [--batch 10000] [--repeats 3] [--crosssim-python PY] [--json]

CrossSim (the `simulator` package of sandialabs/cross-sim) is not a dependency: it is used when
importable, else through --crosssim-python (or $CROSSSIM_PYTHON), an interpreter that has it
(e.g. a separate venv). Without either the CrossSim half is skipped with a message.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROWS, COLS, BITS, NOISE = 128, 16, 8, 0.01


def job(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (batch, ROWS) 0..255 and a conductance-like matrix (ROWS, COLS) in [0.1, 1]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2 ** BITS, (batch, ROWS)), rng.uniform(0.1, 1.0, (ROWS, COLS))


def crosssim_seconds(batch: int, seed: int) -> dict:
    """Time one CrossSim AnalogCore call on the job (in this interpreter); relative error vs ideal."""
    import simulator
    from simulator import AnalogCore, CrossSimParameters

    x, w = job(batch, seed)
    p = CrossSimParameters()
    p.core.style = "OFFSET"
    p.core.offset.style = "DIGITAL_OFFSET"
    p.core.weight_bits = 0
    p.core.mapping.weights.min, p.core.mapping.weights.max = 0.0, 1.0
    p.xbar.device.read_noise.enable = True
    p.xbar.device.read_noise.model = "NormalProportionalDevice"
    p.xbar.device.read_noise.magnitude = NOISE
    p.xbar.dac.mvm.model = "QuantizerDAC"
    p.xbar.dac.mvm.signed = False
    p.xbar.dac.mvm.bits = BITS
    p.xbar.dac.mvm.input_bitslicing = True
    p.xbar.dac.mvm.slice_size = 1
    p.core.mapping.inputs.mvm.min, p.core.mapping.inputs.mvm.max = 0.0, float(2 ** BITS - 1)
    p.xbar.adc.mvm.model = "QuantizerADC"
    p.xbar.adc.mvm.signed = False
    p.xbar.adc.mvm.bits = BITS
    p.xbar.adc.mvm.adc_per_ibit = True
    p.xbar.adc.mvm.adc_range_option = "CALIBRATED"
    p.xbar.adc.mvm.calibrated_range = [0.0, float(w.sum(axis=0).max())]   # one slot, normalized units
    core = AnalogCore(w.T, p)                                              # (COLS, ROWS): y = A x
    xt = x.T.astype(np.float64)
    t0, c0 = time.perf_counter(), time.process_time()
    y = core @ xt                                  # one call: at ~10 ms per vector, no repeats
    t, cpu = time.perf_counter() - t0, time.process_time() - c0
    ideal = w.T @ xt
    return {"version": getattr(simulator, "__version__", "3.2.0"), "seconds": t, "cpu_s": cpu,
            "rel_error_vs_ideal": float(np.abs(y - ideal).mean() / np.abs(ideal).mean())}


def ours_seconds(batch: int, repeats: int, seed: int) -> dict:
    """Time our simulated chip's bit-serial vmm on the job (1% read noise, 8-bit ADC)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_vmm import median_time
    from hil.geometry import YAO
    from hil.threads import configure_blas
    from sim_backend.chip import SimulatedCrossbar
    from sim_backend.params import AdcParams, DeviceParams, ReadNoiseParams

    configure_blas()
    x, _ = job(batch, seed)
    xbar = SimulatedCrossbar(YAO, DeviceParams(read_noise=ReadNoiseParams(rel=NOISE, abs_us=0.0),
                                               adc=AdcParams(bits=BITS)), seed=seed)
    return {"seconds": median_time(lambda: xbar.vmm(0, x), repeats),
            "cpu_s": median_time(lambda: xbar.vmm(0, x), repeats, time.process_time)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crosssim-python", default=os.environ.get("CROSSSIM_PYTHON"),
                    help="an interpreter with CrossSim installed (default $CROSSSIM_PYTHON)")
    ap.add_argument("--crosssim-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="1,000 vectors, 1 repeat")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    batch, repeats = (1000, 1) if a.quick else (a.batch, a.repeats)
    if a.crosssim_only:
        print(json.dumps(crosssim_seconds(batch, a.seed)))
        return {}
    out = {"batch": batch, "rows": ROWS, "cols": COLS, "input_bits": BITS, "adc_bits": BITS,
           "read_noise_rel": NOISE, "ours": ours_seconds(batch, repeats, a.seed)}
    try:
        out["crosssim"] = crosssim_seconds(batch, a.seed)
    except ImportError:
        if a.crosssim_python:
            run = subprocess.run([a.crosssim_python, __file__, "--crosssim-only", "--batch", str(batch),
                                  "--seed", str(a.seed)],
                                 capture_output=True, text=True, check=True)
            out["crosssim"] = json.loads(run.stdout.strip().splitlines()[-1])
    if "crosssim" in out:
        out["ratio_crosssim_vs_ours"] = out["crosssim"]["seconds"] / out["ours"]["seconds"]
        out["cpu_ratio_crosssim_vs_ours"] = out["crosssim"]["cpu_s"] / out["ours"]["cpu_s"]
    else:
        out["skipped"] = "CrossSim is not installed (no 'simulator' package; give --crosssim-python)"
    if a.json:
        print(json.dumps(out, indent=2))
        return out
    print(f"{batch} bit-serial {ROWS}x{COLS} VMMs, {BITS}-bit inputs, per-slot {BITS}-bit ADC, "
          f"{NOISE:.0%} read noise (ours: median of {repeats}; CrossSim: one call)")
    print(f"  ours (fused kernel)   {out['ours']['seconds'] * 1e3:10.1f} ms")
    if "crosssim" in out:
        c = out["crosssim"]
        print(f"  CrossSim {c['version']:12s} {c['seconds'] * 1e3:10.1f} ms   "
              f"ratio {out['ratio_crosssim_vs_ours']:.0f}x (CPU time {out['cpu_ratio_crosssim_vs_ours']:.0f}x; "
              f"its mean relative error vs ideal {c['rel_error_vs_ideal']:.3%})")
    else:
        print(f"  CrossSim: skipped, {out['skipped']}")
    return out


if __name__ == "__main__":
    main()
