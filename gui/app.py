"""Entry point of `hil gui`: build the application and window, optionally connect a station and
open a run, or run a short scripted session and render every panel to PNG (`--screenshot`)."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

OPTIONS = ("station", "run", "screenshot", "seed", "geometry")
SHOT_SIZE = (1560, 980)


def _options(args, kwargs) -> dict:
    opts = dict.fromkeys(OPTIONS)
    if args is not None:
        src = vars(args) if hasattr(args, "__dict__") else dict(args)
        opts.update({k: src[k] for k in OPTIONS if k in src})
    unknown = set(kwargs) - set(OPTIONS)
    if unknown:
        raise TypeError(f"gui.app.main: unknown option(s) {sorted(unknown)}; known: {list(OPTIONS)}")
    opts.update(kwargs)
    return opts


def main(args=None, /, **kwargs) -> int:
    """Run the GUI. `args`: an argparse Namespace (or dict) with any of station ('sim' or a
    station file), run (run record .h5 to open), screenshot (folder: scripted session, PNGs,
    exit), seed (simulated chip), geometry ('yao' | 'wang' | 'small' for 'sim'); keyword
    arguments override it. Returns the exit code."""
    opts = _options(args, kwargs)
    if opts["screenshot"] and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from . import theme
    app = QApplication.instance() or QApplication(sys.argv[:1] or ["hil-gui"])
    app.setApplicationName("hil-gui")
    theme.apply(app)
    if opts["screenshot"]:
        return screenshot_session(Path(opts["screenshot"]), station=opts["station"] or "sim",
                                  seed=opts["seed"] or 0, geometry=opts["geometry"] or "yao")
    from .mainwindow import MainWindow
    win = MainWindow()
    _startup(win, opts)
    win.show()
    return int(app.exec())


def _startup(win, opts: dict) -> None:
    """Connect the station given on the command line and open the run given with --run."""
    station = win.panels["station"]
    if opts["station"]:
        station.set_choice(opts["station"], opts["seed"], opts["geometry"] or "yao")
        station.connect_station()
    if opts["run"]:
        runs = win.panels["runs"]
        if runs.open_run(opts["run"]):
            win.s.set_run(Path(opts["run"]))
            if opts["station"]:   # load its snapshot into the map once the station is up
                def once():
                    win.s.connection_changed.disconnect(once)
                    runs.use_for_map()
                win.s.connection_changed.connect(once)
            win.show_panel("runs")


def _wait(win, what: str, timeout_ms: int = 120_000) -> None:
    from PySide6.QtWidgets import QApplication
    QApplication.processEvents()
    if not win.s.wait_idle(timeout_ms):
        raise RuntimeError(f"screenshot session: {what} did not finish in {timeout_ms / 1000:.0f} s")
    QApplication.processEvents()
    if win.errors:
        raise RuntimeError(f"screenshot session: {what} failed: {win.errors[-1][1]}")


def cnn_fits(geometry, groups: int = 3) -> bool:
    """True if the mCNN with `groups` convolver groups fits `geometry`."""
    from hil.errors import ConfigError
    from hil.hwnet import plan_mcnn
    from hil.mcnn import MCNN
    try:
        plan_mcnn(geometry, MCNN(seed=0), groups)
    except ConfigError:
        return False
    return True


def cnn_session(win, runs_dir: Path, *, fraction: float = 1.0, epochs: int = 3, digit: int = 7,
                hybrid_fraction: float = 0.1, hybrid_epochs: int = 4, test_images: int = 300) -> bool:
    """Scripted CNN session for the screenshots: train ex situ, transfer on 3 groups, convolve one
    test digit, run hybrid training on all groups. Skipped (False) when the mCNN does not fit."""
    if not cnn_fits(win.s.geometry):
        log.info("screenshot session: the mCNN does not fit %s; CNN tabs left idle", win.s.geometry)
        win.panels["network"].update_plan()
        return False
    net = win.panels["network"]
    net.fraction.setValue(fraction)
    net.epochs.setValue(epochs)
    net.folder.setText(str(runs_dir))
    net.train()
    _wait(win, "mCNN training")
    net.groups.setValue(3)
    net.start_transfer()
    _wait(win, "weight transfer")
    conv = win.panels["convolver"]
    conv.auto.setChecked(False)
    conv.index.setValue(digit)
    conv.run()
    _wait(win, "the convolver")
    hyb = win.panels["hybrid"]
    hyb.folder.setText(str(runs_dir))
    hyb.fraction.setValue(hybrid_fraction)
    hyb.epochs.setValue(hybrid_epochs)
    hyb.test_images.setValue(test_images)
    hyb.start()
    _wait(win, "hybrid training")
    return True


def screenshot_session(out_dir: Path, *, station: str = "sim", seed: int = 0, geometry: str = "yao",
                       settings=None) -> int:
    """Scripted session on the (simulated) station, then every tab rendered to `out_dir`/NN-key.png.

    Reads the array, runs an I–V sweep on one cell, programs PE 0 to 32 levels, runs a read
    disturb (1e6 reads) and a 30-day drift on those cells, selects a programmed cell for its
    history and opens the programming run on the Runs tab; then, when the mCNN fits the chip,
    a short CNN session (`cnn_session`) for the Network, Convolver and Hybrid-training tabs."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from hil.geometry import Cells

    from .mainwindow import MainWindow
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = out_dir / "runs"
    tmp = tempfile.TemporaryDirectory(prefix="hil-gui-shot-")
    if settings is None:
        settings = QSettings(str(Path(tmp.name) / "settings.ini"), QSettings.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(*SHOT_SIZE)
    win.show()
    try:
        st = win.panels["station"]
        st.set_choice(station, seed, geometry)
        st.connect_station()
        _wait(win, "connecting")
        amap = win.panels["arraymap"]
        amap.read_array()
        _wait(win, "reading the array")

        ops = win.panels["cellops"]
        ops.runs_dir = runs_dir
        win.s.select_cells(Cells(min(1, win.s.geometry.n_pe - 1), 2, 3))
        ops.do_iv()
        _wait(win, "the I–V sweep")

        prog = win.panels["programming"]
        prog.folder.setText(str(runs_dir))
        prog.pes.setText("0")
        prog.start()
        _wait(win, "programming")

        exp = win.panels["experiments"]
        exp.folder.setText(str(runs_dir))
        exp.reads.setValue(1_000_000)
        exp.start_read_disturb()
        _wait(win, "read disturb")
        exp.start_drift()
        _wait(win, "drift")

        amap.lo.setValue(0.0)
        amap.hi.setValue(22.0)
        g = win.s.geometry
        win.s.select_cells(Cells(0, min(10, g.rows - 1), min(5, g.cols - 1)))
        amap._hover(0, min(10, g.rows - 1), min(5, g.cols - 1))     # as if the mouse rested there
        runs = win.panels["runs"]
        runs.open_run(prog.out)
        cnn_session(win, runs_dir)

        files = []
        for i in range(win.tabs.count()):
            win.tabs.setCurrentIndex(i)
            for _ in range(3):
                QApplication.processEvents()
            key = list(win.panels)[i]
            path = out_dir / f"{i + 1:02d}-{key}.png"
            win.grab().save(str(path), "PNG")
            files.append(path)
        win.tabs.setCurrentIndex(1)
        QApplication.processEvents()
        for p in files:
            print(p)
        return 0
    except RuntimeError as e:
        print(f"hil gui: {e}", file=sys.stderr)
        return 1
    finally:
        win.close()
        tmp.cleanup()
