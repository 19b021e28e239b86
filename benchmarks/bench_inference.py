"""Full-fidelity hardware inference (bit-serial, ADC, noise) vs ideal float inference of the
same mCNN, and the wall time of hybrid training on the default 10% subset.

    python benchmarks/bench_inference.py [--images 10000] [--epochs 6] [--seed 0]

Images are the embedded test digits repeated to the requested count. Prints images/s of both
paths and their ratio, measured in one run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hil.nn.datasets import load_dataset
from hil.yao2020.hwnet import HardwareMCNN, plan_mcnn, transfer
from hil.yao2020.hybrid import HybridConfig, hybrid_train
from hil.yao2020.mcnn import train_mcnn
from hil.runstore import RunWriter
from hil.threads import configure_blas
from sim_backend.chip import SimulatedCrossbar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=6, help="ex-situ training epochs before measuring")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    configure_blas()
    ds = load_dataset(seed=a.seed)
    model, _ = train_mcnn(ds, epochs=a.epochs, seed=a.seed)
    x = np.resize(ds.x_test, (a.images, 28, 28))
    y = np.resize(ds.y_test, a.images)

    t = time.perf_counter()
    logits = model.forward(x, quantized=False)
    t_float = time.perf_counter() - t

    xbar = SimulatedCrossbar(seed=a.seed)
    plan = plan_mcnn(xbar.geometry, model, groups=3)
    with tempfile.TemporaryDirectory() as d:
        with RunWriter.create(Path(d) / "bench.h5", "bench", {}) as w:
            transfer(xbar, model, plan, w)
            hw = HardwareMCNN(xbar, model, plan)
            hw.calibrate_adc(ds.x_train[:64])
            t = time.perf_counter()
            hw_logits = hw.fc_logits(hw.features(x, 0))
            t_hw = time.perf_counter() - t
            sub = ds.subset(0.1, a.seed)
            t = time.perf_counter()
            codes = hw.features(sub.x_train, 0)
            t_feat = time.perf_counter() - t
            t = time.perf_counter()
            hybrid_train(hw, codes, sub.y_train, HybridConfig(seed=a.seed))
            t_hybrid = time.perf_counter() - t

    print(f"images: {a.images} ({ds.source} test digits repeated)")
    print(f"ideal float inference:      {a.images / t_float:10.0f} images/s  ({t_float:.2f} s)"
          f"  accuracy {np.mean(logits.argmax(1) == y):.4f}")
    print(f"hardware inference (G1):    {a.images / t_hw:10.0f} images/s  ({t_hw:.2f} s)"
          f"  accuracy {np.mean(hw_logits.argmax(1) == y):.4f}")
    print(f"ratio float / hardware:     {t_hw / t_float:10.1f}x")
    print(f"hybrid training, {len(sub.x_train)} digits: convolver outputs measured once {t_feat:.2f} s, "
          f"{HybridConfig.epochs} epochs of in-situ FC training {t_hybrid:.2f} s, total {t_feat + t_hybrid:.2f} s wall")


if __name__ == "__main__":
    main()
