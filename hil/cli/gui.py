"""`hil gui`: the probe-station GUI, started through the registry (hil never imports `gui`)."""
from __future__ import annotations

import importlib.util

from hil import options as opt
from hil.errors import ConfigError
from hil.registry import resolve


#: what the GUI needs beyond the headless core: the `gui` extra
GUI_MODULES = ("PySide6", "pyqtgraph")


def cmd_gui(args) -> int:
    missing = [m for m in GUI_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the GUI needs {' and '.join(missing)}, which this headless install lacks: "
                          f"install the gui extra with pip install 'memristor-hil[gui]'")
    return resolve("gui")(args)


def add_parsers(sub) -> None:
    """Add `hil gui`."""
    sp = sub.add_parser("gui", help="probe-station GUI (PySide6)")
    sp.add_argument("--station", type=opt.station_spec, help="'sim' or a station TOML file to connect at start")
    sp.add_argument("--seed", type=opt.seed, help="seed of the simulated chip, 0..2**32-1")
    sp.add_argument("--geometry", choices=("yao", "wang", "small"),
                    help="simulated chip geometry (with --station sim; default yao)")
    sp.add_argument("--run", type=opt.record_path, help="run record (.h5) to open")
    sp.add_argument("--screenshot", metavar="DIR", type=opt.out_dir,
                    help="scripted session, every panel as PNG into DIR, then exit (works without a display)")
    sp.add_argument("--size", metavar="WxH",
                    help="window size in pixels, e.g. 1280x800 (with --screenshot: every panel at that size)")
    sp.set_defaults(func=cmd_gui)
