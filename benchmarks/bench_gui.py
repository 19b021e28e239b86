"""GUI benchmarks (offscreen): array-map refresh rate for all 16,384 cells of the Yao chip, and
UI-thread latency (timer jitter) while full-chip write-verify runs in the worker thread, plus the
time from Abort to the job having stopped. Prints figures; asserts nothing.

    python benchmarks/bench_gui.py [--frames 200]
"""
from __future__ import annotations

import argparse
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


def bench_map(app, frames: int) -> None:
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


def bench_programming(app, runs: int) -> None:
    from gui.mainwindow import MainWindow
    tmp = tempfile.TemporaryDirectory(prefix="bench-gui-")
    win = MainWindow(settings=QSettings(str(Path(tmp.name) / "s.ini"), QSettings.IniFormat))
    win.resize(1500, 950)
    win.show()
    st = win.panels["station"]
    st.set_choice("sim", 0, "yao")
    st.connect_station()
    win.s.wait_idle()
    prog = win.panels["programming"]
    prog.folder.setText(tmp.name)
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
    partials = []
    win.s.job_started.connect(lambda _: prog.s.job.partial.connect(lambda d: partials.append(1)))
    timer.start()
    t0 = time.perf_counter()
    for k in range(runs):
        prog.seed.setValue(k + 1)
        prog.start()
        win.s.wait_idle()
    wall = time.perf_counter() - t0
    timer.stop()
    gaps = np.diff(ticks)
    late = gaps - period_ms
    s = prog.report.summary()
    print(f"UI latency during write-verify of all {YAO.n_cells:,} cells ({runs} runs, {wall:.2f} s, "
          f"{len(partials)} live updates of CDF + histogram + map):")
    print(f"  {period_ms} ms UI timer: {gaps.size} ticks, interval p50 {np.median(gaps):.1f} ms, "
          f"p95 {np.percentile(gaps, 95):.1f} ms, max {gaps.max():.1f} ms "
          f"(worst lateness {late.max():.1f} ms)")
    print(f"  last run: {100 * s['in_band_fraction']:.2f}% in band, mean {s['mean_pulses']:.1f} pulses")

    # abort: Esc during a full-chip run, time until the worker has stopped
    lat = []
    for k in range(5):
        prog.seed.setValue(100 + k)
        prog.start()
        while win.s.job is not None and not partials:
            app.processEvents()
        t_first = len(partials)
        while win.s.job is not None and len(partials) == t_first:
            app.processEvents()
        if win.s.job is None:
            continue
        win.s.abort("benchmark")
        win.s.wait_idle()
        if win.s.last_abort_latency_s is not None:
            lat.append(win.s.last_abort_latency_s)
        win.s.last_abort_latency_s = None
    if lat:
        print(f"  abort -> job stopped: mean {1e3 * np.mean(lat):.1f} ms, max {1e3 * max(lat):.1f} ms "
              f"over {len(lat)} aborts (requirement < 500 ms)")
    win.close()
    tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    configure_blas()
    app = QApplication.instance() or QApplication(["bench"])
    theme.apply(app)
    bench_map(app, a.frames)
    bench_programming(app, a.runs)


if __name__ == "__main__":
    main()
