"""Full-fidelity hardware inference (bit-serial, ADC, read noise) of the mCNN against ideal
float32 and float64 inference of the same network, pinned to one BLAS thread and with the BLAS
library's default threads, in one run (wall time, and process CPU time: steadier on a shared
machine); and the wall time of hybrid training on the 10% subset.

    python benchmarks/bench_inference.py [--images 10000] [--epochs 6] [--repeats 3] [--busy 2] [--quick] [--json]

Images are the embedded test digits repeated to the requested count. Float64 inference runs
the same float forward with float64 weights. CPU times are medians over --repeats rounds in
which the three take turns (one float32 run varies up to 2x on a shared machine). --busy N
keeps N busy-looping processes running while measuring (a loaded machine).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vmm import busy_load, load_args, thread_modes  # noqa: E402
from hil.nn.datasets import load_dataset  # noqa: E402
from hil.runstore import RunWriter  # noqa: E402
from hil.threads import blas_threads  # noqa: E402
from hil.yao2020.hwnet import HardwareMCNN, plan_mcnn, transfer  # noqa: E402
from hil.yao2020.hybrid import HybridConfig, hybrid_train  # noqa: E402
from hil.yao2020.mcnn import CHUNK, forward_float, train_mcnn  # noqa: E402
from sim_backend.chip import SimulatedCrossbar  # noqa: E402


def ideal_logits(params: dict, x: np.ndarray, dtype) -> np.ndarray:
    """Float inference with the weights in `dtype`, in the model's inference chunks."""
    p = {k: v.astype(dtype) for k, v in params.items()}
    return np.concatenate([forward_float(p, x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)])


def timed(fn, clock=time.perf_counter):
    t = clock()
    out = fn()
    return out, clock() - t


def interleaved_cpu(fns: dict, repeats: int) -> dict:
    """Median process CPU time of each function over `repeats` rounds, the functions taking
    turns within a round (a load change on a shared machine hits all of them alike)."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, time.process_time)[1])
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=6, help="ex-situ training epochs before measuring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of CPU-time measurement, median (default 3)")
    ap.add_argument("--quick", action="store_true", help="1,000 images, 1 epoch, 1 round")
    load_args(ap)
    a = ap.parse_args(argv)
    images, epochs, repeats = (1000, 1, 1) if a.quick else (a.images, a.epochs, a.repeats)
    if repeats < 1:
        ap.error(f"--repeats must be at least 1, got {repeats}")
    modes = thread_modes(a.threads)
    ds = load_dataset(seed=a.seed)
    with blas_threads(1):
        model, _ = train_mcnn(ds, epochs=epochs, seed=a.seed)
    x = np.resize(ds.x_test, (images, 28, 28))
    y = np.resize(ds.y_test, images)
    out = {"images": images, "dataset": ds.source, "epochs": epochs, "cpu_repeats": repeats, "busy_processes": a.busy,
           "cpus": os.cpu_count(), "load_avg_1min_start": os.getloadavg()[0]}

    xbar = SimulatedCrossbar(seed=a.seed)
    plan = plan_mcnn(xbar.geometry, model, groups=3)
    with tempfile.TemporaryDirectory() as d, RunWriter.create(Path(d) / "bench.h5", "bench", {}) as w:
        with blas_threads(1):
            transfer(xbar, model, plan, w)
            hw = HardwareMCNN(xbar, model, plan)
            hw.calibrate_adc(ds.x_train[:64])
        with busy_load(a.busy):
            for name, n in modes:
                with blas_threads(n):
                    l32, t32 = timed(lambda: ideal_logits(model.params, x, np.float32))
                    l64, t64 = timed(lambda: ideal_logits(model.params, x, np.float64))
                    lhw, thw = timed(lambda: hw.fc_logits(hw.features(x, 0)))
                    cpu = interleaved_cpu({
                        "float32": lambda: ideal_logits(model.params, x, np.float32),
                        "float64": lambda: ideal_logits(model.params, x, np.float64),
                        "hardware": lambda: hw.fc_logits(hw.features(x, 0))}, repeats)
                out[name] = {"blas_threads": n, "float32_s": t32, "float64_s": t64, "hardware_s": thw,
                             "cpu_s": cpu, "cpu_ratio_vs_f32": cpu["hardware"] / cpu["float32"],
                             "cpu_ratio_vs_f64": cpu["hardware"] / cpu["float64"],
                             "images_per_s": {"float32": images / t32, "float64": images / t64,
                                              "hardware": images / thw},
                             "ratio_vs_f32": thw / t32, "ratio_vs_f64": thw / t64,
                             "accuracy": {"float32": float(np.mean(l32.argmax(1) == y)),
                                          "float64": float(np.mean(l64.argmax(1) == y)),
                                          "hardware": float(np.mean(lhw.argmax(1) == y))}}
            with blas_threads(1):
                sub = ds.subset(0.1, a.seed)
                codes, t_feat = timed(lambda: hw.features(sub.x_train, 0))
                _, t_hybrid = timed(lambda: hybrid_train(hw, codes, sub.y_train, HybridConfig(seed=a.seed)))
    out["hybrid"] = {"digits": len(sub.x_train), "features_s": t_feat, "epochs": HybridConfig.epochs,
                     "fc_training_s": t_hybrid, "total_s": t_feat + t_hybrid}
    if a.json:
        print(json.dumps(out, indent=2))
        return out
    print(f"images: {images} ({ds.source} test digits repeated), {a.busy} busy processes")
    for name, _ in modes:
        r = out[name]
        print(f" {name} ({r['blas_threads']} BLAS threads)")
        for k, t in (("float32", r["float32_s"]), ("float64", r["float64_s"]), ("hardware", r["hardware_s"])):
            print(f"  {'ideal ' + k if k != 'hardware' else 'hardware (G1)':16s} {images / t:9.0f} images/s "
                  f"({t:.2f} s)  accuracy {r['accuracy'][k]:.4f}")
        print(f"  hardware / float32 {r['ratio_vs_f32']:6.1f}x   hardware / float64 {r['ratio_vs_f64']:6.1f}x"
              f"   (CPU time: {r['cpu_ratio_vs_f32']:.1f}x, {r['cpu_ratio_vs_f64']:.1f}x)")
    h = out["hybrid"]
    print(f"hybrid training, {h['digits']} digits: convolver outputs measured once {h['features_s']:.2f} s, "
          f"{h['epochs']} epochs of in-situ FC training {h['fc_training_s']:.2f} s, total {h['total_s']:.2f} s wall")
    return out


if __name__ == "__main__":
    main()
