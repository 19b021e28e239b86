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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hil.errors import ConfigError
from hil.geometry import Geometry
from hil.limits import SafetyLimits

log = logging.getLogger(__name__)

__all__ = ["InstrumentSpec", "ChannelRef", "StationSpec", "load_station_spec", "open_instrument_station",
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
             "emulation", "_path"}
_STATION_KEYS = {"backend", "name", "description", "clock"}
_COMMON_KEYS = {"kind", "timeout", "identity", "description"}
_BOARD_KEYS = _COMMON_KEYS | {"port", "baudrate", "watchdog", "retries", "job_timeout"}
_SMU_KEYS = _COMMON_KEYS | {"resource", "visa_library", "retries", "compliance_a", "gate_compliance_a",
                            "nplc", "v_range", "min_pulse_s"}
_CHANNEL_KEYS = {"board", "bl", "sl", "gate"}
_PROGRAM_KEYS = {"path", "read_gate_v"}
_READ_KEYS = {"path", "gate_v"}
_PULSE_KEYS = {"path"}
PULSE_PATHS = ("board", "smu")


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
        raise ConfigError(f"{where}: '{key}' must be a table ([{key}]), got {type(t).__name__}")
    return t


def _unknown(table: dict, known: set, key: str, where: str) -> None:
    bad = set(table) - known
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {sorted(bad)} in [{key}]; known: {sorted(known)}")


def _positive(value: Any, key: str, where: str, *, integer: bool = False, allow_zero: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (not integer or float(value) == int(value))
    if not ok:
        what = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: {key} must be {what} {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return int(value) if integer else float(value)


def _string(value: Any, key: str, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ConfigError(f"{where}: {key} must be a {'' if allow_empty else 'non-empty '}string, got {value!r}")
    return value


def _visa_library(lib: str, base: Optional[Path]) -> str:
    """'PATH@backend' with a relative PATH is taken relative to the station file's folder."""
    path, at, backend = lib.rpartition("@")
    if not at or not path or base is None or Path(path).is_absolute():
        return lib
    return f"{(base / path).resolve()}@{backend}"


def _instrument(name: str, t: Any, where: str, base: Optional[Path] = None) -> InstrumentSpec:
    key = f"instruments.{name}"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    kind = t.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: {key}.kind {kind!r} is not a known instrument kind; use one of "
                          f"{sorted(KINDS)}")
    board = kind == "array-board"
    addr_key = "port" if board else "resource"
    wrong_key = "resource" if board else "port"
    if addr_key not in t:
        hint = (f" ('{wrong_key}' is for {'SMUs' if board else 'the array board'}; use '{addr_key}')"
                if wrong_key in t else "")
        raise ConfigError(f"{where}: {key}: missing '{addr_key}' "
                          f"({'serial port or pyserial URL' if board else 'VISA resource string'}){hint}")
    _unknown(t, _BOARD_KEYS if board else _SMU_KEYS, key, where)
    addr = _string(t[addr_key], f"{key}.{addr_key}", where)
    lib = _visa_library(_string(t.get("visa_library", ""), f"{key}.visa_library", where, allow_empty=True), base)
    timeout = _positive(t.get("timeout", 5.0 if not board else 1.0), f"{key}.timeout", where)
    ident = t.get("identity")
    if ident is not None:
        _string(ident, f"{key}.identity", where)
        try:
            re.compile(ident)
        except re.error as e:
            raise ConfigError(f"{where}: {key}.identity is not a valid regular expression: {e}") from None
    opts: dict = {}
    for k in ("baudrate", "retries"):
        if k in t:
            opts[k] = _positive(t[k], f"{key}.{k}", where, integer=True, allow_zero=(k == "retries"))
    for k in ("watchdog", "job_timeout", "compliance_a", "gate_compliance_a", "nplc", "min_pulse_s"):
        if k in t:
            opts[k] = _positive(t[k], f"{key}.{k}", where)
    if "v_range" in t:
        opts["v_range"] = None if t["v_range"] == "auto" else _positive(t["v_range"], f"{key}.v_range", where)
    if "min_pulse_s" in opts and kind != "keithley2600":
        raise ConfigError(f"{where}: {key}.min_pulse_s applies to kind 'keithley2600' only")
    return InstrumentSpec(name, kind, addr, lib, timeout, ident, opts)


def _channel(role: str, value: Any, instruments: dict, where: str) -> ChannelRef:
    key = f"channels.{role}"
    s = _string(value, key, where)
    inst, _, ch = s.partition(".")
    if inst not in instruments:
        raise ConfigError(f"{where}: {key} = {s!r} points at an unknown instrument {inst!r}; "
                          f"instruments: {sorted(instruments)}")
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


def load_station_spec(cfg: dict) -> StationSpec:
    """Validate a parsed station file (as hil.registry.load_station_file returns it)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"station configuration must be a table, got {type(cfg).__name__}")
    where = _where(cfg)
    _unknown(cfg, _TOP_KEYS, "top level", where)
    st = _table(cfg, "station", where, required=True)
    _unknown(st, _STATION_KEYS, "station", where)
    if st.get("backend") != "instruments":
        raise ConfigError(f"{where}: station.backend must be \"instruments\" for an instrument station, "
                          f"got {st.get('backend')!r}")
    name = _string(st.get("name", Path(cfg.get("_path", "station")).stem), "station.name", where)
    clock = st.get("clock", "board")
    if clock not in ("board", "host"):
        raise ConfigError(f"{where}: station.clock must be \"board\" or \"host\", got {clock!r}")

    geo = _table(cfg, "geometry", where, required=True)
    try:
        geometry = Geometry.from_dict(geo)
    except ConfigError as e:
        raise ConfigError(f"{where}: [geometry]: {e}") from None
    limits_t = _table(cfg, "limits", where)
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
    _unknown(ch_t, _CHANNEL_KEYS, "channels", where)
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

    prog, path = _path_table(cfg, "program", _PROGRAM_KEYS, PROGRAM_PATHS, "board-firmware", where)
    script_gate = _positive(prog.get("read_gate_v", 3.3), "program.read_gate_v", where)
    if path == "smu-script":
        bl, gate = channels["bl"], channels["gate"]
        spec = instruments[bl.instrument]
        if spec.kind != "keithley2600" or bl.channel != "a" or gate.instrument != bl.instrument \
                or gate.channel != "b":
            raise ConfigError(f"{where}: program.path = \"smu-script\" runs the write-verify script on a "
                              f"Keithley 2600B with smua on the bit line and smub on the gate: set "
                              f"channels.bl = \"NAME.a\" and channels.gate = \"NAME.b\" of a keithley2600 "
                              f"(now bl = {str(bl)!r}, gate = {str(gate)!r})")

    rd, read_path = _path_table(cfg, "read", _READ_KEYS, READ_PATHS, "board", where)
    read_gate = _positive(rd.get("gate_v", 3.3), "read.gate_v", where)
    if read_path == "smu" and instruments[channels["bl"].instrument].is_board:
        raise ConfigError(f"{where}: read.path = \"smu\" needs channels.bl on an SMU channel "
                          f"(now {str(channels['bl'])!r})")
    _, pulse_path = _path_table(cfg, "pulse", _PULSE_KEYS, PULSE_PATHS, "board", where)
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
        raise ConfigError(f"{where}: 'emulation' must be a table ([emulation])")
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


def _path_table(cfg: dict, name: str, keys, choices, default: str, where: str) -> tuple[dict, str]:
    """A [program]/[read]/[pulse] table and its validated `path` choice."""
    t = _table(cfg, name, where)
    _unknown(t, keys, name, where)
    path = t.get("path", default)
    if path not in choices:
        raise ConfigError(f"{where}: {name}.path {path!r} unknown; use one of {list(choices)}")
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
    ident = getattr(pyvisa.ResourceManager(f"{spec.path}{state}@hilsim").visa_lib, "chip_identity", None)
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
            smu = cls(s.address, s.visa_library, **kw)
            opened.append(smu)
            _check_identity(s, smu.identity.raw if smu.identity else "")
            smus[s.name] = smu
        b = spec.board
        cls = _driver_class(b.kind)
        kw = {"name": b.name, "expected_geometry": spec.geometry, "timeout_s": b.timeout_s}
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


def open_instrument_station(cfg: dict, *, seed: Optional[int] = None, params_path=None, state_path=None,
                            geometry: Optional[Geometry] = None, read_path: Optional[str] = None,
                            program_path: Optional[str] = None, pulse_path: Optional[str] = None,
                            **options):
    """Validate `cfg`, connect every instrument and return an `InstrumentCrossbar`.

    `seed` and `params_path` belong to simulated chips and are ignored (logged); `state_path`
    keeps the chip of an emulated station between processes, a physical station ignores it. `read_path` / `program_path` / `pulse_path` override the file's [read] /
    [program] / [pulse] paths."""
    from .crossbar_1t1r import InstrumentCrossbar
    spec = load_station_spec(cfg)
    if options:
        raise ConfigError(f"unknown option(s) for an instrument station: {sorted(options)}")
    emulated_state = state_path if spec.emulation is not None else None
    for k, v in (("seed", seed), ("params_path", params_path), ("state_path", state_path)):
        if v is not None and not (k == "state_path" and emulated_state):
            log.info("instrument station %s: option %s=%r has no meaning for instruments; ignored", spec.name, k, v)
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
    board, smus = open_instruments(spec, emulated_state)
    try:
        xbar = InstrumentCrossbar(spec, board, smus)
        xbar.chip_identity = emulated_chip_identity(spec, emulated_state)
        return xbar
    except BaseException:
        for inst in [*smus.values(), board]:
            inst.close()
        raise
