"""Station files of physical (or emulated) instrument stations, and the factory the registry
calls for `backend = "instruments"`: `open_instrument_station(cfg, **options) -> Crossbar`.

A station file (TOML) names the instruments, how their channels reach the chip and the limits::

    [station]       backend = "instruments", name = "..."
    [geometry]      preset = "yao"  (or n_pe/rows/cols)
    [limits.SET]    max_v = 3.0 ...                       (hil.limits format)
    [instruments.board]   kind = "array-board", port = "COM3" | "/dev/ttyUSB0" | "hilsim://W/board"
    [instruments.smu1]    kind = "keithley2600", resource = "GPIB0::26::INSTR", visa_library = ""
    [channels]      board = "board", bl = "smu1.a", sl = "smu1.a", gate = "board" | "smu1.b"
    [program]       path = "board-firmware" | "smu-script" | "host"
    [read]          path = "board" | "smu", gate_v = 3.3
    [emulation]     read by the @hilsim pyvisa backend (sim_backend/visa_backend.py)

`load_station_spec(cfg)` validates everything before any instrument is touched; every error is a
ConfigError naming the key and what is wrong. See stations/example-lab.toml for every key.

Emulated stations: when the file has an [emulation] table, the loader first opens
`pyvisa.ResourceManager("<this file>@hilsim")` and lists its resources. That builds the emulated
world the [emulation] table describes (geometry, seed, parameters) and, as pyvisa loads the
`pyvisa_hilsim` module, registers the pyserial `hilsim://` URL handler, so the board driver can
open `hilsim://WORLD/board`. Both happen through the transports; drivers never import sim_backend.
A board-only emulated station therefore still needs the [emulation] table.
"""
from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hil.errors import ConfigError
from hil.geometry import Geometry
from hil.limits import MAX_LIMIT_COMPLIANCE_A, MAX_LIMIT_V_GATE, MAX_LIMIT_WIDTH_S, SafetyLimits
from hil.schema import (AnyOf, Anything, Number, SchemaError, Table, Text, check_depth, did_you_mean, located,
                        show, unknown_key)

log = logging.getLogger(__name__)

__all__ = ["InstrumentSpec", "ChannelRef", "StationSpec", "load_station_spec", "check_instrument_station",
           "open_instrument_station",
           "open_instruments", "KINDS", "PROGRAM_PATHS", "READ_PATHS"]

#: instrument kinds -> (driver "module:class", channels it has; () = single channel)
KINDS = {
    "array-board": ("drivers.board:ArrayBoard", ()),
    "keithley2600": ("drivers.keithley2600:Keithley2600", ("a", "b")),
    "keithley2400": ("drivers.keithley2400:Keithley2400", ()),
    "keithley2450": ("drivers.keithley2450:Keithley2450", ()),
    "keysight-b2900": ("drivers.keysight_b2900:KeysightB2900", ()),
}
PROGRAM_PATHS = ("board-firmware", "smu-script", "host")
READ_PATHS = ("board", "smu")

_TOP_KEYS = {"station", "geometry", "limits", "instruments", "channels", "program", "read", "pulse",
             "emulation"}
PULSE_PATHS = ("board", "smu")

_SECONDS = Number(0, 3600, gt=True, unit="s")
_COMMON = {"kind": Text(KINDS, noun="instrument kind"), "timeout": _SECONDS, "identity": Text(max_len=200),
           "description": Text(empty=True)}
_RETRIES = Number(0, 100, integer=True)
_BOARD_SCHEMA = Table({**_COMMON, "port": Text(), "baudrate": Number(1, 20_000_000, integer=True, gt=True),
                       "watchdog": _SECONDS, "retries": _RETRIES, "job_timeout": Number(0, 86400, gt=True, unit="s")})
_SMU_COMPLIANCE = Number(0, MAX_LIMIT_COMPLIANCE_A, gt=True, unit="A")
_SMU_SCHEMA = Table({**_COMMON, "resource": Text(), "visa_library": Text(empty=True), "retries": _RETRIES,
                     "compliance_a": _SMU_COMPLIANCE, "gate_compliance_a": _SMU_COMPLIANCE,
                     "nplc": Number(0.001, 25, unit="power-line cycles"),
                     "v_range": AnyOf(Text(["auto"]), Number(0, 200, gt=True, unit="V"), describe='"auto" or volts'),
                     "min_pulse_s": Number(0, MAX_LIMIT_WIDTH_S, gt=True, unit="s")})
_STATION_SCHEMA = Table({"backend": Text(), "name": Text(max_len=200), "description": Text(empty=True),
                         "clock": Text(("board", "host"), noun="clock")})
_GATE_V = Number(0, MAX_LIMIT_V_GATE, gt=True, unit="V")
_PATH_SCHEMAS = {"program": Table({"path": Anything(), "read_gate_v": _GATE_V}),
                 "read": Table({"path": Anything(), "gate_v": _GATE_V}),
                 "pulse": Table({"path": Anything()})}
_CHANNELS_SCHEMA = Table({r: Text(max_len=200) for r in ("board", "bl", "sl", "gate")})
#: pairs of terminals driven at the same time (gate with BL in SET and reads, gate with SL in RESET);
#: BL and SL may share an SMU channel: the board's bus relays connect it to one of them at a time
DRIVEN_TOGETHER = (("gate", "bl"), ("gate", "sl"))
_ROLE_NAMES = {"bl": "bit line", "sl": "source line", "gate": "gate (word line)"}


@dataclass(frozen=True)
class InstrumentSpec:
    """One validated [instruments.NAME] table."""

    name: str
    kind: str
    address: str                   # serial port / URL for the board, VISA resource for SMUs
    visa_library: str = ""
    timeout_s: float = 5.0
    identity: Optional[str] = None  # regex the *IDN? / board identity must match
    options: dict = field(default_factory=dict)

    @property
    def is_board(self) -> bool:
        return self.kind == "array-board"

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, ("port" if self.is_board else "resource"): self.address,
             "timeout_s": self.timeout_s, "identity": self.identity, **self.options}
        if not self.is_board:
            d["visa_library"] = self.visa_library
        return d


@dataclass(frozen=True)
class ChannelRef:
    """A role's destination: the board itself, or an SMU `instrument` and its `channel`."""

    instrument: str
    channel: Optional[str] = None

    def __str__(self) -> str:
        return self.instrument if self.channel is None else f"{self.instrument}.{self.channel}"


@dataclass(frozen=True)
class StationSpec:
    """A validated station file."""

    name: str
    path: Optional[str]
    geometry: Geometry
    limits: SafetyLimits
    instruments: dict            # name -> InstrumentSpec (file order)
    channels: dict               # role -> ChannelRef
    program_path: str = "board-firmware"
    read_path: str = "board"
    pulse_path: str = "board"
    read_gate_v: float = 3.3     # gate level of SMU reads (board DAC or SMU gate channel), V
    script_read_gate_v: float = 3.3
    clock: str = "board"
    emulation: Optional[dict] = None

    @property
    def board(self) -> InstrumentSpec:
        return self.instruments[self.channels["board"].instrument]

    def smu_of(self, role: str) -> Optional[ChannelRef]:
        """The SMU channel of `role` ('bl', 'sl', 'gate'), None when the board does it."""
        ref = self.channels.get(role)
        if ref is None or self.instruments[ref.instrument].is_board:
            return None
        return ref

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "geometry": self.geometry.to_dict(),
                "limits": self.limits.to_dict(),
                "instruments": {n: s.to_dict() for n, s in self.instruments.items()},
                "channels": {r: str(c) for r, c in self.channels.items()},
                "program_path": self.program_path, "read_path": self.read_path, "pulse_path": self.pulse_path,
                "read_gate_v": self.read_gate_v, "clock": self.clock,
                "emulated": self.emulation is not None}


# ---- validation ------------------------------------------------------------------------------
def _where(cfg: dict) -> str:
    p = cfg.get("_path")
    return f"station file {p}" if p else "station"


def _table(cfg: dict, key: str, where: str, required: bool = False) -> dict:
    t = cfg.get(key)
    if t is None:
        if required:
            raise ConfigError(f"{where}: missing [{key}] table")
        return {}
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: '{key}' must be a table ([{key}]), got {show(t)}")
    return t


def _string(value: Any, key: str, where: str, allow_empty: bool = False) -> str:
    with located(where):
        return Text(empty=allow_empty).check(value, key)


def _visa_library(lib: str, base: Optional[Path]) -> str:
    """'PATH@backend' with a relative PATH is taken relative to the station file's folder."""
    path, at, backend = lib.rpartition("@")
    if not at or not path or base is None or Path(path).is_absolute():
        return lib
    return f"{(base / path).resolve()}@{backend}"


def _instrument(name: str, t: Any, where: str, base: Optional[Path] = None) -> InstrumentSpec:
    key = f"instruments.{name}"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: [{key}] must be a table, got {show(t)}")
    with located(where):
        kind = Text(KINDS, noun="instrument kind").check(t.get("kind"), f"{key}.kind") if "kind" in t else None
    if kind is None:
        raise ConfigError(f"{where}: {key}.kind is missing; use one of {sorted(KINDS)}")
    board = kind == "array-board"
    addr_key = "port" if board else "resource"
    wrong_key = "resource" if board else "port"
    if addr_key not in t:
        hint = (f" ('{wrong_key}' is for {'SMUs' if board else 'the array board'}; use '{addr_key}')"
                if wrong_key in t else "")
        raise ConfigError(f"{where}: {key}: missing '{addr_key}' "
                          f"({'serial port or pyserial URL' if board else 'VISA resource string'}){hint}")
    with located(where):
        t = (_BOARD_SCHEMA if board else _SMU_SCHEMA).check(t, key)
    addr = t[addr_key]
    lib = _visa_library(t.get("visa_library", ""), base)
    timeout = t.get("timeout", 5.0 if not board else 1.0)
    ident = t.get("identity")
    if ident is not None:
        try:
            re.compile(ident)
        except re.error as e:
            raise ConfigError(f"{where}: {key}.identity is not a valid regular expression: {e}") from None
    opts = {k: t[k] for k in ("baudrate", "retries", "watchdog", "job_timeout", "compliance_a",
                              "gate_compliance_a", "nplc", "min_pulse_s") if k in t}
    if "v_range" in t:
        opts["v_range"] = None if t["v_range"] == "auto" else t["v_range"]
    if "min_pulse_s" in opts and kind != "keithley2600":
        raise ConfigError(f"{where}: {key}.min_pulse_s applies to kind 'keithley2600' only")
    return InstrumentSpec(name, kind, addr, lib, timeout, ident, opts)


def _channel(role: str, value: Any, instruments: dict, where: str) -> ChannelRef:
    key = f"channels.{role}"
    s = _string(value, key, where)
    inst, _, ch = s.partition(".")
    if inst not in instruments:
        raise ConfigError(f"{where}: {key} = {s!r} points at an unknown instrument {inst!r}"
                          f"{did_you_mean(inst, instruments)}; instruments: {sorted(instruments)}")
    spec = instruments[inst]
    chans = KINDS[spec.kind][1]
    if spec.is_board:
        if ch:
            raise ConfigError(f"{where}: {key} = {s!r}: the array board has no channels; write {inst!r}")
        return ChannelRef(inst)
    if chans:
        if ch not in chans:
            raise ConfigError(f"{where}: {key} = {s!r}: a {spec.kind} needs a channel: "
                              f"{', '.join(f'{inst}.{c}' for c in chans)}")
        return ChannelRef(inst, ch)
    if ch not in ("", "1"):
        raise ConfigError(f"{where}: {key} = {s!r}: a {spec.kind} has one channel; write {inst!r}")
    return ChannelRef(inst)


def _check_channel_conflicts(channels: dict, instruments: dict, where: str) -> None:
    """Refuse one SMU channel wired to two terminals that are driven at the same time."""
    for a, b in DRIVEN_TOGETHER:
        ra, rb = channels[a], channels[b]
        if ra == rb and not instruments[ra.instrument].is_board:
            raise ConfigError(
                f"{where}: channels.{a} = {str(ra)!r} and channels.{b} = {str(rb)!r} are the same SMU channel, "
                f"but the {_ROLE_NAMES[a]} and the {_ROLE_NAMES[b]} are driven at the same time, so that channel "
                f"would put one terminal's level on the other; wire channels.{a} to another SMU channel or to "
                f"the board")


def _check_emulated_board(board: InstrumentSpec, emulation: Any, where: str) -> None:
    """A hilsim://WORLD/board port must name the world the file's [emulation] table builds;
    any other world would be a second, separate emulated chip."""
    if not board.address.lower().startswith("hilsim://"):
        return
    world = urllib.parse.urlsplit(board.address).netloc
    key = f"instruments.{board.name}.port"
    if not isinstance(emulation, dict):
        raise ConfigError(f"{where}: {key} = {board.address!r} is an emulated board, but the file has no "
                          f"[emulation] table to build world {world!r}; add one (see "
                          f"stations/sim-instruments.toml) or use a real serial port")
    built = emulation.get("world", "default")
    if isinstance(built, str) and world != built:
        raise ConfigError(f"{where}: {key} = {board.address!r} names emulated world {world!r}, but [emulation] "
                          f"builds world {built!r}; another world would be a second, separate chip: use "
                          f"'hilsim://{built}/{urllib.parse.urlsplit(board.address).path.strip('/') or 'board'}'")


def load_station_spec(cfg: dict) -> StationSpec:
    """Validate a parsed station file (as hil.registry.load_station_file returns it)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"station configuration must be a table, got {type(cfg).__name__}")
    where = _where(cfg)
    with located(where):
        check_depth(cfg)
        for k in cfg:
            if k not in _TOP_KEYS and k != "_path":
                raise SchemaError("", unknown_key(k, _TOP_KEYS, ""))
    st = _table(cfg, "station", where, required=True)
    with located(where):
        st = _STATION_SCHEMA.check(st, "station")
    if st.get("backend") != "instruments":
        raise ConfigError(f"{where}: station.backend must be \"instruments\" for an instrument station, "
                          f"got {st.get('backend')!r}")
    name = st.get("name", Path(cfg.get("_path", "station")).stem)
    clock = st.get("clock", "board")

    geo = _table(cfg, "geometry", where, required=True)
    with located(where):
        geometry = Geometry.from_dict(geo)
    limits_t = cfg.get("limits")
    try:
        limits = SafetyLimits.from_dict(limits_t)
    except ConfigError as e:
        raise ConfigError(f"{where}: [limits]: {e}") from None

    insts_t = _table(cfg, "instruments", where, required=True)
    if not insts_t:
        raise ConfigError(f"{where}: [instruments] lists no instrument; add at least an array board "
                          f"([instruments.board] kind = \"array-board\")")
    base = Path(cfg["_path"]).parent if cfg.get("_path") else None
    instruments = {n: _instrument(n, t, where, base) for n, t in insts_t.items()}
    addrs: dict = {}
    for s in instruments.values():
        a = s.address.strip().upper()
        if a in addrs:
            raise ConfigError(f"{where}: instruments.{s.name} uses the same {'port' if s.is_board else 'resource'} "
                              f"{s.address!r} as instruments.{addrs[a]}")
        addrs[a] = s.name

    ch_t = _table(cfg, "channels", where)
    with located(where):
        ch_t = _CHANNELS_SCHEMA.check(ch_t, "channels")
    boards = [n for n, s in instruments.items() if s.is_board]
    if "board" not in ch_t:
        if len(boards) != 1:
            raise ConfigError(f"{where}: channels.board is missing; name the array board instrument "
                              f"(instruments of kind array-board: {boards or 'none'})")
        ch_t = dict(ch_t, board=boards[0])
    channels = {role: _channel(role, v, instruments, where) for role, v in ch_t.items()}
    if not instruments[channels["board"].instrument].is_board:
        raise ConfigError(f"{where}: channels.board = {ch_t['board']!r} is a "
                          f"{instruments[channels['board'].instrument].kind}, not an array-board")
    board_name = channels["board"].instrument
    for role in ("bl", "sl", "gate"):
        channels.setdefault(role, ChannelRef(board_name))
        ref = channels[role]
        if instruments[ref.instrument].is_board and ref.instrument != board_name:
            raise ConfigError(f"{where}: channels.{role} = {str(ref)!r} is a second array board; the "
                              f"station routes through {board_name!r}")
    _check_channel_conflicts(channels, instruments, where)

    prog, path = _path_table(cfg, "program", PROGRAM_PATHS, "board-firmware", where)
    script_gate = prog.get("read_gate_v", 3.3)
    if path == "smu-script":
        bl, gate = channels["bl"], channels["gate"]
        spec = instruments[bl.instrument]
        if spec.kind != "keithley2600" or bl.channel != "a" or gate.instrument != bl.instrument \
                or gate.channel != "b":
            raise ConfigError(f"{where}: program.path = \"smu-script\" runs the write-verify script on a "
                              f"Keithley 2600B with smua on the bit line and smub on the gate: set "
                              f"channels.bl = \"NAME.a\" and channels.gate = \"NAME.b\" of a keithley2600 "
                              f"(now bl = {str(bl)!r}, gate = {str(gate)!r})")

    rd, read_path = _path_table(cfg, "read", READ_PATHS, "board", where)
    read_gate = rd.get("gate_v", 3.3)
    if read_path == "smu" and instruments[channels["bl"].instrument].is_board:
        raise ConfigError(f"{where}: read.path = \"smu\" needs channels.bl on an SMU channel "
                          f"(now {str(channels['bl'])!r})")
    _, pulse_path = _path_table(cfg, "pulse", PULSE_PATHS, "board", where)
    if pulse_path == "smu":
        for role in ("bl", "sl"):
            if instruments[channels[role].instrument].is_board:
                raise ConfigError(f"{where}: pulse.path = \"smu\" needs channels.{role} on an SMU channel "
                                  f"(now {str(channels[role])!r})")
    gate_lim = limits["READ"].max_v_gate
    for key, v in (("read.gate_v", read_gate), ("program.read_gate_v", script_gate)):
        if v > gate_lim:
            raise ConfigError(f"{where}: {key} = {v:g} V exceeds limits.READ.max_v_gate = {gate_lim:g} V")

    em = cfg.get("emulation")
    if em is not None and not isinstance(em, dict):
        raise ConfigError(f"{where}: 'emulation' must be a table ([emulation]), got {show(em)}")
    _check_emulated_board(instruments[board_name], em, where)
    return StationSpec(name=name, path=cfg.get("_path"), geometry=geometry, limits=limits,
                       instruments=instruments, channels=channels, program_path=path, read_path=read_path,
                       pulse_path=pulse_path,
                       read_gate_v=read_gate, script_read_gate_v=script_gate, clock=clock, emulation=em)


# ---- opening ---------------------------------------------------------------------------------
def _driver_class(kind: str):
    import importlib
    module, cls = KINDS[kind][0].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"the driver of kind {kind!r} ({KINDS[kind][0]}) is not available: {e}") from None


def _path_table(cfg: dict, name: str, choices, default: str, where: str) -> tuple[dict, str]:
    """A [program]/[read]/[pulse] table and its validated `path` choice."""
    t = _table(cfg, name, where)
    with located(where):
        t = _PATH_SCHEMAS[name].check(t, name)
    path = t.get("path", default)
    if not isinstance(path, str) or path not in choices:
        raise ConfigError(f"{where}: {name}.path {show(path)} unknown{did_you_mean(str(path), choices)}; "
                          f"use one of {list(choices)}")
    return t, path


def prepare_emulation(spec: StationSpec, state_path=None) -> None:
    """Build the emulated world of an [emulation] station through the @hilsim pyvisa backend
    (which also registers the hilsim:// serial URL handler). No-op for real stations.
    `state_path` keeps the emulated chip in that file between processes."""
    if spec.emulation is None:
        return
    if not spec.path:
        raise ConfigError("an [emulation] station must be opened from its file (the @hilsim backend reads it)")
    try:
        import pyvisa
        from pyvisa import errors as visa_errors
    except ImportError as e:       # pragma: no cover - pyvisa is a dependency
        raise ConfigError(f"an emulated station needs pyvisa ({e})") from None
    try:
        state = f"?state={Path(state_path).resolve()}" if state_path else ""
        rm = pyvisa.ResourceManager(f"{spec.path}{state}@hilsim")
    except (ValueError, OSError) as e:
        raise ConfigError(f"{spec.path}: cannot load the @hilsim emulation backend: {e}") from None
    try:
        rm.list_resources()
    except visa_errors.VisaIOError:
        pass                       # no emulated SMU: the world (and the board) exist all the same


def emulated_chip_identity(spec: StationSpec, state_path=None) -> Optional[dict]:
    """Identity of the emulated chip of an [emulation] station (None for real stations), so a
    run record can tell whether it is resumed on the chip it was made on."""
    if spec.emulation is None or not spec.path:
        return None
    import pyvisa
    state = f"?state={Path(state_path).resolve()}" if state_path else ""
    ident = getattr(pyvisa.ResourceManager(f"{spec.path}{state}@hilsim").visalib, "chip_identity", None)
    return ident() if callable(ident) else None


def _check_identity(spec: InstrumentSpec, text: str) -> None:
    if spec.identity and not re.search(spec.identity, text, flags=re.I):
        raise ConfigError(f"instruments.{spec.name}: the instrument at {spec.address} identifies as "
                          f"{text.strip()!r}, which does not match identity = {spec.identity!r}; connect the "
                          f"right instrument or fix the station file")


def open_instruments(spec: StationSpec, state_path=None) -> tuple[Any, dict]:
    """Open and identify the board and every SMU (board last, so an emulated world is built by
    the SMU backend first). Returns (board, {name: smu}); on any failure closes what was opened."""
    opened: list = []
    try:
        prepare_emulation(spec, state_path)
        smus = {}
        for s in spec.instruments.values():
            if s.is_board:
                continue
            cls = _driver_class(s.kind)
            kw: dict = {"timeout_s": s.timeout_s, "name": s.name}
            if "retries" in s.options:
                kw["retries"] = s.options["retries"]
            if "min_pulse_s" in s.options:
                kw["min_pulse_s"] = s.options["min_pulse_s"]
            roles: dict = {}                # the station's limits travel with the driver
            for role in ("bl", "sl", "gate"):
                ref = spec.smu_of(role)
                if ref is not None and ref.instrument == s.name:
                    roles.setdefault(ref.channel, set()).add(role)
            kw.update(limits=spec.limits, roles=roles)
            smu = cls(s.address, s.visa_library, **kw)
            opened.append(smu)
            _check_identity(s, smu.identity.raw if smu.identity else "")
            smus[s.name] = smu
        b = spec.board
        cls = _driver_class(b.kind)
        kw = {"name": b.name, "expected_geometry": spec.geometry, "timeout_s": b.timeout_s, "limits": spec.limits}
        for k, arg in (("baudrate", "baudrate"), ("retries", "retries"), ("watchdog", "watchdog_s"),
                       ("job_timeout", "job_timeout_s")):
            if k in b.options:
                kw[arg] = b.options[k]
        board = cls(b.address, **kw)
        opened.append(board)
        info = board.info
        _check_identity(b, f"{info.model},{info.serial},{info.firmware}")
        # precondition for the 2600B script / SMU gate: the SMU must have the channel
        for role in ("bl", "sl", "gate"):
            ref = spec.smu_of(role)
            if ref is not None and ref.channel is not None:
                chans = getattr(smus[ref.instrument], "CHANNELS", ("a",))
                if ref.channel not in chans:
                    raise ConfigError(f"channels.{role} = {str(ref)!r}: the {smus[ref.instrument].where()} "
                                      f"has only channel(s) {', '.join(chans)}")
        return board, smus
    except BaseException:
        for inst in reversed(opened):
            try:
                inst.close()
            except Exception as e:      # best effort
                log.warning("closing %r after a failed open: %s", inst, e)
        raise


def check_instrument_station(cfg: dict, *, seed: Optional[int] = None, params_path=None, state_path=None,
                             geometry: Optional[Geometry] = None, read_path: Optional[str] = None,
                             program_path: Optional[str] = None, pulse_path: Optional[str] = None,
                             **options) -> StationSpec:
    """Validate `cfg` and the options of `open_instrument_station` without opening anything;
    returns the StationSpec the station would be opened with (path overrides applied)."""
    spec = load_station_spec(cfg)
    if options:
        raise ConfigError(f"unknown option(s) for an instrument station: {sorted(options)}")
    if params_path is not None:
        where = spec.path or spec.name
        raise ConfigError(
            f"--params {params_path}: station {where} is an instrument station; a parameter file applies to "
            f"simulated chips only" + (": the emulated chip takes its parameter file from emulation.params in "
                                       "the station file; set it there" if spec.emulation is not None else ""))
    if geometry is not None and geometry.shape != spec.geometry.shape:
        raise ConfigError(f"station {spec.name}: requested geometry {geometry.shape} differs from the "
                          f"station's {spec.geometry.shape}")
    if read_path is not None or program_path is not None or pulse_path is not None:
        overrides = {}
        if pulse_path is not None:
            overrides["pulse"] = {"path": pulse_path}
        if read_path is not None:
            overrides["read"] = {"path": read_path, "gate_v": spec.read_gate_v}
        if program_path is not None:
            overrides["program"] = {"path": program_path, "read_gate_v": spec.script_read_gate_v}
        spec = load_station_spec({**cfg, **overrides})
    return spec


def open_instrument_station(cfg: dict, *, seed: Optional[int] = None, params_path=None, state_path=None,
                            geometry: Optional[Geometry] = None, read_path: Optional[str] = None,
                            program_path: Optional[str] = None, pulse_path: Optional[str] = None,
                            **options):
    """Validate `cfg` (`check_instrument_station`), connect every instrument and return an
    `InstrumentCrossbar`.

    `seed` belongs to simulated chips and is ignored (logged); `params_path` is refused (an
    emulated chip's parameter file is emulation.params); `state_path` keeps the chip of an
    emulated station between processes, a physical station ignores it. `read_path` /
    `program_path` / `pulse_path` override the file's [read] / [program] / [pulse] paths."""
    from .crossbar_1t1r import InstrumentCrossbar
    spec = check_instrument_station(cfg, seed=seed, params_path=params_path, state_path=state_path,
                                    geometry=geometry, read_path=read_path, program_path=program_path,
                                    pulse_path=pulse_path, **options)
    emulated_state = state_path if spec.emulation is not None else None
    for k, v in (("seed", seed), ("state_path", state_path)):
        if v is not None and not (k == "state_path" and emulated_state):
            log.info("instrument station %s: option %s=%r has no meaning for instruments; ignored", spec.name, k, v)
    board, smus = open_instruments(spec, emulated_state)
    try:
        xbar = InstrumentCrossbar(spec, board, smus)
        xbar.chip_identity = emulated_chip_identity(spec, emulated_state)
        return xbar
    except BaseException:
        for inst in [*smus.values(), board]:
            inst.close()
        raise
