"""The emulated instruments of a station file's [emulation] table on TCP.

Each SMU listens on a raw SCPI/TSP socket (pyvisa-py `TCPIP0::HOST::PORT::SOCKET`, served by
`visa_backend.serve`) and each array board on a byte bridge (pyserial `socket://HOST:PORT`) to its
emulated firmware, so other processes and third-party tools reach the same emulated station.
"""
from __future__ import annotations

import logging
import socketserver
import threading
from dataclasses import dataclass, field
from pathlib import Path

import serial

from hil.errors import ConfigError
from hil.registry import load_station_file

from .visa_backend import build_bench, load_emulation, serve

log = logging.getLogger(__name__)


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

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    try:
        srv = Server((host, port), Handler)
    except OSError as e:
        raise ConfigError(f"sim-station serve: cannot listen on {host}:{port} for the board: {e}") from None
    t = threading.Thread(target=srv.serve_forever, name=f"hilsim-board-{board}", daemon=True)
    t.start()

    def close() -> None:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=2)
    return srv.server_address[1], close


def serve_station(station_file, *, host: str = "127.0.0.1", port_base: int = 5025) -> StationServer:
    """Serve the emulated instruments of `station_file` on TCP: SMUs on port_base,
    port_base + 1, ... and each array board after them (0: free ports)."""
    path = Path(station_file)
    cfg = load_station_file(path)
    if "emulation" not in cfg:
        raise ConfigError(f"{path}: no [emulation] table; only emulated stations can be served")
    bench = build_bench(load_emulation(path))       # registers hilsim:// as well (import sim_backend)
    server = StationServer(bench.world, host)
    try:
        if bench.by_name:
            smu = serve(bench.world, bench, host=host, port_base=port_base)
            server._closers.append(smu.close)
            for name, port in smu.ports.items():
                server.addresses[name] = f"TCPIP0::{host}::{port}::SOCKET"
        boards = [(n, t) for n, t in (cfg.get("instruments") or {}).items()
                  if isinstance(t, dict) and t.get("kind") == "array-board"]
        for k, (name, t) in enumerate(boards):
            port_s = str(t.get("port", ""))
            board = port_s.rstrip("/").rsplit("/", 1)[-1] if port_s.startswith("hilsim://") else name
            port = 0 if port_base == 0 else port_base + len(bench.by_name) + k
            p, close = _board_bridge(bench.world.name, board, host, port)
            server._closers.append(close)
            server.addresses[name] = f"socket://{host}:{p}"
    except BaseException:
        server.close()
        raise
    return server
