"""The emulated instruments of a station file's [emulation] table on TCP.

Each SMU listens on a raw SCPI/TSP socket (pyvisa-py `TCPIP0::HOST::PORT::SOCKET`, the line
protocol of `visa_backend.serve`, lines up to MAX_LINE bytes) and each array board on a byte bridge (pyserial `socket://HOST:PORT`) to its
emulated firmware, so other processes and third-party tools reach the same emulated station.

The servers have no authentication: they bind to loopback (127.0.0.1) by default and are for
local tools only. Per-connection state (handler, thread, serial port) lives only as long as the
connection; `close()` ends the connections still open and joins their threads.
"""
from __future__ import annotations

import logging
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from pathlib import Path

import serial

from hil.errors import ConfigError
from hil.options import MAX_PORT
from hil.registry import load_station_file

from .visa_backend import _Handler, board_names, build_bench, load_emulation
from .world import plan_faults

log = logging.getLogger(__name__)

MAX_LINE = 4 * 2**20      # bytes of one SCPI/TSP line; a longer one ends the connection


# ---- emulated station on TCP ---------------------------------------------------------------------
@dataclass
class StationServer:
    """Running TCP servers of an emulated station: `addresses[name]` for every instrument."""

    world: object
    host: str
    addresses: dict = field(default_factory=dict)
    _closers: list = field(default_factory=list)

    def close(self) -> None:
        for c in reversed(self._closers):
            try:
                c()
            except Exception as e:       # best effort
                log.warning("closing a station server: %s", e)
        self._closers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _board_bridge(world_name: str, board: str, host: str, port: int):
    """TCP server whose connections are byte pipes to the emulated board (pyserial hilsim://)."""
    url = f"hilsim://{world_name}/{board}"

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                ser = serial.serial_for_url(url, timeout=0)
            except (serial.SerialException, ValueError) as e:
                log.warning("board bridge %s: cannot open %s: %s", board, url, e)
                return
            try:
                while True:
                    try:
                        data = self.request.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    try:
                        ser.write(data)
                        n = ser.in_waiting
                        reply = ser.read(n) if n else b""
                    except serial.SerialException:
                        return                       # disconnect fault: drop the connection
                    if reply:
                        try:
                            self.request.sendall(reply)
                        except OSError:
                            return
            finally:
                ser.close()

    return _start(Handler, host, port, board)


class _Lines:
    """A handler's rfile whose readline() refuses lines longer than MAX_LINE (OSError: the
    handler drops the connection) instead of buffering without bound."""

    def __init__(self, f) -> None:
        self.f = f

    def readline(self, *_) -> bytes:
        line = self.f.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise OSError(f"line longer than {MAX_LINE} bytes")
        return line

    def __getattr__(self, name):
        return getattr(self.f, name)


class _SmuHandler(_Handler):
    def setup(self) -> None:
        super().setup()
        self.rfile = _Lines(self.rfile)


def _smu_server(inst, host: str, port: int):
    """TCP server of one emulated SMU (newline-terminated SCPI/TSP, one reply line per query)."""
    return _start(_SmuHandler, host, port, inst.name, inst=inst)


def _start(handler, host: str, port: int, name: str, **attrs):
    """Listen on host:port with `handler` in a background thread: (port, close)."""
    try:
        srv = _ConnectionServer((host, port), handler)
    except OSError as e:
        raise ConfigError(f"sim-station serve: cannot listen on {host}:{port} for {name}: {e}") from None
    for k, v in attrs.items():
        setattr(srv, k, v)
    t = threading.Thread(target=srv.serve_forever, name=f"hilsim-{name}", daemon=True)
    t.start()

    def close() -> None:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)
    return srv.server_address[1], close


class _ConnectionServer(socketserver.ThreadingTCPServer):
    """Threading TCP server that knows its open connections: server_close() shuts them down and
    joins their handler threads (nothing per connection outlives it)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs) -> None:
        self.live: dict = {}                  # socket -> handler thread
        self._live_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             name=f"hilsim-conn-{client_address[1]}", daemon=True)
        with self._live_lock:
            self.live[request] = t
        t.start()

    def shutdown_request(self, request) -> None:
        with self._live_lock:
            self.live.pop(request, None)
        super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        with self._live_lock:
            live = list(self.live.items())
        for sock, _ in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, t in live:
            if t is not threading.current_thread():
                t.join(timeout=5)


def serve_station(station_file, *, host: str = "127.0.0.1", port_base: int = 5025,
                  faults=()) -> StationServer:
    """Serve the emulated instruments of `station_file` on TCP: SMUs on port_base,
    port_base + 1, ... and each array board after them (0: free ports). `faults`: specs
    `"[SOURCE:]KIND@N"` armed on the world (see `world.parse_fault`), as `[emulation] faults`."""
    path = Path(station_file)
    cfg = load_station_file(path)
    if "emulation" not in cfg:
        raise ConfigError(f"{path}: no [emulation] table; only emulated stations can be served")
    emulation = load_emulation(path)
    boards = board_names(cfg)
    n_ports = len(emulation["instruments"]) + len(boards)
    if isinstance(port_base, bool) or not isinstance(port_base, int) or not 0 <= port_base <= MAX_PORT:
        raise ConfigError(f"sim-station serve --port-base {port_base!r}: must be 0 (free ports) or a TCP port "
                          f"1..{MAX_PORT}")
    if port_base and port_base + n_ports - 1 > MAX_PORT:
        raise ConfigError(f"sim-station serve --port-base {port_base}: {path} has {n_ports} instruments, so "
                          f"ports {port_base}..{port_base + n_ports - 1} would pass {MAX_PORT}; use at most "
                          f"{MAX_PORT - n_ports + 1} (or 0 for free ports)")
    try:
        plan = plan_faults(faults, [*emulation["instruments"], *boards.values()])
    except ValueError as e:
        raise ConfigError(f"sim-station serve --fault: {e}") from None
    bench = build_bench(emulation)       # registers hilsim:// as well (import sim_backend)
    for source, kind, after in plan:
        bench.world.faults.arm(source, kind, after)
    server = StationServer(bench.world, host)
    try:
        for k, (name, inst) in enumerate(bench.by_name.items()):
            p, close = _smu_server(inst, host, 0 if port_base == 0 else port_base + k)
            server._closers.append(close)
            server.addresses[name] = f"TCPIP0::{host}::{p}::SOCKET"
        for k, (name, board) in enumerate(boards.items()):
            port = 0 if port_base == 0 else port_base + len(bench.by_name) + k
            p, close = _board_bridge(bench.world.name, board, host, port)
            server._closers.append(close)
            server.addresses[name] = f"socket://{host}:{p}"
    except BaseException:
        server.close()
        raise
    return server
