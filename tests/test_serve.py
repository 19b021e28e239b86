"""`hil sim-station serve`: per-connection state is released (bounded memory over many clients),
close() ends open connections, bad --port-base values and fault specs are one-line errors, and
faults are armed from `--fault` and from `[emulation] faults` without writing code."""
from __future__ import annotations

import gc
import itertools
import socket
import threading
import tracemalloc

import pytest
import serial

from drivers.board_frames import IDENTIFY, encode_frame
from hil.cli import main
from hil.errors import ConfigError
from hil.cli.station import serve_station
from sim_backend.visa_backend import build_bench, load_emulation
from sim_backend.world import drop_world

_ids = itertools.count()

STATION = """
[station]
backend = "instruments"

[geometry]
n_pe = 1
rows = 8
cols = 4

[instruments.board]
kind = "array-board"
port = "hilsim://{world}/board"

[instruments.smu1]
kind = "keithley2600"
resource = "GPIB0::26::INSTR"
visa_library = "station.toml@hilsim"

[channels]
board = "board"
bl = "smu1.a"
sl = "smu1.a"
gate = "board"

[emulation]
world = "{world}"
geometry = {{ n_pe = 1, rows = 8, cols = 4 }}
{faults}

[emulation.instruments.smu1]
kind = "keithley2602b"
resource = "GPIB0::26::INSTR"
wiring = {{ smua = ["BL", "SL"], smub = ["WL"] }}
"""


@pytest.fixture
def make(tmp_path):
    """make(faults=...) -> path of an emulated station file on a fresh world (dropped afterwards)."""
    worlds = []

    def make_station(faults: str = "") -> str:
        world = f"t-serve-{next(_ids)}"
        worlds.append(world)
        p = tmp_path / f"{world}.toml"
        p.write_text(STATION.format(world=world, faults=faults))
        return str(p)
    yield make_station
    for w in worlds:
        drop_world(w)


def _port(addr: str) -> int:
    return int(addr.split("::")[2] if addr.startswith("TCPIP") else addr.rsplit(":", 1)[1])


class _Line:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.sock.makefile("rwb")

    def query(self, text: str) -> str:
        self.f.write(text.encode() + b"\n")
        self.f.flush()
        return self.f.readline().decode().strip()

    def send(self, text: str) -> None:
        self.f.write(text.encode() + b"\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def _connection_threads() -> list:
    return [t for t in threading.enumerate() if "process_request" in t.name or t.name.startswith("hilsim-conn")]


def _settle() -> None:
    """Wait until the server has seen every client hang up (joins, no sleeps)."""
    while True:
        threads = _connection_threads()
        if not threads:
            return
        for t in threads:
            try:
                t.join(timeout=30)
            except RuntimeError:                                    # not started yet: joined on the next pass
                pass


def _cycle(smu_port: int, board_port: int, k: int) -> None:
    c = _Line(smu_port)
    c.send("smua.source.output = 1")
    for j in range(10):                                             # output changes are logged events
        c.send(f"smua.source.levelv = {0.1 + 0.01 * ((k + j) % 7)}")
    assert c.query("*IDN?").startswith("Keithley")
    c.send("smua.source.output = 0")
    c.close()
    b = socket.create_connection(("127.0.0.1", board_port), timeout=30)
    b.sendall(encode_frame(k, IDENTIFY))
    assert b.recv(4096)                                             # served: its handler thread ran
    b.close()


def test_connect_disconnect_cycles_release_per_connection_state(make, monkeypatch):
    import sim_backend.world as world_mod
    monkeypatch.setattr(world_mod, "MAX_EVENTS", 200, raising=False)
    path = make()
    threads0 = set(threading.enumerate())
    with serve_station(path, port_base=0) as srv:
        smu_port, board_port = _port(srv.addresses["smu1"]), _port(srv.addresses["board"])
        for k in range(30):                                         # warm up (imports, caches, Lua heap)
            _cycle(smu_port, board_port, k)
        _settle()
        gc.collect()
        tracemalloc.start()
        try:
            snap0 = tracemalloc.take_snapshot()
            for k in range(300):
                _cycle(smu_port, board_port, k)
            _settle()
            gc.collect()
            snap1 = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        keep = [tracemalloc.Filter(True, "*sim_backend*"), tracemalloc.Filter(True, "*socketserver*")]
        grown = sum(s.size_diff for s in snap1.filter_traces(keep).compare_to(snap0.filter_traces(keep), "filename"))
        assert grown < 100_000, f"{grown} bytes kept after 300 connections"
        assert len(srv.world.events) <= 250                        # the event log is bounded
        assert srv.world.counters["smu1"]["transactions"] >= 330 * 13
        assert _connection_threads() == []
        from sim_backend.visa_backend import _Handler
        assert not [o for o in gc.get_objects() if isinstance(o, _Handler)]
    assert set(threading.enumerate()) <= threads0                   # no thread of the server is left


def test_close_ends_connections_still_open_and_joins_their_threads(make):
    from drivers.board import ArrayBoard
    path = make()
    srv = serve_station(path, port_base=0)
    try:
        board = ArrayBoard(srv.addresses["board"], timeout_s=2.0)    # identified: its handler thread runs
        smu = _Line(_port(srv.addresses["smu1"]))
        assert smu.query("*IDN?").startswith("Keithley")
        assert len(_connection_threads()) == 2
        srv.close()
        assert _connection_threads() == []
        with pytest.raises(serial.SerialException, match="disconnected"):
            board._port.read(1)                                     # the server hung up
        assert smu.f.readline() == b""
        smu.close()
    finally:
        srv.close()


def test_a_line_without_end_does_not_grow_the_server(make, monkeypatch):
    import sim_backend.serve as serve_mod
    monkeypatch.setattr(serve_mod, "MAX_LINE", 4096, raising=False)
    path = make()
    with serve_station(path, port_base=0) as srv:
        port = _port(srv.addresses["smu1"])
        other = _Line(port)
        hog = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            try:
                for _ in range(64):                                 # 1 MiB, no newline
                    hog.sendall(b"x" * 16384)
            except OSError:
                pass                                                # the server hung up mid-way
            try:
                rest = hog.recv(10)
            except ConnectionResetError:                            # closed with our bytes unread
                rest = b""
            assert rest == b""                                      # the server hung up, buffered nothing more
            assert other.query("print(7)") == "7.00000e+00"
        finally:
            hog.close()
            other.close()


# ---- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["70000", "-1", "65536", "1e9", "x"])
def test_port_base_out_of_range_is_a_one_line_error(value, capsys):
    assert main(["sim-station", "serve", f"--port-base={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--port-base" in err and "0..65535" in err


def test_port_range_passing_65535_is_a_one_line_error(make, capsys):
    path = make()                                                  # two instruments: smu1 and the board
    assert main(["sim-station", "serve", "--station", path, "--port-base", "65535"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--port-base 65535" in err and "65534" in err


def test_help_says_loopback_and_no_authentication(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sim-station", "serve", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "NO AUTHENTICATION" in out and "127.0.0.1" in out and "local tools only" in out
    from hil.cli import build_parser
    args = build_parser().parse_args(["sim-station", "serve"])
    assert args.host == "127.0.0.1"


# ---- faults without code ------------------------------------------------------------------------
def test_fault_option_arms_faults_on_the_served_station(make):
    path = make()
    with serve_station(path, port_base=0, faults=["smu1:drop@1", "board:timeout@5"]) as srv:
        assert dict(srv.world.faults._armed)["board"][0].kind == "timeout"
        c = _Line(_port(srv.addresses["smu1"]))
        try:
            assert c.query("*IDN?").startswith("Keithley")          # transaction 1: served
            c.send("print(1)")                                      # transaction 2: dropped
            assert c.query("print(2)") == "2.00000e+00"             # the next reply is the next query's
        finally:
            c.close()
        assert ("smu1", "drop") in srv.world.faults.fired


def test_fault_option_through_the_cli(make, capsys):
    from hil.cli import build_parser
    from hil.cli.station import cmd_sim_station_serve
    path = make()
    args = build_parser().parse_args(["sim-station", "serve", "--station", path, "--port-base", "0",
                                      "--fault", "reset@3", "--fault", "board:disconnect@0"])
    stop = threading.Event()
    stop.set()
    assert cmd_sim_station_serve(args, wait=stop) == 0
    bench = build_bench(load_emulation(path))
    armed = {s: [(f.kind, f.after) for f in fs] for s, fs in bench.world.faults._armed.items() if fs}
    assert armed == {"smu1": [("reset", 3)], "board": [("reset", 3), ("disconnect", 0)]}


def test_station_file_faults_are_armed_once_per_world(make):
    path = make('faults = ["smu1:garble@1", "drop@0"]')
    em = load_emulation(path)
    assert em["faults"] == [("smu1", "garble", 1), ("smu1", "drop", 0), ("board", "drop", 0)]
    bench = build_bench(em)
    smu = bench.by_name["smu1"]
    assert smu.exchange(b"*IDN?\n").fault == "drop"
    assert smu.exchange(b"*IDN?\n").fault == "garble"
    assert smu.exchange(b"*IDN?\n").fault is None
    build_bench(load_emulation(path))                               # opening again does not re-arm
    assert smu.exchange(b"*IDN?\n").fault is None


@pytest.mark.parametrize("faults,match", [
    ('faults = ["board:melt@5"]', r"emulation\.faults: unknown fault kind 'board:melt@5'.*timeout, garble, drop, "
                                  r"reset, disconnect"),
    ('faults = ["board:timeout"]', r"emulation\.faults: malformed fault 'board:timeout'.*KIND@N"),
    ('faults = ["timeout@-1"]', r"malformed fault 'timeout@-1'"),
    ('faults = ["smu9:timeout@1"]', r"emulation\.faults: fault 'smu9:timeout@1': no instrument 'smu9'; this "
                                    r"station has smu1, board"),
    ('faults = "board:timeout@5"', r"emulation\.faults"),
    ('faults = [5]', r"emulation\.faults\[0\]"),
])
def test_bad_fault_specs_in_a_station_file_are_one_line_errors(make, capsys, faults, match):
    path = make(faults)
    with pytest.raises(ConfigError, match=match) as e:
        load_emulation(path)
    assert path in str(e.value) and "\n" not in str(e.value)
    assert main(["sim-station", "serve", "--station", path, "--port-base", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "emulation.faults" in err


@pytest.mark.parametrize("spec,match", [
    ("melt@5", "unknown fault kind 'melt@5'"), ("timeout", "malformed fault 'timeout'"),
    ("nosuch:timeout@1", "no instrument 'nosuch'"), ("timeout@1e3", "malformed fault"),
])
def test_bad_fault_option_is_a_one_line_error(make, capsys, spec, match):
    path = make()
    assert main(["sim-station", "serve", "--station", path, "--port-base", "0", "--fault", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--fault" in err and match in err
