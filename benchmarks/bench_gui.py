"""GUI benchmarks (offscreen): array-map refresh rate for all 16,384 cells of the Yao chip, the
UI-thread timer p95 while full-chip write-verify runs in the worker thread, and the abort
latency (max over repeats) of write-verify and of hybrid training, with `--busy` processes
spinning on the other cores (a loaded probe-station PC). Prints figures (and `--json`);
asserts nothing.

    python benchmarks/bench_gui.py [--frames 200] [--runs 2] [--repeats 5] [--busy 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from gui import theme  # noqa: E402
from hil.geometry import YAO  # noqa: E402
from hil.threads import configure_blas  # noqa: E402


def bench_map(app, frames: int) -> dict:
    from gui.mapview import MapView
    view = MapView()
    view.resize(1100, 700)
    view.set_geometry(YAO)
    view.set_levels(0, 25)
    view.show()
    app.processEvents()
    rng = np.random.default_rng(0)
    data = [rng.uniform(1, 25, YAO.shape) for _ in range(8)]
    t = time.perf_counter()
    for i in range(frames):
        view.set_data(data[i % 8])
    cpu = frames / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(frames):
        view.set_data(data[i % 8])
        view.viewport().repaint()           # synchronous paint of the whole scene
    painted = frames / (time.perf_counter() - t)
    print(f"array map, {YAO.n_cells:,} cells in {YAO.n_pe} PE images, {view.width()}x{view.height()} px:")
    print(f"  update images only      {cpu:8.1f} frames/s")
    print(f"  update + full repaint   {painted:8.1f} frames/s   (target >= 20)")
    view.close()
    return {"map_frames_per_s": cpu, "map_repaint_frames_per_s": painted}


def _spin() -> None:
    while True:
        pass


def _window(tmp: str):
    from gui.mainwindow import MainWindow
    win = MainWindow(settings=QSettings(str(Path(tmp) / "s.ini"), QSettings.IniFormat))
    win.resize(1500, 950)
    win.show()
    st = win.panels["station"]
    st.set_choice("sim", 0, "yao")
    st.connect_station()
    win.s.wait_idle()
    return win


def _abort_after(app, win, n_partials: int, when: float) -> tuple[float, float] | None:
    """Abort the running job `when` s after its `n_partials`-th live update (or progress);
    (abort -> stage saw it, abort -> job ended) in seconds, None if it ended first."""
    seen = []
    win.s.job.progressed.connect(lambda _: seen.append(1))
    while win.s.job is not None and len(seen) < n_partials:
        app.processEvents()
    t = time.monotonic() + when
    while win.s.job is not None and time.monotonic() < t:
        app.processEvents()
    if win.s.job is None:
        return None
    win.s.abort("benchmark")
    win.s.wait_idle()
    out = (win.s.last_abort_stop_s, win.s.last_abort_latency_s)
    win.s.last_abort_latency_s = win.s.last_abort_stop_s = None
    return out


def _summary(lat: list) -> dict:
    a = np.array(lat) * 1e3
    return {"n": int(a.shape[0]), "stage_max_ms": float(a[:, 0].max()), "job_max_ms": float(a[:, 1].max()),
            "job_mean_ms": float(a[:, 1].mean())}


def bench_programming(app, win, tmp: str, runs: int, repeats: int) -> dict:
    prog = win.panels["programming"]
    prog.folder.setText(tmp)
    prog.pes.setText("all")
    prog.pattern.setCurrentText("random")       # a new random target per run: every cell must move
    win.show_panel("programming")

    period_ms = 10
    ticks: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    timer = QTimer()
    timer.setInterval(period_ms)
    timer.timeout.connect(lambda: ticks.append(clock.nsecsElapsed() / 1e6))
    timer.start()
    t0 = time.perf_counter()
    for k in range(runs):
        prog.seed.setValue(k + 1)
        prog.start()
        win.s.wait_idle()
    wall = time.perf_counter() - t0
    timer.stop()
    gaps = np.diff(ticks)
    s = prog.report.summary()
    print(f"UI timer during write-verify of all {YAO.n_cells:,} cells ({runs} runs, {wall:.2f} s):")
    print(f"  {period_ms} ms timer: {gaps.size} ticks, interval p50 {np.median(gaps):.1f} ms, "
          f"p95 {np.percentile(gaps, 95):.1f} ms, max {gaps.max():.1f} ms")
    print(f"  last run: {100 * s['in_band_fraction']:.2f}% in band, mean {s['mean_pulses']:.1f} pulses")

    rng = np.random.default_rng(0)
    lat = []
    for k in range(repeats):
        prog.seed.setValue(100 + k)
        prog.start()
        r = _abort_after(app, win, 2, float(rng.uniform(0, 0.3)))
        if r is not None:
            lat.append(r)
    out = {"ui_timer_period_ms": period_ms, "ui_timer_p50_ms": float(np.median(gaps)),
           "ui_timer_p95_ms": float(np.percentile(gaps, 95)), "ui_timer_max_ms": float(gaps.max()),
           "programming_wall_s": wall / runs}
    if lat:
        out["abort_write_verify"] = _summary(lat)
        _print_abort("write-verify (full chip)", out["abort_write_verify"])
    return out


def bench_hybrid(app, win, tmp: str, repeats: int) -> dict:
    net = win.panels["network"]
    net.folder.setText(tmp)
    net.fraction.setValue(0.05)
    net.epochs.setValue(1)
    net.train()
    win.s.wait_idle()
    net.groups.setValue(3)
    net.start_transfer()
    win.s.wait_idle()
    hyb = win.panels["hybrid"]
    hyb.folder.setText(tmp)
    hyb.fraction.setValue(0.25)
    hyb.epochs.setValue(3)
    hyb.test_images.setValue(200)
    rng = np.random.default_rng(1)
    lat = []
    for k in range(repeats):
        hyb.seed.setValue(k)
        hyb.start()
        r = _abort_after(app, win, 3, float(rng.uniform(0, 0.3)))
        if r is not None:
            lat.append(r)
    if not lat:
        return {}
    out = _summary(lat)
    _print_abort("hybrid training", out)
    return {"abort_hybrid": out}


def _print_abort(what: str, a: dict) -> None:
    print(f"  abort {what}: the stage saw it within {a['stage_max_ms']:.0f} ms, the job ended within "
          f"{a['job_max_ms']:.0f} ms (mean {a['job_mean_ms']:.0f} ms) over {a['n']} aborts; bound 500 ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200, help="array-map frames to draw")
    ap.add_argument("--runs", type=int, default=2, help="full-chip programming runs timed")
    ap.add_argument("--repeats", type=int, default=5, help="aborts per job kind")
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes started meanwhile (load)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    a = ap.parse_args()
    configure_blas()
    app = QApplication.instance() or QApplication(["bench"])
    theme.apply(app)
    busy = [mp.Process(target=_spin, daemon=True) for _ in range(a.busy)]
    for p in busy:
        p.start()
    print(f"{a.busy} busy-loop processes running, {os.cpu_count()} cores")
    tmp = tempfile.TemporaryDirectory(prefix="bench-gui-")
    try:
        res = {"busy_processes": a.busy, "cores": os.cpu_count()}
        res.update(bench_map(app, a.frames))
        win = _window(tmp.name)
        res.update(bench_programming(app, win, tmp.name, a.runs, a.repeats))
        res.update(bench_hybrid(app, win, tmp.name, a.repeats))
        win.close()
    finally:
        for p in busy:
            p.terminate()
            p.join()
        tmp.cleanup()
    if a.json:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
