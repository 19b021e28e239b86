"""Wall time of one in-situ training batch of a Wang 2019 network on the simulated 128 x 64 array
(forward by amplitude VMMs, backward from the read-back, open-loop gate updates of every cell,
read-back of every used cell) against one software (float64) training batch of the same network.

    python benchmarks/bench_wang.py [--net cnn|convlstm] [--batches 40] [--seed 0]

Both paths run the same batches in file order with RMSprop, one BLAS thread (as the demo does);
prints ms per batch of each and their ratio, measured in one run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hil.registry import open_station
from hil.threads import configure_blas
from hil.wang2019 import stages
from hil.wang2019.insitu import ArrayNetwork
from hil.wang2019.optim import RMSprop

STATION = Path(__file__).resolve().parents[1] / "stations" / "sim-wang.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--net", choices=tuple(stages.NETS), default="cnn")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args()
    configure_blas()
    cfg = stages.InsituConfig(net=a.net, data=stages.DataConfig(seed=a.seed))
    d = stages.load_data(cfg.data, a.net)
    bs = cfg.batch_size()
    batches = [(d.x_train[s:s + bs], d.y_train[s:s + bs])
               for s in ((k * bs) % (len(d.y_train) - bs + 1) for k in range(a.batches))]
    net = stages.make_net(a.net)
    opt = RMSprop(cfg.lr, cfg.decay, cfg.eps)
    t = time.perf_counter()
    for x, y in batches:
        _, grads, _ = net.loss_and_grads(x, y)
        opt.step(net.weights, grads)
    t_sw = (time.perf_counter() - t) / a.batches

    xbar = open_station(str(STATION), seed=a.seed)
    ymap = stages.yield_scan(xbar, None, stages.YieldScanConfig())
    net = stages.make_net(a.net)
    an = ArrayNetwork(xbar, net, stages.placement_for(xbar, ymap, net), cfg.policy(net))
    an.initialize()
    opt = RMSprop(cfg.lr, cfg.decay, cfg.eps)
    p0 = an.engine.pulses
    t = time.perf_counter()
    for x, y in batches:
        _, grads, _ = an.loss_and_grads(x, y)
        an.update(opt.deltas(grads))
    t_hw = (time.perf_counter() - t) / a.batches
    if a.json:
        print(json.dumps({"net": a.net, "batches": a.batches, "software_s_per_batch": t_sw, "insitu_s_per_batch": t_hw,
                          "pulses_per_batch": (an.engine.pulses - p0) / a.batches, "ratio": t_hw / t_sw}))
        return
    print(f"{a.net}, batch {bs}, {a.batches} batches, {net.n_weights} weights on {an.placement.n_cells} cells")
    print(f"software (float64)  {1e3 * t_sw:8.2f} ms/batch")
    print(f"in situ (simulated) {1e3 * t_hw:8.2f} ms/batch  ({(an.engine.pulses - p0) / a.batches:.0f} pulses/batch)")
    print(f"ratio in situ / software: {t_hw / t_sw:.1f}x")


if __name__ == "__main__":
    main()
