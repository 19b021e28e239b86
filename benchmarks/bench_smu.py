"""Bus transactions and estimated probe-station (virtual) time to write-verify cells through an
emulated Keithley 2602B: host-side loop of single TSP commands vs the on-instrument script
(one transaction per cell). Board routing is done directly on the world here (the board's own
cost is measured by benchmarks/bench_board.py). Prints figures and ratios; asserts nothing.

    python benchmarks/bench_smu.py [--cells 64] [--bus gpib]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.keithley2600 import Keithley2600          # noqa: E402
from hil.geometry import Cells                           # noqa: E402
from hil.ops.write_verify import WriteVerifyPolicy                # noqa: E402
from hil.threads import configure_blas  # noqa: E402
from sim_backend.visa_backend import build_bench         # noqa: E402
from sim_backend.world import drop_world                 # noqa: E402

LO, HI = 9.5e-6, 10.5e-6


def setup(name: str, bus: str, seed: int):
    em = {"world": name, "seed": seed, "geometry": "yao", "params": None, "instruments": {
        "k2602": {"kind": "keithley2602b", "resource": "GPIB0::26::INSTR", "bus": bus,
                  "wiring": {"smua": ["BL", "SL"], "smub": ["WL"]}}}}
    bench = build_bench(em)
    return bench.world, em


def route(w, r, c):
    w.route(Cells(0, r, c))
    w.set_drive("BL", "bus")
    w.set_drive("SL", "ground")
    w.set_drive("WL", "bus")


def host_loop(smu: Keithley2600, w, pol: WriteVerifyPolicy, n: int) -> int:
    """Same algorithm as the script, one TSP command per step (no ramp flip / stuck logic)."""
    in_band = 0
    for k in range(n):
        route(w, k // 16, k % 16)
        ks = kr = 0
        for p in range(pol.max_pulses + 1):
            smu.source_voltage(3.3, channel="b")
            smu.source_voltage(0.2, channel="a")
            g = smu.measure_current(channel="a") / 0.2
            smu.source_voltage(0.0, channel="a")
            if LO <= g <= HI:
                in_band += 1
                break
            if p == pol.max_pulses:
                break
            if g < LO:
                smu.source_voltage(min(pol.set_gate_start + ks * pol.set_gate_step, pol.set_gate_max), channel="b")
                smu.pulse(pol.set_v_bl, pol.width_s, channel="a")
                ks, kr = ks + 1, 0
            else:
                smu.source_voltage(pol.reset_gate, channel="b")
                smu.pulse(-min(pol.reset_v_sl_start + kr * pol.reset_v_sl_step, pol.reset_v_sl_max),
                          pol.width_s, channel="a")
                kr, ks = kr + 1, 0
    return in_band


def run(mode: str, n: int, bus: str, seed: int) -> dict:
    name = f"bench-smu-{mode}"
    drop_world(name)
    w, em = setup(name, bus, seed)
    path = Path(f"/tmp/{name}.toml")
    path.write_text(_toml(em))
    pol = WriteVerifyPolicy(width_s=1e-6)
    with Keithley2600("GPIB0::26::INSTR", f"{path}@hilsim", min_pulse_s=1e-7) as smu:
        for ch, comp in (("a", 1e-3), ("b", 1e-6)):
            smu.configure(comp, 6.0, None, 0.1, channel=ch)
            smu.output(True, channel=ch)
        c0, t0, wall = dict(w.counters["k2602"]), w.now(), time.perf_counter()
        if mode == "script":
            smu.load_write_verify_script()
            smu.set_write_verify_policy(pol)
            ok = 0
            for k in range(n):
                route(w, k // 16, k % 16)
                ok += smu.write_verify_cell(LO, HI).status == 0
        else:
            ok = host_loop(smu, w, pol, n)
        c = w.counters["k2602"]
        out = {"mode": mode, "cells": n, "in_band": ok, "transactions": c["transactions"] - c0["transactions"],
               "bus_s": c["bus_s"] - c0["bus_s"], "virtual_s": w.now() - t0, "wall_s": time.perf_counter() - wall}
    drop_world(name)
    return out


def _toml(em: dict) -> str:
    (name, spec), = em["instruments"].items()
    return (f'[emulation]\nworld = "{em["world"]}"\nseed = {em["seed"]}\ngeometry = "yao"\n'
            f'[emulation.instruments.{name}]\nkind = "{spec["kind"]}"\nresource = "{spec["resource"]}"\n'
            f'bus = "{spec["bus"]}"\nwiring = {{ smua = ["BL", "SL"], smub = ["WL"] }}\n')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--bus", default="gpib", choices=["gpib", "usb", "lan"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args()
    configure_blas()
    res = [run(m, a.cells, a.bus, a.seed) for m in ("host", "script")]
    if a.json:
        print(json.dumps({"cells": a.cells, "bus": a.bus, "runs": res}, default=float))
        return
    scale = 2048 / a.cells
    print(f"write-verify of {a.cells} cells via an emulated 2602B on {a.bus} (extrapolated to 2048 cells)")
    for r in res:
        print(f"  {r['mode']:6s}: {r['in_band']}/{r['cells']} in band, {r['transactions']} transactions "
              f"({r['transactions'] * scale:.0f} for 2048), bus {r['bus_s']:.2f} s, station time "
              f"{r['virtual_s']:.2f} s ({r['virtual_s'] * scale / 60:.1f} min for 2048), wall {r['wall_s']:.2f} s")
    h, s = res
    print(f"  ratio host/script: transactions x{h['transactions'] / max(s['transactions'], 1):.1f}, "
          f"station time x{h['virtual_s'] / max(s['virtual_s'], 1e-12):.1f}")


if __name__ == "__main__":
    main()
