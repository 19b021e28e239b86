"""pyvisa backend `@hilsim` for the emulated instruments, plus a raw-socket TCP server.

    rm = pyvisa.ResourceManager("stations/sim-instruments.toml@hilsim")   # [emulation] table
    rm = pyvisa.ResourceManager("@hilsim")                                 # DEFAULT_EMULATION
    smu = rm.open_resource("GPIB0::26::INSTR")

(pyvisa finds this class through the top-level module `pyvisa_hilsim`.) Each resource is an
emulated instrument on a named `EmulatedWorld`; all resource managers and sessions naming the
same world and resource reach the same instrument state, like real hardware.

Timeouts are virtual: a read with nothing to read charges the session timeout to the world's
virtual clock and raises VI_ERROR_TMO at once. A 'timeout' fault makes the write raise
VI_ERROR_TMO; 'disconnect' makes every I/O raise VI_ERROR_CONN_LOST.

[emulation] table (station TOML)::

    [emulation]
    world = "sim-instruments"      # world name shared with the board's hilsim://WORLD/board
    seed = 0
    geometry = "yao"               # preset name, or a table like [geometry]
    # params = "device.toml"       # DeviceParams file (relative to the station file)
    # preset = "wang2019"          # or a named device parameter set (not both)

    [emulation.instruments.smu]    # the table key is the instrument's source name in the world
    kind = "keithley2602b"         # keithley26XXb | keithley2400 | keithley2450 | keysight_b29XXa
    resource = "GPIB0::26::INSTR"
    bus = "gpib"                   # gpib | usb | lan (latency model)
    wiring = { smua = ["BL", "SL"], smub = ["WL"] }
"""
from __future__ import annotations

import logging
import random
import socketserver
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from pyvisa import constants, errors, highlevel, rname
from pyvisa.constants import ResourceAttribute as RA, StatusCode
from pyvisa.util import LibraryPath

from hil.errors import ConfigError
from hil.geometry import GEOMETRY_SCHEMA, PRESETS, Geometry, preset
from hil.registry import read_toml
from hil.schema import AnyOf, Anything, ListOf, Number, Table, Text, located

from .params import PRESETS as DEVICE_PRESETS
from .smu import EmulatedInstrument, InstrumentDisconnected, make_instrument
from .world import BUSES, EmulatedWorld, get_world, plan_faults

log = logging.getLogger(__name__)

DEFAULT_EMULATION = {
    "world": "default",
    "seed": 0,
    "geometry": "yao",
    "instruments": {
        "smu2602b": {"kind": "keithley2602b", "resource": "GPIB0::26::INSTR", "bus": "gpib",
                     "wiring": {"smua": ["BL", "SL"], "smub": ["WL"]}},
        "smu2450": {"kind": "keithley2450", "resource": "GPIB0::18::INSTR", "bus": "gpib",
                    "wiring": {"1": ["BL", "SL"]}},
        "smu2400": {"kind": "keithley2400", "resource": "GPIB0::24::INSTR", "bus": "gpib",
                    "wiring": {"1": ["BL", "SL"]}},
        "smub2901": {"kind": "keysight_b2901a", "resource": "GPIB0::23::INSTR", "bus": "gpib",
                     "wiring": {"1": ["BL", "SL"]}},
    },
}

_EMULATION_KEYS = {"world", "seed", "geometry", "params", "preset", "instruments", "board", "faults"}
_INSTRUMENT_KEYS = {"kind", "resource", "bus", "wiring", "serial"}
# types of the [emulation] values (keys without an entry are checked by their own code)
_EMULATION_SPECS = {
    "world": Text(max_len=200), "seed": Number(0, 2**63 - 1, integer=True),
    "geometry": AnyOf(Text(sorted(PRESETS), fold=True, noun="geometry preset"), GEOMETRY_SCHEMA,
                      describe="a geometry preset name or a table like [geometry]"),
    "params": Text(),
    "preset": Text(sorted(DEVICE_PRESETS), noun="device preset"),
    "instruments": Table(extra=Table({"kind": Text(max_len=64), "resource": Text(max_len=256), "bus": Anything(),
                                      "wiring": Table(extra=ListOf(Text(max_len=8), 0, 8)),
                                      "serial": Text(max_len=64)})),
    "faults": ListOf(Text(max_len=200), 0, 256),
}


# ---- configuration -----------------------------------------------------------------------
#: `"STATION.toml?state=CHIP.npz@hilsim"` keeps the emulated chip in CHIP.npz between processes.
STATE_MARK = "?state="


def load_emulation(path: Union[str, Path, None]) -> dict:
    """The validated [emulation] table of a station TOML (DEFAULT_EMULATION for None / "")."""
    if path in (None, "", "unset"):
        return _validate(DEFAULT_EMULATION, "DEFAULT_EMULATION", Path("."))
    p = Path(path)
    cfg = read_toml(p, f"@hilsim: station file {str(p)!r} not found", "@hilsim: station file")
    if "emulation" not in cfg:
        raise ConfigError(f"@hilsim: station file {p} has no [emulation] table describing the emulated "
                          f"instruments")
    return _validate(cfg["emulation"], str(p), p.resolve().parent, board_names(cfg))


def board_names(cfg: dict) -> dict:
    """{station instrument name: emulated board name} of a station file's hilsim:// array boards."""
    out = {}
    for name, t in (cfg.get("instruments") or {}).items():
        if isinstance(t, dict) and t.get("kind") == "array-board":
            port = str(t.get("port", ""))
            out[name] = port.rstrip("/").rsplit("/", 1)[-1] if port.startswith("hilsim://") else name
    return out


def _validate(em: Any, where: str, base: Path, boards: Optional[dict] = None) -> dict:
    if not isinstance(em, dict):
        raise ConfigError(f"{where}: [emulation] must be a table")
    unknown = set(em) - _EMULATION_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} in [emulation]; known: "
                          f"{sorted(_EMULATION_KEYS)}")
    with located(where):
        Table({k: _EMULATION_SPECS.get(k, Anything()) for k in _EMULATION_KEYS}).check(em, "emulation")
    out = {"world": em.get("world", "default"), "seed": em.get("seed", 0),
           "geometry": em.get("geometry", "yao"), "params": em.get("params"), "preset": em.get("preset"),
           "instruments": {}}
    if out["params"] is not None and out["preset"] is not None:
        raise ConfigError(f"{where}: emulation.preset: give emulation.preset or emulation.params, not both")
    if not isinstance(out["world"], str) or not out["world"]:
        raise ConfigError(f"{where}: emulation.world must be a non-empty string")
    if isinstance(out["seed"], bool) or not isinstance(out["seed"], int) or out["seed"] < 0:
        raise ConfigError(f"{where}: emulation.seed must be a non-negative integer, got {out['seed']!r}")
    if out["params"] is not None:
        out["params"] = str((base / out["params"]).resolve())
    insts = em.get("instruments", {})
    if not isinstance(insts, dict):
        raise ConfigError(f"{where}: emulation.instruments must be a table of instrument tables")
    seen = {}
    for name, spec in insts.items():
        key = f"{where}: [emulation.instruments.{name}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{key} must be a table")
        unknown = set(spec) - _INSTRUMENT_KEYS
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {sorted(unknown)}; known: {sorted(_INSTRUMENT_KEYS)}")
        for req in ("kind", "resource"):
            if not isinstance(spec.get(req), str) or not spec[req]:
                raise ConfigError(f"{key}: '{req}' is required (a string)")
        bus = spec.get("bus", "gpib")
        if bus not in BUSES:
            raise ConfigError(f"{key}: bus {bus!r} unknown; use one of {sorted(BUSES)}")
        wiring = spec.get("wiring", {})
        if not isinstance(wiring, dict):
            raise ConfigError(f"{key}: wiring must be a table channel -> list of terminals")
        res = _canon(spec["resource"])
        if res in seen:
            raise ConfigError(f"{key}: resource {spec['resource']} is also used by {seen[res]}")
        seen[res] = name
        out["instruments"][name] = {"kind": spec["kind"], "resource": spec["resource"], "bus": bus,
                                    "wiring": wiring, "serial": spec.get("serial")}
    try:
        out["faults"] = plan_faults(em.get("faults"), [*out["instruments"], *(boards or {}).values()])
    except ValueError as e:
        raise ConfigError(f"{where}: emulation.faults: {e}") from None
    return out


def check_emulation(em: Any, cfg: dict) -> dict:
    """Validate a station file's [emulation] table (and its parameter file) exactly as the @hilsim
    backend reads it, without building the world (hil.registry calls this for every station file)."""
    from .params import DeviceParams
    path = cfg.get("_path")
    where = f"station file {path}" if path else "station"
    out = _validate(em, where, Path(path).resolve().parent if path else Path("."), board_names(cfg))
    if out["params"] is not None:
        try:
            DeviceParams.load(out["params"])
        except ConfigError as e:
            raise ConfigError(f"{where}: emulation.params: {e}") from None
    return out


def _canon(resource: str) -> str:
    try:
        return rname.to_canonical_name(resource).upper()
    except Exception:
        return resource.strip().upper()


# ---- benches: instruments per world -------------------------------------------------------
@dataclass
class Bench:
    """The emulated instruments of one world, by canonical resource name and by source name."""

    world: EmulatedWorld
    by_resource: dict = field(default_factory=dict)
    by_name: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)     # canonical -> as written in the config


_BENCHES: dict[str, Bench] = {}
_BENCH_LOCK = threading.Lock()


def build_bench(emulation: dict) -> Bench:
    """Instruments of a validated [emulation] table on its world (created on first use);
    calling again with the same world reuses the instruments (state persists like hardware)."""
    from .params import DeviceParams
    geom = emulation["geometry"]
    geometry = preset(geom) if isinstance(geom, str) else Geometry.from_dict(geom)
    params = (DeviceParams.load(emulation["params"]) if emulation.get("params")
              else DeviceParams.preset(emulation["preset"]) if emulation.get("preset") else None)
    world = get_world(emulation["world"], geometry=geometry, seed=emulation["seed"], params=params,
                      state_path=emulation.get("state_path"))
    with _BENCH_LOCK:
        bench = _BENCHES.get(world.name)
        if bench is None or bench.world is not world:
            bench = _BENCHES[world.name] = Bench(world)
            for source, kind, after in emulation.get("faults", ()):     # [emulation] faults, once per world
                world.faults.arm(source, kind, after)
        for name, spec in emulation["instruments"].items():
            res = _canon(spec["resource"])
            if res in bench.by_resource:
                continue
            try:
                inst = make_instrument(spec["kind"], world, name, spec["wiring"], spec["bus"], spec.get("serial"))
            except ValueError as e:
                raise ConfigError(f"[emulation.instruments.{name}]: {e}") from None
            bench.by_resource[res] = inst
            bench.by_name[name] = inst
            bench.resources[res] = spec["resource"]
        return bench


# ---- pyvisa library -----------------------------------------------------------------------
@dataclass
class _Session:
    inst: EmulatedInstrument
    resource: str
    attrs: dict
    replies: deque = field(default_factory=deque)     # complete reply messages (bytes, each with END)


_DEFAULT_ATTRS = {
    RA.timeout_value: 2000, RA.termchar: ord("\n"), RA.termchar_enabled: constants.VI_FALSE,
    RA.send_end_enabled: constants.VI_TRUE, RA.suppress_end_enabled: constants.VI_FALSE,
    RA.io_prot: 1, RA.max_queue_length: 50,
}


class HilsimVisaLibrary(highlevel.VisaLibraryBase):
    """pyvisa backend reaching the emulated instruments (library path = station TOML or unset)."""

    @staticmethod
    def get_library_paths():
        return (LibraryPath("unset"),)

    @staticmethod
    def get_debug_info():
        return {"backend": "memristor-hil emulated instruments"}

    def _init(self) -> None:
        self.sessions: dict[int, Any] = {}
        path, _, state = str(self.library_path).partition(STATE_MARK)
        self._config_path = None if path in ("", "unset") else path
        self.emulation = load_emulation(self._config_path)
        if state:
            self.emulation["state_path"] = state

    def _bench(self) -> Bench:
        return build_bench(self.emulation)

    def chip_identity(self) -> dict:
        """Identity (random id, seed, geometry) of the emulated chip behind these instruments."""
        return self._bench().world.chip.identity()

    def _register(self, obj) -> int:
        while True:
            s = random.randint(1_000_000, 9_999_999)
            if s not in self.sessions:
                self.sessions[s] = obj
                return s

    def open_default_resource_manager(self):
        return self._register(self), StatusCode.success

    def list_resources(self, session, query: str = "?*::INSTR"):
        res = tuple(self._bench().resources.values())
        found = rname.filter(res, query)
        if not found:
            raise errors.VisaIOError(StatusCode.error_resource_not_found.value)
        return found

    def open(self, session, resource_name: str, access_mode=constants.AccessModes.no_lock,
             open_timeout=constants.VI_TMO_IMMEDIATE):
        bench = self._bench()
        inst = bench.by_resource.get(_canon(resource_name))
        if inst is None:
            raise errors.VisaIOError(StatusCode.error_resource_not_found.value)
        parsed = rname.parse_resource_name(resource_name)
        attrs = dict(_DEFAULT_ATTRS)
        attrs[RA.resource_name] = str(parsed)
        attrs[RA.interface_type] = parsed.interface_type_const
        sess = _Session(inst, resource_name, attrs)
        return self._register(sess), StatusCode.success

    def close(self, session):
        s = self.sessions.pop(session, None)
        if s is None:
            return StatusCode.error_invalid_object
        if isinstance(s, _Session):
            s.inst.world.checkpoint()
        return StatusCode.success

    def _sess(self, session) -> _Session:
        s = self.sessions.get(session)
        if not isinstance(s, _Session):
            raise errors.VisaIOError(StatusCode.error_invalid_object.value)
        return s

    def _timeout_s(self, s: _Session) -> float:
        t = s.attrs.get(RA.timeout_value, 2000)
        return 0.0 if t in (None, constants.VI_TMO_INFINITE) else float(t) / 1000.0

    def write(self, session, data: bytes):
        s = self._sess(session)
        world = s.inst.world
        with world.lock:
            try:
                ex = s.inst.exchange(bytes(data))
            except InstrumentDisconnected:
                raise errors.VisaIOError(StatusCode.error_connection_lost.value) from None
            if ex.fault == "timeout":
                world.spend(self._timeout_s(s))
                raise errors.VisaIOError(StatusCode.error_timeout.value)
            if ex.reply:
                for line in ex.reply.split(b"\n")[:-1]:
                    s.replies.append(bytearray(line + b"\n"))
        return len(data), StatusCode.success

    def read(self, session, count: int):
        s = self._sess(session)
        world = s.inst.world
        if s.inst.name in world.faults.disconnected:
            raise errors.VisaIOError(StatusCode.error_connection_lost.value)
        if not s.replies:
            world.spend(self._timeout_s(s))           # the host waited its whole timeout
            raise errors.VisaIOError(StatusCode.error_timeout.value)
        msg = s.replies[0]
        chunk = bytes(msg[:count])
        del msg[:count]
        if msg:
            return chunk, StatusCode.success_max_count_read
        s.replies.popleft()
        return chunk, StatusCode.success

    def clear(self, session):
        s = self._sess(session)
        if s.inst.name in s.inst.world.faults.disconnected:
            raise errors.VisaIOError(StatusCode.error_connection_lost.value)
        s.replies.clear()
        with s.inst.world.lock:
            s.inst.device_clear()
        return StatusCode.success

    def flush(self, session, mask):
        self._sess(session).replies.clear()
        return StatusCode.success

    def read_stb(self, session):
        s = self._sess(session)
        return (0x10 if s.replies else 0), StatusCode.success

    def assert_trigger(self, session, protocol):
        return StatusCode.success

    def get_attribute(self, session, attribute):
        s = self.sessions.get(session)
        if not isinstance(s, _Session):
            return 0, StatusCode.error_nonsupported_attribute
        if attribute in s.attrs:
            return s.attrs[attribute], StatusCode.success
        return 0, StatusCode.error_nonsupported_attribute

    def set_attribute(self, session, attribute, attribute_state):
        s = self.sessions.get(session)
        if not isinstance(s, _Session):
            return StatusCode.error_invalid_object
        s.attrs[attribute] = attribute_state
        return StatusCode.success

    def disable_event(self, session, event_type, mechanism):
        return StatusCode.success

    def discard_events(self, session, event_type, mechanism):
        return StatusCode.success

    def lock(self, session, lock_type, timeout, requested_key=None):
        return "", StatusCode.success

    def unlock(self, session):
        return StatusCode.success


# ---- TCP server ---------------------------------------------------------------------------
class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        inst: EmulatedInstrument = self.server.inst          # type: ignore[attr-defined]
        while True:
            try:
                line = self.rfile.readline()
            except OSError:
                return
            if not line:
                return
            with inst.world.lock:
                try:
                    ex = inst.exchange(line if line.endswith(b"\n") else line + b"\n")
                except InstrumentDisconnected:
                    return                                       # drop the connection
            if ex.fault == "timeout":
                continue
            if ex.reply:
                try:
                    self.wfile.write(ex.reply)
                    self.wfile.flush()
                except OSError:
                    return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class SmuServer:
    """Running raw-socket servers: `ports[name]`, `resources[name]` (pyvisa-py SOCKET strings)."""

    host: str
    ports: dict
    _servers: list
    _threads: list

    @property
    def resources(self) -> dict:
        return {n: f"TCPIP0::{self.host}::{p}::SOCKET" for n, p in self.ports.items()}

    def close(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(world: EmulatedWorld, instruments, host: str = "127.0.0.1", port_base: int = 5025) -> SmuServer:
    """Serve each emulated instrument on its own TCP port (port_base, port_base + 1, ...; 0 =
    free ports), newline-terminated SCPI/TSP, one reply line per query, in background threads.
    `instruments`: dict name -> EmulatedInstrument (or a Bench). Faults: timeout = no reply,
    disconnect = the connection is closed."""
    if isinstance(instruments, Bench):
        instruments = instruments.by_name
    servers, threads, ports = [], [], {}
    try:
        for i, (name, inst) in enumerate(instruments.items()):
            if inst.world is not world:
                raise ConfigError(f"serve: instrument {name} belongs to world {inst.world.name!r}, "
                                  f"not {world.name!r}")
            port = 0 if port_base == 0 else port_base + i
            srv = _Server((host, port), _Handler)
            srv.inst = inst
            t = threading.Thread(target=srv.serve_forever, name=f"hilsim-{name}", daemon=True)
            t.start()
            servers.append(srv)
            threads.append(t)
            ports[name] = srv.server_address[1]
            log.info("serving %s (%s) on %s:%d", name, type(inst).__name__, host, ports[name])
    except OSError as e:
        for s in servers:
            s.shutdown()
            s.server_close()
        raise ConfigError(f"serve: cannot listen on {host}:{port_base + len(servers)}: {e}") from None
    return SmuServer(host, ports, servers, threads)
