"""What every `hil` command shares: JSON or human output, progress bars, cancel on Ctrl+C, the
station options and opening the station they name, the station snapshot of a record, and where a
simulated chip's state lives. No command is defined here."""
from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from hil import options as opt
from hil.errors import HilError
from hil.progress import CancelToken, Progress
from hil.registry import open_station
from hil.runstore import lifecycle


# ---- output --------------------------------------------------------------------------------
def emit(args, data: dict, human: str) -> None:
    """Print `data` as one JSON object with --json, else the `human` text."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=jsonable))
    else:
        print(human)


def jsonable(o):
    """`json.dumps` default: numpy scalars and arrays, paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def one_line(e: BaseException) -> str:
    """An error message on one line (the CLI's errors are one line each)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


@contextmanager
def progress_bar(args, desc: str, unit: str = "cell"):
    """Progress callback backed by a tqdm bar on a terminal (none with --json or no TTY)."""
    bar = None
    if not getattr(args, "json", False) and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def cb(p: Progress) -> None:
        if bar is not None:
            show_progress(bar, p)
    try:
        yield cb
    finally:
        if bar is not None:
            bar.close()


def show_progress(bar, p: Progress) -> None:
    """Put one progress report on a tqdm bar."""
    bar.total = p.total
    bar.n = p.done
    if p.message:
        bar.set_postfix_str(p.message, refresh=False)
    bar.refresh()


@contextmanager
def cancel_on_sigint():
    """Ctrl+C / SIGTERM set the cancel token: the job stops cleanly at its next step."""
    token = CancelToken()
    handler = lambda signum, frame: token.cancel(f"stopped by signal {signal.Signals(signum).name}")
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield token
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---- options -------------------------------------------------------------------------------
def add_station_options(sp) -> None:
    """--station, --seed, --params and --json, as every command on a station takes them."""
    sp.add_argument("--station", default="sim", type=opt.station_spec,
                    help="'sim' or a station TOML file (default: sim)")
    sp.add_argument("--seed", type=opt.seed, default=None, help="seed of the simulated chip, 0..2**32-1")
    sp.add_argument("--params", type=opt.params_file,
                    help="device parameter file (TOML/JSON) for the simulated chip")
    sp.add_argument("--json", action="store_true", help="print one JSON object")


def add_plot_option(sp, what: str) -> None:
    """--plot DIR, writing `what` PNGs."""
    sp.add_argument("--plot", metavar="DIR", type=opt.out_dir, help=f"write {what} PNGs into this folder")


def pes(spec, n_pe: int) -> list[int]:
    """`--pe` ('all', a list from options.pe_list, or its text) checked against the geometry."""
    if isinstance(spec, str) and spec != "all":
        spec = opt.parse_value(opt.pe_list, spec, "--pe")
    return opt.check_pes(spec, n_pe)


# ---- the station ---------------------------------------------------------------------------
def open_from_args(args, state_path=None):
    """Open the station of --station with --seed and --params (and a chip state file)."""
    opts = {"state_path": state_path} if state_path else {}
    if args.seed is not None:
        opts["seed"] = args.seed
    if getattr(args, "params", None):
        opts["params_path"] = args.params
    return open_station(args.station, **opts)


def station_snapshot(args, xbar) -> dict:
    """The station part of a run record made by a command (hil.runstore.lifecycle's, client "cli")."""
    return lifecycle.station_snapshot(xbar, client="cli", spec=args.station, seed=args.seed)


def chip_identity(xbar) -> Optional[dict]:
    """Identity of a simulated or emulated chip (None for a physical chip, which has no id)."""
    return xbar.describe().get("chip") or getattr(xbar, "chip_identity", None)


def check_same_chip(run: Path, station: dict, xbar) -> None:
    """HilError unless `xbar` is the chip the record `run` was made on (when the record knows)."""
    made_on, now = station.get("chip"), chip_identity(xbar)
    if made_on and made_on != now:
        raise HilError(f"{run}: this record was made on chip {made_on.get('id')} (seed {made_on.get('seed')}), "
                       f"but the station now has chip {now.get('id') if now else 'unknown'}; its chip state file "
                       f"{run.name}.chip.npz is missing or replaced, so resuming would program another chip")


def bundled_station(name: str) -> Path:
    """A station file shipped with memristor-hil (the repository's `stations/`, installed beside `hil`)."""
    return Path(__file__).resolve().parents[2] / "stations" / name


def chip_state_path(out: Path, station: str) -> Optional[Path]:
    """A simulated chip lives beside its run record, as a physical chip lives at the station."""
    return out.with_name(out.name + ".chip.npz") if station == "sim" or station.endswith(".toml") else None
