"""The emulated 2600B runs TSP in a sandbox that offers only what a real 2600B offers: every escape
a hostile client can try is refused with the 2600B's error text, memory and time are capped, and
the instrument (and other clients) keep being served — in process and through the TCP server."""
from __future__ import annotations

import itertools
import socket

import pytest

from drivers.keithley2600 import write_verify_script
from hil.geometry import Cells, Geometry
from sim_backend.smu import make_instrument
from sim_backend.visa_backend import serve
from sim_backend.world import EmulatedWorld

SMALL = Geometry(1, 8, 4, "small")
_ids = itertools.count()
IDN = "Keithley Instruments Inc., Model 2602B"


def _marker(tmp_path):
    return str(tmp_path / "escaped").replace("\\", "/")


# (chunk, text expected in the error queue); {m} is a file the chunk would create if it escaped
ESCAPES = [
    ("os.execute('touch {m}')", "attempt to index global 'os' (a nil value)"),
    ("local f = io.open('{m}', 'w') f:write('x') f:close()", "attempt to index global 'io' (a nil value)"),
    ("io.popen('touch {m}')", "attempt to index global 'io' (a nil value)"),
    ("print(os.getenv('HOME'))", "attempt to index global 'os' (a nil value)"),
    ("require('os').execute('touch {m}')", "attempt to call global 'require' (a nil value)"),
    ("loadstring(\"os.execute('touch {m}')\")()", "attempt to call global 'loadstring' (a nil value)"),
    ("load(function() return nil end)", "attempt to call global 'load' (a nil value)"),
    ("dofile('{m}')", "attempt to call global 'dofile' (a nil value)"),
    ("loadfile('{m}')", "attempt to call global 'loadfile' (a nil value)"),
    ("print(debug.getupvalue(print, 1))", "attempt to index global 'debug' (a nil value)"),
    ("debug.sethook()", "attempt to index global 'debug' (a nil value)"),
    ("print(debug.getregistry())", "attempt to index global 'debug' (a nil value)"),
    ("package.loadlib('libc.so.6', 'system')", "attempt to index global 'package' (a nil value)"),
    ("python.builtins.__import__('os').system('touch {m}')", "attempt to index global 'python' (a nil value)"),
    ("python.eval('1')", "attempt to index global 'python' (a nil value)"),
    ("collectgarbage('stop')", "attempt to call global 'collectgarbage' (a nil value)"),
    ("print(gcinfo())", "attempt to call global 'gcinfo' (a nil value)"),
    ("setfenv(1, {{}})", "attempt to call global 'setfenv' (a nil value)"),
    ("print(getfenv(0).os)", "attempt to call global 'getfenv' (a nil value)"),
    ("local p = newproxy(true)", "attempt to call global 'newproxy' (a nil value)"),
    ("module('x')", "attempt to call global 'module' (a nil value)"),
    ("print(string.dump(print))", "attempt to call field 'dump' (a nil value)"),
    ("local c = coroutine.wrap(function() while true do end end) c()",
     "attempt to index global 'coroutine' (a nil value)"),
    ("getmetatable('').__index.dump = 1", "attempt to index field '__index' (a nil value)"),
    ("setmetatable(smua, {{}})", "cannot change a protected metatable"),
    ("setmetatable(smua.source, {{}})", "cannot change a protected metatable"),
    ("rawset(smua.source, 'levelv', 40)", "rawset: cannot change the instrument's objects"),
    ("print(pcall(smua.source.__newindex, 1, 2, 3))", None),          # no metamethods to reach
    ("local x = string.rep('x', 2^30)", "string.rep: a result of more than"),
    ("local x = ('x'):rep(2^30)", "string.rep: a result of more than"),
    ("local x = string.rep('', 1e15)", "string.rep: a result of more than"),
    ("local t = {{}} for i = 1, 1e9 do t[i] = i end", "not enough memory"),
    ("local t = {{}} for i = 1, 1e9 do t[i] = tostring(i) .. 'xxxxxxxxxxxxxxxx' end", "not enough memory"),
    ("local s = 'x' while true do s = s .. s end", "not enough memory"),
    ("print(string.find(string.rep('a', 20000), '.-.-.-.-b'))", "too long for a pattern"),
    ("\x1bLuaQ\x00\x01\x04\x08\x04\x08\x00", "binary chunks are not accepted"),
    ("error(string.rep('e', 100000))", "TSP Runtime error at line 1: eee"),
]
RUNAWAYS = [
    "while true do end",
    "while true do pcall(function() while true do end end) end",
    "local function f() return pcall(f) end while true do f() end",
    "xpcall(function() while true do end end, function() while true do end end) while true do end",
    "for i = 1, 1e12 do local t = {{}} end",
]


@pytest.fixture
def world():
    return EmulatedWorld(SMALL, seed=1, name=f"t-tsp-{next(_ids)}")


def x(inst, msg):
    return inst.exchange((msg + "\n").encode()).reply.decode().strip()


def drain(inst):
    out = []
    while inst.errors:
        out.append(inst.pop_error())
    return out


def _check_refused(errors, expect, chunk):
    if expect is None:
        assert errors == [], chunk
        return
    assert len(errors) == 1, (chunk, errors)
    code, msg = errors[0]
    assert code in (-285, -286), (chunk, errors)
    assert expect in msg, (chunk, msg)
    assert msg.startswith("TSP Syntax error" if code == -285 else "TSP Runtime error"), msg
    assert len(msg) <= 256


def test_missing_facility_gets_the_2600b_error_text(world):
    k = make_instrument("keithley2602b", world, "k", {"smua": ["BL", "SL"], "smub": ["WL"]})
    x(k, "os.execute('id')")
    assert x(k, "print(errorqueue.next())") == \
        "-2.86000e+02\tTSP Runtime error at line 1: attempt to index global 'os' (a nil value)\t" \
        "2.00000e+00\t0.00000e+00"


@pytest.mark.parametrize("chunk,expect", ESCAPES, ids=[f"escape{i}" for i in range(len(ESCAPES))])
def test_escapes_are_refused_and_the_instrument_keeps_serving(world, tmp_path, chunk, expect):
    k = make_instrument("keithley2602b", world, "k", {"smua": ["BL", "SL"], "smub": ["WL"]})
    other = make_instrument("keithley2602b", world, "k2", {"smua": ["BL", "SL"]})
    chunk = chunk.format(m=_marker(tmp_path))
    out = x(k, chunk)
    _check_refused(drain(k), expect, chunk)
    assert not (tmp_path / "escaped").exists()
    assert "python" not in out.lower() and "userdata" not in out
    assert k.lua.get_memory_used() <= 16 * 2**20 // 4                 # a bomb's garbage is freed at once
    assert x(k, "*IDN?").startswith(IDN)
    assert x(k, "smua.source.levelv = 0.25 print(smua.source.levelv)") == "2.50000e-01"
    assert x(other, "print(1 + 1)") == "2.00000e+00"


@pytest.mark.parametrize("chunk", RUNAWAYS, ids=[f"runaway{i}" for i in range(len(RUNAWAYS))])
def test_runaway_chunks_are_stopped_even_through_pcall(world, monkeypatch, chunk):
    import sim_backend.smu.k2600 as k2600
    monkeypatch.setattr(k2600, "INSTRUCTION_LIMIT", 2_000_000)
    k = make_instrument("keithley2602b", world, "k", {"smua": ["BL"]})
    x(k, chunk.format())
    errors = drain(k)
    assert len(errors) == 1 and "runaway script aborted" in errors[0][1], errors
    assert x(k, "*IDN?").startswith(IDN)
    assert x(k, "local s = 0 for i = 1, 1000 do s = s + i end print(s)") == "5.00500e+05"   # not stuck aborting
    assert drain(k) == []


def test_only_the_2600b_globals_are_there(world):
    k = make_instrument("keithley2602b", world, "k", {"smua": ["BL"]})
    names = x(k, "local n = {} for k in pairs(_G) do n[#n + 1] = k end table.sort(n) print(table.concat(n, ' '))")
    assert set(names.split()) == {
        "_G", "_VERSION", "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "print", "rawequal",
        "rawget", "rawset", "select", "getmetatable", "setmetatable", "tonumber", "tostring", "type", "unpack",
        "string", "math", "table", "smua", "smub", "delay", "reset", "timer", "errorqueue", "format", "script"}
    assert x(k, "print(string.dump, string.rep('ab', 3), ('%d'):format(7), math.floor(2.5))") == \
        "nil\tababab\t7\t2.00000e+00"


def test_scripts_are_sandboxed_too_and_survive_a_reset_of_the_bindings(world, tmp_path):
    k = make_instrument("keithley2602b", world, "k", {"smua": ["BL"]})
    m = _marker(tmp_path)
    x(k, f"loadscript evil\nos.execute('touch {m}')\nendscript\nevil()")
    (code, msg), = drain(k)
    assert (code, msg) == (-286, "TSP Runtime error at line 1: attempt to index global 'os' (a nil value)")
    x(k, "smua = nil print = nil")                                    # a client breaks the globals ...
    x(k, "*RST")                                                      # ... *RST restores them
    assert x(k, "print(smua.source.output)") == "0.00000e+00" and not (tmp_path / "escaped").exists()


def test_driver_write_verify_script_still_runs_in_the_sandbox(world):
    k = make_instrument("keithley2602b", world, "k", {"smua": ["BL", "SL"], "smub": ["WL"]})
    x(k, f"loadscript hilwv\n{write_verify_script()}\nendscript\nhilwv.run()")
    assert drain(k) == []
    x(k, "hilwv_policy(0.2, 3.3, 2, 200, 1e-6, 1.8, 1.0, 0.05, 3.0, 1.0, 0.05, 2.5, 4.5, "
         "1e-6, 2.5, 0.1, 4.0, 3.0, 8, 2e-7)")
    world.route(Cells(0, 1, 1))
    world.set_drive("BL", "bus")
    world.set_drive("SL", "ground")
    world.set_drive("WL", "bus")
    x(k, "smua.source.limiti = 1e-3 smub.source.limiti = 1e-6 smua.source.output = 1 smub.source.output = 1")
    total = 0
    for lo, hi in ((14.5e-6, 15.5e-6), (4.5e-6, 5.5e-6)):             # SET up, then RESET down
        g, pulses, status = (float(v) for v in x(k, f"hilwv_cell({lo!r}, {hi!r})").split("\t"))
        assert drain(k) == []
        assert status == 0 and lo <= g <= hi
        total += pulses
    assert total >= 2


# ---- through a real TCP server on loopback -------------------------------------------------------
class _Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.sock.makefile("rwb")

    def send(self, line: str) -> None:
        self.f.write(line.encode("latin-1") + b"\n")
        self.f.flush()

    def query(self, line: str) -> str:
        self.send(line)
        return self.f.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def test_escapes_through_the_tcp_server_leave_it_serving_other_clients(world, tmp_path, monkeypatch):
    import sim_backend.smu.k2600 as k2600
    monkeypatch.setattr(k2600, "INSTRUCTION_LIMIT", 2_000_000)
    k = make_instrument("keithley2602b", world, "k", {"smua": ["BL", "SL"], "smub": ["WL"]})
    m = _marker(tmp_path)
    with serve(world, {"k": k}, host="127.0.0.1", port_base=0) as srv:
        assert srv.host == "127.0.0.1"
        port = srv.ports["k"]
        bystander = _Client(port)
        attacker = _Client(port)
        try:
            assert bystander.query("*IDN?").startswith(IDN)
            for chunk, expect in ESCAPES + [(r, "runaway script aborted") for r in RUNAWAYS[:2]]:
                chunk = chunk.format(m=m)
                attacker.send(chunk)
                if expect is None:
                    assert attacker.f.readline().startswith(b"false")  # what the chunk printed
                reply = attacker.query("print(errorqueue.count, errorqueue.next())")
                count, code, msg = reply.split("\t")[:3]
                if expect is None:
                    assert float(count) == 0, (chunk, reply)
                    continue
                assert float(count) == 1 and float(code) in (-285, -286) and expect in msg, (chunk, reply)
                assert bystander.query("print(1 + 2)") == "3.00000e+00"
            assert not (tmp_path / "escaped").exists()
            assert attacker.query("*IDN?").startswith(IDN)
            late = _Client(port)                                       # a new client is served as well
            try:
                assert late.query("*IDN?").startswith(IDN)
            finally:
                late.close()
        finally:
            attacker.close()
            bystander.close()
