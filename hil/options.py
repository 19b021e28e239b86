"""Validators of command-line options, one place for every front end that parses text.

Each is an argparse `type=` function: it returns the parsed value or raises
`argparse.ArgumentTypeError`, whose message argparse prints as `argument --x: <message>`.
They only look (nothing is created or opened for writing). Checks that need the station (a PE
list against the geometry, say) are done by the commands after the station is open and before
any work starts.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable, Union

from hil.errors import ConfigError

# ---- named maxima (with the reason for each) ---------------------------------------------------
#: seeds feed numpy generators and are stored in records; 32 bits is what every generator takes
MAX_SEED = 2**32 - 1
#: 7-bit level tables: at 2–20 µS the in-band window of 128 levels is ±57 nS, already below the
#: read noise at the top of the window (0.4 % of 20 µS = 80 nS), so write-verify cannot confirm finer tables
MAX_LEVELS = 128
#: write-verify pulses per cell: the default 150 reaches every band the ramps can reach; more only wears the cell
MAX_PULSES = 2000
#: averaged reads per cell: the array board's READ_CELLS n_avg field is 1..1024 (docs/board-protocol.md)
MAX_N_AVG = 1024
#: PE numbers: no geometry has more than 2**16 PEs (hil.geometry)
MAX_PE = 2**16
#: cells of `station check`'s dry-run job: a smoke test; one Wang PE has 8192 cells, a Yao PE 2048
MAX_CHECK_CELLS = 2**16
#: ex-situ training epochs: the default 12 converges; 1000 is hours of CPU that only overfit
MAX_TRAIN_EPOCHS = 1000
#: hybrid-training epochs: each one programs the FC cells again (Yao used a few); 100 nears the cells' endurance
MAX_HYBRID_EPOCHS = 100
#: hybrid learning rate, weight levels per mini-batch for an RMS gradient: one level is twice the
#: programming threshold (0.5 level) and 50x the default; larger steps throw the ±7-level weights to their ends
MAX_LR_LEVELS = 1.0
#: convolver groups: each holds every convolution layer (2 PEs in the Yao geometry); the plan checks the chip
MAX_GROUPS = 64
#: TCP ports
MAX_PORT = 65535


class OptionError(ConfigError):
    """A command-line option is malformed (raised by the `hil` parser instead of exiting)."""


def _fail(msg: str):
    raise argparse.ArgumentTypeError(msg)


# ---- numbers -----------------------------------------------------------------------------------
def _as_int(text: str):
    """Decimal digits, or a number such as 1e6 that is exactly an integer; else None."""
    s = str(text).strip()
    try:
        return int(s, 10)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else None


def integer(lo: int, hi: int, why: str = "") -> Callable[[str], int]:
    """An integer in lo..hi (digits, or 1e6-style when exactly an integer; no fractions, no expressions)."""
    why = f" ({why})" if why else ""

    def parse(text: str) -> int:
        v = _as_int(text)
        if v is None:
            _fail(f"must be an integer in {lo}..{hi}{why}, got {text!r}")
        if not lo <= v <= hi:
            _fail(f"must be an integer in {lo}..{hi}{why}, got {str(text).strip()}")
        return v
    parse.__name__ = f"integer {lo}..{hi}"
    return parse


def positive_int(max: int, why: str = "") -> Callable[[str], int]:   # noqa: A002 - reads as the option's bound
    """An integer in 1..max."""
    return integer(1, max, why)


seed = integer(0, MAX_SEED, "a 32-bit seed")


def finite_float(lo: float, hi: float, *, lo_open: bool = False, why: str = "",
                 unit: str = "") -> Callable[[str], float]:
    """A finite number in [lo, hi] ((lo, hi] with lo_open)."""
    rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" + (f" {unit}" if unit else "")
    why = f" ({why})" if why else ""

    def parse(text: str) -> float:
        try:
            v = float(str(text).strip())
        except ValueError:
            _fail(f"must be a number in {rng}{why}, got {text!r}")
        if not math.isfinite(v):
            _fail(f"must be a finite number in {rng}{why}, got {text!r}")
        if v < lo or v > hi or (lo_open and v == lo):
            _fail(f"must be in {rng}{why}, got {v:g}")
        return v
    parse.__name__ = f"number in {rng}"
    return parse


fraction = finite_float(0.0, 1.0, lo_open=True, why="a fraction of the training set")
port = integer(0, MAX_PORT, "0 picks free ports")


def pe_list(text: str) -> Union[str, list]:
    """'all' or comma-separated distinct PE numbers (checked against the geometry later)."""
    s = str(text).strip()
    if s == "all":
        return "all"
    parts = [p.strip() for p in s.split(",")]
    try:
        pes = [int(p, 10) for p in parts]
    except ValueError:
        _fail(f"must be 'all' or comma-separated PE numbers such as 0,1,2, got {text!r}")
    bad = [p for p in pes if not 0 <= p < MAX_PE]
    if bad:
        _fail(f"PE numbers start at 0 and are below {MAX_PE}, got {bad[0]}")
    if len(set(pes)) != len(pes):
        _fail(f"lists a PE twice: {text!r}")
    return pes


def group_spec(text: str) -> Union[str, int]:
    """'all' or a convolver group number 1..MAX_GROUPS (checked against the run's plan later)."""
    s = str(text).strip()
    if s == "all":
        return "all"
    try:
        g = int(s, 10)
    except ValueError:
        g = 0
    if not 1 <= g <= MAX_GROUPS:
        _fail(f"must be 'all' or a convolver group number 1..N, got {text!r}")
    return g


# ---- stations and files -------------------------------------------------------------------------
def station_spec(text: str) -> str:
    """'sim' (or another registered backend name) or an existing station file."""
    s = str(text)
    if s == "sim":
        return s
    p = Path(s)
    if p.is_dir():
        _fail(f"{s} is a directory; give 'sim' or a station TOML file")
    if p.is_file():
        return s
    from hil.registry import available_backends
    if s in available_backends():
        return s
    _fail(f"{s!r} is neither 'sim' nor an existing station file")


def existing_file(what: str = "file") -> Callable[[str], str]:
    """A `what` (e.g. "parameter file") that exists."""
    def parse(text: str) -> str:
        p = Path(text)
        if p.is_dir():
            _fail(f"cannot read {what} {text}: it is a directory")
        if not p.is_file():
            _fail(f"cannot read {what} {text}: no such file")
        return str(text)
    parse.__name__ = what
    return parse


params_file = existing_file("parameter file")


def run_record(hint: str = "") -> Callable[[str], str]:
    """An existing run record, or the journal of one that was cut off; `hint` ("{path}" is
    replaced) says how to make one."""
    def parse(text: str) -> str:
        from hil.runstore.journal import journal_path
        p = Path(text)
        if p.is_dir():
            _fail(f"{text} is a directory, not a run record (.h5)")
        if not p.is_file() and not journal_path(p).is_file():
            _fail(f"no run record (or journal) at {text}" + (f"; {hint.format(path=text)}" if hint else ""))
        return str(text)
    parse.__name__ = "run record"
    return parse


record_path = run_record()
cnn_record = run_record("create it with `hil train --out {path}`")


def existing_dir(text: str) -> str:
    """A directory that exists."""
    if not Path(text).is_dir():
        _fail(f"no such directory: {text}")
    return str(text)


def _writable_parent(p: Path, text: str) -> None:
    """The nearest existing ancestor of `p` is a writable directory (so `p`'s folders can be made)."""
    a = p.parent
    while not a.exists() and a != a.parent:
        a = a.parent
    if not a.is_dir():
        _fail(f"cannot create {text}: {a} is a file, not a directory")
    if not os.access(a, os.W_OK | os.X_OK):
        _fail(f"cannot create {text}: no write permission in {a}")


def out_file(text: str) -> str:
    """A file to write: not a directory; its folder exists or can be created."""
    if not str(text).strip():
        _fail("must be a file name, got an empty string")
    p = Path(text).expanduser()
    if p.is_dir():
        _fail(f"{text} is a directory; give a file name such as {Path(text) / 'run.h5'}")
    if not p.exists():
        _writable_parent(p, text)
    return str(p)


def out_dir(text: str) -> str:
    """A folder to write into: an existing directory, or a path where one can be created."""
    if not str(text).strip():
        _fail("must be a folder name, got an empty string")
    p = Path(text).expanduser()
    if p.exists():
        if not p.is_dir():
            _fail(f"{text} is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            _fail(f"no write permission in {text}")
    else:
        _writable_parent(p, text)
    return str(p)


class Parser(argparse.ArgumentParser):
    """ArgumentParser that raises OptionError (one line: prog, option, problem) instead of
    printing its usage and exiting; sub-command parsers inherit the class."""

    def error(self, message: str):
        raise OptionError(f"{self.prog}: error: {message}")


def check_pes(pes, n_pe: int, option: str = "--pe") -> list:
    """The PEs of `pes` ('all' or a list from `pe_list`) on a chip with `n_pe` PEs."""
    if pes in (None, "all"):
        return list(range(n_pe))
    if isinstance(pes, str):
        pes = pe_list(pes)
        if pes == "all":
            return list(range(n_pe))
    for p in pes:
        if not 0 <= p < n_pe:
            raise ConfigError(f"{option} {p} is out of range: this station has PEs 0..{n_pe - 1}")
    return list(pes)


def parse_value(validator: Callable[[str], object], text, option: str):
    """`validator(text)`, with an ArgumentTypeError turned into OptionError naming `option`
    (for front ends that are not argparse)."""
    try:
        return validator(str(text))
    except argparse.ArgumentTypeError as e:
        raise OptionError(f"{option}: {e}") from None


__all__ = ["MAX_SEED", "MAX_LEVELS", "MAX_PULSES", "MAX_N_AVG", "MAX_PE", "MAX_CHECK_CELLS",
           "MAX_TRAIN_EPOCHS", "MAX_HYBRID_EPOCHS", "MAX_LR_LEVELS", "MAX_GROUPS", "MAX_PORT",
           "OptionError", "Parser", "integer", "positive_int", "seed", "finite_float", "fraction", "port",
           "pe_list", "group_spec", "station_spec", "existing_file", "params_file", "run_record", "record_path", "cnn_record", "existing_dir",
           "out_file", "out_dir", "check_pes", "parse_value"]

