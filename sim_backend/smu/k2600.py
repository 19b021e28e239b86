"""Emulated Keithley 2600B: executes the TSP (Lua) the host sends in a sandboxed Lua runtime (lupa).

Exposed to Lua — and nothing else, as on a real 2600B: smua/smub (source.levelv/.output/.limiti/
.rangev/.autorangev/.func, measure.i()/.v(), measure.nplc/.rangei/.autorangei,
measure.filter.count/.enable/.type, reset(), the usual constants), print() (TSP formatting:
numbers as %.5e, tab separated), delay() (advances the virtual clock; time at a high level on a
routed bus is a pulse), timer (reset(), measure.t() on the virtual clock), reset(), errorqueue
(count, next(), clear()), format.asciiprecision, script.user.scripts, the Lua base functions a
2600B offers (assert, error, ipairs, next, pairs, pcall, xpcall, print, rawequal, rawget, rawset,
select, getmetatable, setmetatable, tonumber, tostring, type, unpack) and the string (without
dump), math and table libraries. Not there: os, io, require, load*, dofile, debug, package,
coroutine, collectgarbage, getfenv/setfenv, newproxy, module, python — a script that reaches for
them gets the 2600B's error text, e.g. -286 "TSP Runtime error at line 1: attempt to index
global 'os' (a nil value)". Binary (precompiled) chunks are refused.

No Python object is a Lua value: the bindings are Python functions held as upvalues of Lua
closures (unreachable without `debug`), take and return plain numbers and strings, and report
failures as return values, never as Python exceptions. Caps: INSTRUCTION_LIMIT Lua instructions
and WALL_LIMIT_S seconds per chunk (a runaway chunk is stopped even through pcall), MEMORY_LIMIT
bytes of Lua heap, STRING_LIMIT bytes per string.rep result, and a cost cap on pattern matching
(string.find/match/gmatch/gsub) of long subjects with backtracking patterns.

Line protocol: `loadscript NAME` / `loadandrunscript NAME` ... `endscript` (NAME becomes a script
object with run() and __call); common commands *IDN?, *RST, *CLS, *OPC?, *ESR? are accepted as
lines. Lua errors go to the error queue: -285 "TSP Syntax error at line N: ...", -286 "TSP Runtime
error at line N: ...".
"""
from __future__ import annotations

import logging
import re
import time
from typing import Optional

from .base import Channel, EmulatedInstrument, InstrumentError

log = logging.getLogger(__name__)

try:                     # TSP is Lua 5.0-based; 5.1 is the closest runtime lupa ships
    from lupa import lua51 as _lupa
except ImportError:      # pragma: no cover
    import lupa as _lupa

INSTRUCTION_LIMIT = 200_000_000      # Lua instructions per chunk
WALL_LIMIT_S = 10.0                  # real seconds per chunk (C functions between instruction checks)
MEMORY_LIMIT = 16 * 2**20            # bytes of Lua heap per instrument
STRING_LIMIT = 2**20                 # bytes per string.rep result
PATTERN_LIMIT = 1e8                  # (len(subject) + 1) ** (quantifiers + 1) of one pattern call
HOOK_PERIOD = 10_000                 # instructions between limit checks
ERROR_TEXT_LIMIT = 256               # characters of an error-queue message
CHUNK_LIMIT = 2**20                  # bytes of one command line or one loadscript ... endscript body
OUTPUT_LIMIT = 2**20                 # bytes one chunk may print

_BOOT = r"""
local bridge, HOOK_PERIOD, STRING_LIMIT, PATTERN_LIMIT = ...
-- Everything the bindings use is captured here, before the globals are trimmed to the sandbox.
local G, error, type, tostring, tonumber, select, unpack, pairs, ipairs, pcall =
      _G, error, type, tostring, tonumber, select, unpack, pairs, ipairs, pcall
local setmetatable, getmetatable, rawset = setmetatable, getmetatable, rawset
local loadstring, sethook, getinfo = loadstring, debug.sethook, debug.getinfo
local slen, ssub, sbyte, sformat, sgsub, srep = string.len, string.sub, string.byte, string.format,
      string.gsub, string.rep
local py_get, py_set, py_measure, py_ch_reset, py_out = bridge.get, bridge.set, bridge.measure,
      bridge.ch_reset, bridge.out
local py_delay, py_reset, py_now, py_tick = bridge.delay, bridge.reset, bridge.now, bridge.tick
local py_err_next, py_err_clear, py_err_count = bridge.err_next, bridge.err_clear, bridge.err_count
bridge = nil
local BOOT = getinfo(1, "S").source

local function where()          -- "NAME:LINE: " of the innermost user code on the stack
  local l = 2
  while true do
    local i = getinfo(l, "Sl")
    if not i then return "" end
    if i.what ~= "C" and i.source ~= BOOT and i.currentline > 0 then
      return i.short_src .. ":" .. i.currentline .. ": "
    end
    l = l + 1
  end
end
local function fail(msg) error(where() .. tostring(msg), 0) end
local function ret(ok, ...)     -- bindings return true, values... or false, message
  if ok ~= true then fail(...) end
  return ...
end

local protected = setmetatable({}, {__mode = "k"})   -- tables of the bindings (no rawset)
local function locked(t, mt)
  mt.__metatable = "locked"
  protected[t] = true
  return setmetatable(t, mt)
end
local function number(name, v)
  if type(v) ~= "number" then fail(name .. ": a number is required, got " .. type(v)) end
  return v
end
local function proxy(ch, path)
  return locked({}, {
    __index = function(t, k)
      if type(k) ~= "string" then return nil end
      return ret(py_get(ch, path, k))
    end,
    __newindex = function(t, k, v)
      if type(k) ~= "string" then fail("smu" .. ch .. "." .. path .. ": bad attribute name") end
      ret(py_set(ch, path, k, number("smu" .. ch .. "." .. path .. "." .. k, v)))
    end})
end
local function mkchan(ch)
  local c = {OUTPUT_ON = 1, OUTPUT_OFF = 0, OUTPUT_DCVOLTS = 1, OUTPUT_DCAMPS = 0,
             AUTORANGE_ON = 1, AUTORANGE_OFF = 0, FILTER_ON = 1, FILTER_OFF = 0,
             FILTER_MOVING_AVG = 0, FILTER_REPEAT_AVG = 1, FILTER_MEDIAN = 2}
  c.source = proxy(ch, "source")
  local m = {i = function() return ret(py_measure(ch, "i")) end,
             v = function() return ret(py_measure(ch, "v")) end,
             filter = proxy(ch, "measure.filter")}
  protected[m] = true
  local mp = proxy(ch, "measure")
  locked(m, {__index = function(t, k) return mp[k] end, __newindex = function(t, k, v) mp[k] = v end})
  c.measure = m
  c.reset = function() ret(py_ch_reset(ch)) end
  return locked(c, {})
end

-- print: TSP formatting, done here so only strings reach Python
local function tsp_str(a)
  local t = type(a)
  if t == "number" then return sformat("%.5e", a) end
  if t == "nil" then return "nil" end
  if t == "boolean" then return a and "true" or "false" end
  return tostring(a)
end
local function tsp_print(...)
  local n = select("#", ...)
  local parts = {...}
  local line = ""
  for k = 1, n do
    line = line .. (k > 1 and "\t" or "") .. tsp_str(parts[k])
  end
  ret(py_out(line))
end

-- guarded string library (no dump; rep and pattern matching capped)
local function rep(s, n, ...)
  local k = tonumber(n)
  if k and k > 0 and (k > STRING_LIMIT or slen(s) * k > STRING_LIMIT) then
    fail("string.rep: a result of more than " .. STRING_LIMIT .. " bytes is beyond this instrument's memory")
  end
  return srep(s, n, ...)
end
local function pattern_guard(name, f)
  return function(s, p, a, plain, ...)
    if (type(s) == "string" or type(s) == "number") and (type(p) == "string" or type(p) == "number")
       and not (name == "find" and plain) then
      local _, q = sgsub(p, "[%*%+%-%?]", "")
      if (slen(s) + 1) ^ (q + 1) > PATTERN_LIMIT then
        fail("string." .. name .. ": subject of " .. slen(s) .. " bytes too long for a pattern with " .. q ..
             " repetitions (emulator limit)")
      end
    end
    return f(s, p, a, plain, ...)
  end
end
local sstring = {}
for _, k in ipairs({"byte", "char", "format", "len", "lower", "reverse", "sub", "upper"}) do
  sstring[k] = string[k]
end
sstring.rep = rep
for _, k in ipairs({"find", "match", "gmatch", "gsub"}) do sstring[k] = pattern_guard(k, string[k]) end
local smt = getmetatable("")
smt.__index = sstring                 -- ("x"):rep(...) reaches the guarded library too
smt.__metatable = "locked"
local smath, stable = {}, {}
for k, v in pairs(math) do smath[k] = v end
for k, v in pairs(table) do if k ~= "setn" then stable[k] = v end end

-- trim the globals to the sandbox
local keep = {assert = true, error = true, ipairs = true, next = true, pairs = true, pcall = true,
              xpcall = true, rawequal = true, rawget = true, select = true, getmetatable = true,
              setmetatable = true, tonumber = true, tostring = true, type = true, unpack = true,
              _G = true, _VERSION = true}
local names = {}
for k in pairs(G) do names[#names + 1] = k end
for _, k in ipairs(names) do if not keep[k] then G[k] = nil end end
G.string, G.math, G.table = sstring, smath, stable
local function pack(...) return {n = select("#", ...), ...} end
G.xpcall = function(f, handler)   -- the handler runs after unwinding: Lua runs error handlers without hooks
  local r = pack(pcall(f))
  if r[1] then return unpack(r, 1, r.n) end
  return false, handler(r[2])
end
G.rawset = function(t, k, v)
  if protected[t] then fail("rawset: cannot change the instrument's objects") end
  return rawset(t, k, v)
end

G.smua = mkchan("a")
G.smub = mkchan("b")
G.print = tsp_print
G.delay = function(s) ret(py_delay(number("delay", s))) end
G.reset = function() ret(py_reset()) end
local t0 = 0
G.timer = {reset = function() t0 = ret(py_now()) end,
           measure = {t = function() return ret(py_now()) - t0 end}}
G.errorqueue = locked({next = function() return ret(py_err_next()) end,
                       clear = function() ret(py_err_clear()) end},
                      {__index = function(t, k) if k == "count" then return ret(py_err_count()) end end})
G.format = {asciiprecision = 6}
G.script = {user = {scripts = {}}}

-- control functions, returned to Python only (not reachable from Lua)
local function hook()
  local msg = py_tick()
  if msg then
    sethook(hook, "", 1)              -- from now on every instruction fails, so pcall cannot go on
    error(where() .. msg, 0)
  end
end
local ctl = {}
function ctl.begin() sethook(hook, "", HOOK_PERIOD) end
function ctl.run(f)     -- errors reach Python as strings made here, under protection
  local ok, e = pcall(f)
  if not ok then
    if type(e) ~= "string" then e = "error object is a " .. type(e) .. " value" end
    error(e, 0)
  end
end
function ctl.compile(src, name)
  if sbyte(src, 1) == 27 then return nil, name .. ":1: binary chunks are not accepted" end
  local f, err = loadstring(src, "=" .. name)
  return f, err
end
function ctl.define(name, src)
  local f, err = ctl.compile(src, name)
  if not f then return nil, err end
  local s = setmetatable({name = name, source = src, run = function() return f() end},
                         {__call = function(self) return f() end})
  G[name] = s
  G.script.user.scripts[name] = s
  return f, nil
end
return ctl
"""


def _deny_get(obj, name):
    raise AttributeError("no Python attributes in TSP")


def _deny_set(obj, name, value):
    raise AttributeError("no Python attributes in TSP")


def _binding(fn):
    """A Python function for the Lua bindings: returns (True, values...) or (False, message);
    never raises into Lua (an exception object would be a Python object in Lua)."""
    def call(*args):
        try:
            out = fn(*args)
        except InstrumentError as e:
            return False, e.message
        except Exception as e:         # bad values from the script: the message goes to the error queue
            return False, str(e) or type(e).__name__
        return (True, *out) if isinstance(out, tuple) else (True, out)
    return call


class Keithley2600Emulator(EmulatedInstrument):
    """A 2602B (two channels, a and b) or 2601B/2611B/2635B (one channel)."""

    IDN = "Keithley Instruments Inc., Model {model}, {serial}, 3.2.2"
    CHANNEL_NAMES = ("a", "b")
    ERROR_QUEUE_LEN = 100
    V_RANGES = (0.1, 1.0, 6.0, 40.0)
    I_RANGES = (100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0, 1.5, 3.0)

    def __init__(self, world, name, wiring=None, bus="gpib", serial="4123456", model: str = "2602B") -> None:
        self.model = model
        if model[3] in "15":
            self.CHANNEL_NAMES = ("a",)
        self.IDN = self.IDN.format(model=model, serial=serial)
        self.out: list[str] = []
        self.ticks = 0
        self._abort: Optional[str] = None
        self._out_bytes = 0
        self._t_start = 0.0
        self._script: Optional[tuple[str, bool, list[str]]] = None    # (name, run, lines)
        self.lua = None
        self._ctl = None
        super().__init__(world, name, wiring, bus, serial)

    def _new_channel(self, ch: str) -> Channel:
        c = Channel(ch, self.wiring[ch], limit_i=100e-3, v_range=None, i_range=None)
        c.extra.update(func=1, filter_type=1)
        return c

    def power_on(self) -> None:
        super().power_on()
        self._script = None
        self._new_runtime()

    def _new_runtime(self) -> None:
        """A fresh sandboxed Lua state (power-on: scripts and globals are lost)."""
        lua = _lupa.LuaRuntime(unpack_returned_tuples=True, register_eval=False, register_builtins=False,
                               attribute_handlers=(_deny_get, _deny_set), max_memory=MEMORY_LIMIT)
        bridge = lua.table_from({
            "get": _binding(self.tsp_get), "set": _binding(self.tsp_set),
            "measure": _binding(self.tsp_measure), "ch_reset": _binding(self.reset_channel),
            "out": _binding(self._out), "delay": _binding(self._delay),
            "reset": _binding(self.power_on), "now": _binding(self.world.now),
            "err_next": _binding(self._err_next), "err_clear": _binding(lambda: self.errors.clear()),
            "err_count": _binding(lambda: len(self.errors)), "tick": self._tick})
        self._ctl = lua.execute(_BOOT, bridge, HOOK_PERIOD, STRING_LIMIT, PATTERN_LIMIT)
        if "b" not in self.CHANNEL_NAMES:
            lua.globals().smub = None
        self.lua = lua

    # ---- bindings (called from Lua) ------------------------------------------------------
    def _out(self, line: str) -> None:
        self._out_bytes += len(line) + 1
        if self._out_bytes > OUTPUT_LIMIT:
            raise ValueError(f"print: output queue full ({OUTPUT_LIMIT} bytes per command)")
        self.out.append(str(line))

    def _delay(self, s: float) -> None:
        s = float(s)
        if not 0 <= s < float("inf"):
            raise ValueError(f"delay: bad time {s:g} s")
        self.hold(s)

    def _err_next(self):
        code, msg = self.pop_error()
        return code, msg, 0 if code == 0 else 2, 0

    def _tick(self) -> Optional[str]:
        """Called every HOOK_PERIOD instructions: the abort message once a cap is passed."""
        if self._abort is None:
            self.ticks += 1
            if self.ticks * HOOK_PERIOD > INSTRUCTION_LIMIT:
                self._abort = f"instruction limit of {INSTRUCTION_LIMIT} exceeded (runaway script aborted)"
            elif time.monotonic() - self._t_start > WALL_LIMIT_S:
                self._abort = f"time limit of {WALL_LIMIT_S:g} s exceeded (runaway script aborted)"
        return self._abort

    def reset_channel(self, ch: str) -> None:
        self.channels[ch] = self._new_channel(ch)
        self.publish(self.channels[ch])

    # ---- attribute access from Lua ---------------------------------------------------
    def _chan(self, ch) -> Channel:
        try:
            return self.channels[str(ch)]
        except KeyError:
            raise InstrumentError(-286, f"no channel smu{ch}") from None

    def tsp_get(self, ch, path, key):
        c = self._chan(ch)
        key = str(key)
        if path == "source":
            return {"levelv": c.level_v, "output": 1 if c.on else 0, "limiti": c.limit_i,
                    "rangev": c.v_range or max(self.V_RANGES),
                    "autorangev": 1 if c.v_range is None else 0, "func": c.extra["func"]}.get(key)
        if path == "measure":
            return {"nplc": c.nplc, "rangei": c.i_range or max(self.I_RANGES),
                    "autorangei": 1 if c.i_range is None else 0}.get(key)
        if path == "measure.filter":
            return {"count": c.filter_count, "enable": 1 if c.filter_on else 0,
                    "type": c.extra["filter_type"]}.get(key)
        return None

    def _pick(self, x: float, ranges) -> float:
        for r in ranges:
            if abs(x) <= r * 1.0000001:
                return r
        raise ValueError(f"Parameter too big: {x:g}")

    def tsp_set(self, ch, path, key, value):
        c = self._chan(ch)
        key = str(key)
        name = f"smu{ch}.{path}.{key}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name}: a number is required, got {value!r}")
        v = float(value)
        if path == "source":
            if key == "levelv":
                top = (c.v_range or max(self.V_RANGES)) * 1.01
                if abs(v) > top:
                    raise ValueError(f"{name} = {v:g} is above the source range {top / 1.01:g} V")
                self.set_level(c, v)
            elif key == "output":
                self.set_on(c, v != 0)
            elif key == "limiti":
                if not 1e-9 <= v <= 3.0:
                    raise ValueError(f"{name} = {v:g} out of range")
                c.limit_i = v
            elif key == "rangev":
                c.v_range = self._pick(v, self.V_RANGES)
            elif key == "autorangev":
                c.v_range = None if v else (c.v_range or max(self.V_RANGES))
            elif key == "func":
                if v != 1:
                    raise ValueError(f"{name}: only OUTPUT_DCVOLTS is emulated")
                c.extra["func"] = 1
            else:
                raise AttributeError(f"{name} is not an attribute")
        elif path == "measure":
            if key == "nplc":
                if not 0.001 <= v <= 25:
                    raise ValueError(f"{name} = {v:g} out of range 0.001..25")
                c.nplc = v
            elif key == "rangei":
                c.i_range = self._pick(v, self.I_RANGES)
            elif key == "autorangei":
                c.i_range = None if v else (c.i_range or max(self.I_RANGES))
            else:
                raise AttributeError(f"{name} is not an attribute")
        elif path == "measure.filter":
            if key == "count":
                if not 1 <= v <= 100 or v != int(v):
                    raise ValueError(f"{name} = {v:g} out of range 1..100")
                c.filter_count = int(v)
            elif key == "enable":
                c.filter_on = v != 0
            elif key == "type":
                c.extra["filter_type"] = int(v)
            else:
                raise AttributeError(f"{name} is not an attribute")

    def tsp_measure(self, ch, what):
        c = self._chan(ch)
        if what == "v":
            self.world.spend(c.aperture_s())
            return c.level_v if c.on else 0.0
        i = self.measure_i(c)
        return 0.0 if i is None else i

    # ---- line protocol ---------------------------------------------------------------
    def _looks_like_query(self, text: str) -> bool:
        return "print" in text or "?" in text

    def device_clear(self) -> None:
        super().device_clear()
        self._script = None
        self.out = []

    def process(self, text: str) -> list[str]:
        self.out = []
        for line in text.split("\n"):
            self._line(line.rstrip("\r"))
        out, self.out = self.out, []
        return out

    def _line(self, line: str) -> None:
        s = line.strip()
        if self._script is not None:
            if s == "endscript":
                name, run, lines = self._script
                self._script = None
                if lines is None:
                    return
                f, err = self._lua_call(self._ctl.define, name, "\n".join(lines))
                if f is None:
                    self.push_error(-285, _tsp_error("Syntax", err))
                elif run:
                    self._run(f)
            elif self._script[2] is not None:
                self._script[2].append(line)
                if sum(len(x) + 1 for x in self._script[2]) > CHUNK_LIMIT:
                    self.push_error(-285, f"TSP Syntax error: script {self._script[0]} is longer than "
                                          f"{CHUNK_LIMIT} bytes")
                    self._script = (self._script[0], False, None)     # skip to endscript
            return
        if not s:
            return
        word = s.split()[0]
        if word in ("loadscript", "loadandrunscript"):
            parts = s.split()
            name = parts[1] if len(parts) > 1 else None
            if name is None or not name.isidentifier():
                self.push_error(-285, "TSP Syntax error: loadscript needs a script name")
                name = "_anonymous"
            self._script = (name, word == "loadandrunscript", [])
            return
        if s.startswith("*"):
            self._common(s)
            return
        if len(s) > CHUNK_LIMIT:
            self.push_error(-285, f"TSP Syntax error: command longer than {CHUNK_LIMIT} bytes")
            return
        f, err = self._lua_call(self._ctl.compile, s, "TSP")
        if f is None:
            self.push_error(-285, _tsp_error("Syntax", err))
        else:
            self._run(f)

    def _lua_call(self, fn, *args):
        """(result, error) of a control function (compile, define)."""
        try:
            return fn(*args)
        except _lupa.LuaError as e:        # e.g. not enough memory to compile
            return None, str(e) or "not enough memory"

    def _run(self, f) -> None:
        """Run a compiled chunk under the instruction, time, memory and output caps."""
        self.ticks, self._abort, self._t_start, self._out_bytes = 0, None, time.monotonic(), 0
        try:
            self._ctl.begin()
            self._ctl.run(f)
        except _lupa.LuaMemoryError:
            self.push_error(-286, "TSP Runtime error: not enough memory")
        except _lupa.LuaError as e:
            self.push_error(-286, f"TSP Runtime error: {self._abort}" if self._abort is not None
                            else _tsp_error("Runtime", e))
        finally:
            self._after_chunk()

    def _after_chunk(self) -> None:
        """Free a chunk's garbage (Lua 5.1 has no emergency collection) and keep room for the
        next command: a Lua state still full after collection is cleared as at power-on."""
        self.ticks, self._abort, self._t_start = 0, None, time.monotonic()
        lua = self.lua
        if lua.get_memory_used() > MEMORY_LIMIT // 4:
            lua.gccollect()
        if lua.get_memory_used() > MEMORY_LIMIT * 3 // 4:
            self.push_error(-286, "TSP Runtime error: not enough memory; scripts and global variables "
                                  "were cleared")
            self._new_runtime()
            return
        self._ctl.begin()                 # leave the every-instruction hook of an aborted chunk

    def _common(self, s: str) -> None:
        cmd = s.split()[0].upper()
        if cmd == "*IDN?":
            self.out.append(self.IDN)
        elif cmd == "*RST":
            self.power_on()
        elif cmd == "*CLS":
            self.clear_status()
        elif cmd == "*OPC?":
            self.out.append("1")
        elif cmd in ("*OPC", "*WAI"):
            pass
        elif cmd == "*ESR?":
            self.out.append(str(self.esr))
            self.esr = 0
        else:
            self.push_error(-113, "Undefined header")

    def push_error(self, code: int, message: str) -> None:
        if len(message) > ERROR_TEXT_LIMIT:
            message = message[:ERROR_TEXT_LIMIT - 3] + "..."
        super().push_error(code, message)


_POSITION = re.compile(r"^[^\n:]*:(\d+): ", re.S)


def _tsp_error(kind: str, e) -> str:
    """2600B error text, 'TSP Runtime error at line N: message', from a Lua 'CHUNK:N: message'."""
    msg = (str(e) if e is not None else "").strip() or "error"
    m = _POSITION.match(msg)
    if m:
        return f"TSP {kind} error at line {m.group(1)}: {msg[m.end():]}"
    return f"TSP {kind} error: {msg.splitlines()[0]}"
