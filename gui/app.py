"""Entry point of `hil gui`: build the application and window, optionally connect a station and
open a run, or run a short scripted session and render every panel to PNG (`--screenshot`)."""
from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
import tempfile
from ctypes.util import find_library
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger(__name__)
#: how often Python gets the chance to run a signal handler while Qt's loop runs, ms
SIGNAL_POLL_MS = 200

OPTIONS = ("station", "run", "screenshot", "seed", "geometry", "size")
GEOMETRIES = ("yao", "wang", "small")
SHOT_SIZE = (1560, 980)
#: window sizes `--size` accepts, pixels (the layout holds from 1280 × 800 up)
MIN_SIZE, MAX_SIZE = (1280, 800), (7680, 4320)
MAX_GUI_SEED = 2**31 - 1        # the station panel's seed box is a 32-bit signed spin box

#: libraries Qt's xcb platform plugin loads on Linux (find_library name -> Debian/Ubuntu package)
XCB_LIBS = {
    "xcb": "libxcb1", "X11-xcb": "libx11-xcb1", "xcb-cursor": "libxcb-cursor0", "xcb-icccm": "libxcb-icccm4",
    "xcb-image": "libxcb-image0", "xcb-keysyms": "libxcb-keysyms1", "xcb-randr": "libxcb-randr0",
    "xcb-render-util": "libxcb-render-util0", "xcb-shape": "libxcb-shape0", "xcb-shm": "libxcb-shm0",
    "xcb-sync": "libxcb-sync1", "xcb-xfixes": "libxcb-xfixes0", "xcb-xkb": "libxcb-xkb1",
    "xcb-util": "libxcb-util1", "xkbcommon-x11": "libxkbcommon-x11-0",
}
#: libraries PySide6.QtGui itself needs, on every platform (soname stem -> Debian/Ubuntu package)
QT_GUI_LIBS = {
    "EGL": "libegl1", "GL": "libgl1", "GLX": "libglx0", "OpenGL": "libopengl0", "xkbcommon": "libxkbcommon0",
    "fontconfig": "libfontconfig1", "freetype": "libfreetype6", "dbus-1": "libdbus-1-3", "X11": "libx11-6",
    "glib-2.0": "libglib2.0-0", **XCB_LIBS,
}
HEADLESS_HINT = "set QT_QPA_PLATFORM=offscreen for a run without a screen (hil gui --screenshot DIR does)"


def _find_library(name: str) -> Optional[str]:
    """ctypes.util.find_library (a seam for tests)."""
    return find_library(name)


def _x_display_reachable() -> Optional[bool]:
    """True/False whether libxcb can connect to $DISPLAY; None if libxcb cannot be asked."""
    path = _find_library("xcb")
    if not path:
        return None
    try:
        xcb = ctypes.CDLL(path)
        xcb.xcb_connect.restype = ctypes.c_void_p
        xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
        xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    conn = xcb.xcb_connect(None, None)      # never NULL: an error connection on failure
    try:
        return xcb.xcb_connection_has_error(conn) == 0
    finally:
        xcb.xcb_disconnect(conn)


def _platform() -> str:
    """The Qt platform plugin that will be used: QT_QPA_PLATFORM's first entry, '' if Qt picks."""
    value = os.environ.get("QT_QPA_PLATFORM", "").strip()
    return value.split(";")[0].split(":")[0].strip().lower()


def qt_problem() -> Optional[str]:
    """Why Qt cannot start here (one line naming what is missing and the fix), or None.

    Checked before a QApplication exists: without a display or a library Qt aborts the process."""
    if not sys.platform.startswith("linux"):
        return None
    plat = _platform()
    display, wayland = os.environ.get("DISPLAY"), os.environ.get("WAYLAND_DISPLAY")
    if not plat and not (display or wayland):
        return (f"no display: DISPLAY and WAYLAND_DISPLAY are not set; run it in a desktop session "
                f"(or ssh -X), or {HEADLESS_HINT}")
    if plat == "xcb" and not display:
        return f"QT_QPA_PLATFORM=xcb but DISPLAY is not set; {HEADLESS_HINT}"
    if plat.startswith("wayland") and not wayland:
        return f"QT_QPA_PLATFORM={plat} but WAYLAND_DISPLAY is not set; {HEADLESS_HINT}"
    try:
        import PySide6.QtGui  # noqa: F401
        import PySide6.QtWidgets  # noqa: F401
    except (ImportError, OSError) as e:
        m = re.search(r"lib([A-Za-z0-9_.+-]+?)\.so", str(e))
        first = [QT_GUI_LIBS[m.group(1)]] if m and m.group(1) in QT_GUI_LIBS else []
        pkgs = dict.fromkeys(first + ["libegl1", "libgl1", "libxkbcommon0", "libfontconfig1", "libdbus-1-3"])
        return (f"Qt cannot be loaded ({' '.join(str(e).split())}); install its system libraries "
                f"(Debian/Ubuntu: sudo apt install {' '.join(pkgs)})")
    if plat == "xcb" or (not plat and display and not wayland):
        if _find_library("xcb") is None:      # the lookup itself does not work here: let Qt try
            return None
        missing = [pkg for lib, pkg in XCB_LIBS.items() if _find_library(lib) is None]
        if missing:
            return (f"Qt's xcb platform plugin cannot load: missing {', '.join(missing)} "
                    f"(Debian/Ubuntu: sudo apt install {' '.join(missing)}); or {HEADLESS_HINT}")
        if _x_display_reachable() is False:
            return f"cannot connect to the X display DISPLAY={display}; check it (xdpyinfo), or {HEADLESS_HINT}"
    return None


def check_options(opts: dict) -> None:
    """Check station, run, screenshot folder, seed and geometry before Qt starts (ConfigError)."""
    from hil import options as opt
    from hil.errors import ConfigError
    if opts["station"] and opts["station"] != "sim":
        from hil.registry import load_station_file
        opt.parse_value(opt.station_spec, opts["station"], "--station")
        load_station_file(opts["station"])
    if opts["run"]:
        opt.parse_value(opt.record_path, opts["run"], "--run")
    if opts["screenshot"]:
        opt.parse_value(opt.out_dir, opts["screenshot"], "--screenshot")
    if opts["seed"] is not None:
        if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int) or not 0 <= opts["seed"] <= MAX_GUI_SEED:
            raise ConfigError(f"--seed: the GUI takes seeds 0..{MAX_GUI_SEED}, got {opts['seed']!r}")
    if opts["geometry"] is not None and opts["geometry"] not in GEOMETRIES:
        raise ConfigError(f"--geometry must be one of {', '.join(GEOMETRIES)}, got {opts['geometry']!r}")
    if opts["size"] is not None:
        parse_size(opts["size"])


def parse_size(text) -> tuple[int, int]:
    """'1280x800' -> (1280, 800); ConfigError names what is wrong."""
    from hil.errors import ConfigError
    if isinstance(text, tuple):
        text = "x".join(map(str, text))
    m = re.fullmatch(r"\s*(\d{1,5})\s*[x×]\s*(\d{1,5})\s*", str(text))
    if not m:
        raise ConfigError(f"--size must be WIDTHxHEIGHT in pixels, e.g. 1280x800; got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if not (MIN_SIZE[0] <= w <= MAX_SIZE[0] and MIN_SIZE[1] <= h <= MAX_SIZE[1]):
        raise ConfigError(f"--size {w}x{h} is outside {MIN_SIZE[0]}x{MIN_SIZE[1]} … {MAX_SIZE[0]}x{MAX_SIZE[1]}")
    return w, h


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
    from hil.errors import HilError
    from hil.threads import configure_blas
    try:
        check_options(opts)
        configure_blas()
    except HilError as e:
        return _fail(str(e))
    if opts["screenshot"] and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if "PySide6.QtWidgets" not in sys.modules or _no_app():
        problem = qt_problem()
        if problem:
            return _fail(problem)
    from PySide6.QtWidgets import QApplication

    from . import theme
    app = QApplication.instance() or QApplication(sys.argv[:1] or ["hil-gui"])
    app.setApplicationName("hil-gui")
    theme.apply(app)
    if opts["screenshot"]:
        return screenshot_session(Path(opts["screenshot"]), station=opts["station"] or "sim",
                                  seed=opts["seed"] or 0, geometry=opts["geometry"] or "yao",
                                  size=parse_size(opts["size"]) if opts["size"] else SHOT_SIZE)
    from .mainwindow import MainWindow
    win = MainWindow()
    if opts["size"]:
        win.resize(*parse_size(opts["size"]))
    _startup(win, opts)
    restore = close_on_sigint(win)
    win.show()
    try:
        return int(app.exec())
    finally:
        restore()


def close_on_sigint(win) -> Callable[[], None]:
    """Ctrl+C in the launching terminal closes `win` (running job aborted, outputs off). Qt's
    event loop does not run Python code by itself, so a timer lets Python see the signal.
    Returns the function that restores the previous handler."""
    from PySide6.QtCore import QTimer
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame) -> None:
        log.warning("Ctrl+C: closing the window (the running job is aborted, outputs off)")
        QTimer.singleShot(0, win.close)

    signal.signal(signal.SIGINT, handler)
    timer = QTimer(win)
    timer.timeout.connect(lambda: None)
    timer.start(SIGNAL_POLL_MS)

    def restore() -> None:
        timer.stop()
        signal.signal(signal.SIGINT, previous)
    return restore


def _fail(message: str) -> int:
    print(f"hil gui: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _no_app() -> bool:
    from PySide6.QtWidgets import QApplication
    return QApplication.instance() is None


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


def _record_error(win, title: str, text: str) -> None:
    win.errors.append((title, text))
    log.error("%s: %s", title, text.split("\n")[0])


def cnn_fits(geometry, groups: int = 3) -> bool:
    """True if the mCNN with `groups` convolver groups fits `geometry`."""
    from hil.errors import ConfigError
    from hil.yao2020.hwnet import plan_mcnn
    from hil.yao2020.mcnn import MCNN
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


def insitu_session(win, runs_dir: Path, *, train_samples: int = 1000, epochs: int = 2, test_samples: int = 300,
                   eval_every: int = 2) -> bool:
    """Scripted Wang 2019 session for the screenshots: yield scan, then a short CNN training in situ
    (20 batches of 100). False when the station is not of the Wang geometry (no scan) or the CNN
    does not fit the good lines it found (no training)."""
    p = win.panels["insitu"]
    if p.station_reason():
        log.info("screenshot session: In-situ tab left idle: %s", p.station_reason())
        return False
    p.folder.setText(str(runs_dir))
    p.run_yield_scan()
    _wait(win, "the yield scan")
    p.net.setCurrentIndex(p.net.findData("cnn"))
    if p.start_refusal():
        log.info("screenshot session: no in-situ training: %s", p.start_refusal())
        return False
    p.train_samples.setValue(train_samples)
    p.epochs.setValue(epochs)
    p.test_samples.setValue(test_samples)
    p.eval_every.setValue(eval_every)
    p.start()
    _wait(win, "in-situ training")
    return True


def lab_session(win, runs_dir: Path, *, cycles: int = 2, n_cells: int = 4) -> None:
    """The Lab tab's curve tracer, run from its panel as a click would: `cycles` I–V cycles of
    `n_cells` cells in the last row of the last PE (away from the programmed and CNN blocks)."""
    g = win.s.geometry
    lab = win.panels["lab"]
    lab.folder.setText(str(runs_dir))
    tracer = lab.show_module("curve-tracer")
    tracer.form.set_values({"cycles": cycles})
    tracer.cells.setText(f"{g.n_pe - 1}:{g.rows - 1}:0-{min(n_cells, g.cols) - 1}")
    if not tracer.start():
        raise RuntimeError(f"screenshot session: the curve tracer was refused: {tracer.reason.text()}")
    _wait(win, "the curve tracer")


def sweep_session(win, runs_dir: Path, *, seeds: str = "0-2", max_pulses: tuple = (5, 10, 20, 40)) -> None:
    """A tiny write-verify sweep through `hil.sweep.run_sweep` (one 16 × 16 PE, pulse budgets
    `max_pulses` × `seeds`, one worker) into `runs_dir`/sweep, opened in the Sweeps tab. The
    dask cluster's INFO lines are kept out of the log pane."""
    import time

    import distributed  # noqa: F401  (its loggers exist from here on, each with its own level)

    from hil.sweep import parse_spec, run_sweep
    spec = parse_spec({"sweep": {"target": "write_verify", "seeds": seeds,
                                 "geometry": {"n_pe": 1, "rows": 16, "cols": 16},
                                 "description": "screenshot session: in-band fraction against the pulse budget"},
                       "axis": [{"name": "config.program.max_pulses", "values": list(max_pulses)}]})
    t0 = time.perf_counter()
    dask_logs = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.split(".")[0] == "distributed"]
    levels = [lg.level for lg in dask_logs]
    for lg in dask_logs:
        lg.setLevel(logging.WARNING)
    try:
        outcome = run_sweep(spec, runs_dir / "sweep", workers=1)
    finally:
        for lg, level in zip(dask_logs, levels):
            lg.setLevel(level)
    log.info("screenshot session: sweep of %d points in %.1f s", outcome.points, time.perf_counter() - t0)
    sweeps = win.panels["sweeps"]
    sweeps.open_folder(runs_dir / "sweep")
    sweeps.figure_box.setCurrentText("in_band_fraction")


def screenshot_session(out_dir: Path, *, station: str = "sim", seed: int = 0, geometry: str = "yao",
                       settings=None, size: tuple[int, int] = SHOT_SIZE) -> int:
    """Scripted session on the (simulated) station, then every tab rendered to `out_dir`/NN-key.png.

    Reads the array, runs an I–V sweep on one cell, programs PE 0 to 32 levels, runs a read
    disturb (1e6 reads) and a 30-day drift on those cells, selects a programmed cell for its
    history and opens the programming run on the Runs tab; then, when the mCNN fits the chip,
    a short CNN session (`cnn_session`) for the Network, Convolver and Hybrid-training tabs, and
    on a Wang-geometry station a short in-situ training (`insitu_session`) for the In-situ tab;
    last a curve tracer on the Lab tab (`lab_session`) and a tiny sweep for the Sweeps tab
    (`sweep_session`)."""
    from PySide6.QtCore import QSettings

    from hil.geometry import Cells

    from .mainwindow import MainWindow
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = out_dir / "runs"
    tmp = tempfile.TemporaryDirectory(prefix="hil-gui-shot-")
    if settings is None:
        settings = QSettings(str(Path(tmp.name) / "settings.ini"), QSettings.IniFormat)
    win = MainWindow(settings=settings)
    win.s.error.disconnect(win.show_error)      # no modal dialog in a scripted session: it would wait forever
    win.s.error.connect(lambda title, text: _record_error(win, title, text))
    win.resize(*size)
    win.show()
    try:
        st = win.panels["station"]
        st.set_choice(station, seed, geometry)
        st.connect_station()
        try:
            _wait(win, "connecting")
        except RuntimeError as e:
            print(f"hil gui: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
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

        amap.auto_range()
        g = win.s.geometry
        win.s.select_cells(Cells(0, min(10, g.rows - 1), min(5, g.cols - 1)))
        amap._hover(0, min(10, g.rows - 1), min(5, g.cols - 1))     # as if the mouse rested there
        runs = win.panels["runs"]
        runs.open_run(prog.out)
        cnn_session(win, runs_dir)
        insitu_session(win, runs_dir)
        lab_session(win, runs_dir)
        sweep_session(win, runs_dir)

        win.tabs.setCurrentIndex(1)
        files = win.save_screenshots(out_dir)
        for p in files:
            print(p)
        return 0
    except RuntimeError as e:
        print(f"hil gui: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    finally:
        win.close()
        tmp.cleanup()
