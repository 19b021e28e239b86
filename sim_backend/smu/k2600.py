"""Emulated Keithley 2600B: executes the TSP (Lua) the host sends in a real Lua runtime (lupa).

Exposed to Lua: smua/smub (source.levelv/.output/.limiti/.rangev/.autorangev/.func,
measure.i()/.v(), measure.nplc/.rangei/.autorangei, measure.filter.count/.enable/.type,
reset(), the usual constants), print() (TSP formatting: numbers as %.5e, tab separated),
delay() (advances the virtual clock; time at a high level on a routed bus is a pulse),
reset(), errorqueue (count, next(), clear()), script.user.scripts, and the line protocol
`loadscript NAME` / `loadandrunscript NAME` ... `endscript` (NAME becomes a script object
with run() and __call). Common commands *IDN?, *RST, *CLS, *OPC?, *ESR? are accepted as
lines. Lua errors go to the error queue: -285 "TSP Syntax error ...", -286 "TSP Runtime
error ...". A chunk that runs away is stopped after INSTRUCTION_LIMIT Lua instructions.
"""
from __future__ import annotations

import logging
from typing import Optional

from .base import Channel, EmulatedInstrument, InstrumentError

log = logging.getLogger(__name__)

try:                     # TSP is Lua 5.0-based; 5.1 is the closest runtime lupa ships
    from lupa import lua51 as _lupa
except ImportError:      # pragma: no cover
    import lupa as _lupa

INSTRUCTION_LIMIT = 200_000_000

_BOOT = r"""
local py = ...
local function proxy(ch, path)
  return setmetatable({}, {
    __index = function(t, k) return py.get(ch, path, k) end,
    __newindex = function(t, k, v) py.set(ch, path, k, v) end})
end
local function mkchan(ch)
  local c = {OUTPUT_ON = 1, OUTPUT_OFF = 0, OUTPUT_DCVOLTS = 1, OUTPUT_DCAMPS = 0,
             AUTORANGE_ON = 1, AUTORANGE_OFF = 0, FILTER_ON = 1, FILTER_OFF = 0,
             FILTER_MOVING_AVG = 0, FILTER_REPEAT_AVG = 1, FILTER_MEDIAN = 2}
  c.source = proxy(ch, "source")
  local m = {i = function() return py.measure(ch, "i") end,
             v = function() return py.measure(ch, "v") end,
             filter = proxy(ch, "measure.filter")}
  setmetatable(m, {__index = function(t, k) return py.get(ch, "measure", k) end,
                   __newindex = function(t, k, v) py.set(ch, "measure", k, v) end})
  c.measure = m
  c.reset = function() py.ch_reset(ch) end
  return c
end
smua = mkchan("a")
smub = mkchan("b")
print = function(...) py.print(...) end
delay = function(s) py.delay(s) end
reset = function() py.reset() end
errorqueue = setmetatable({next = function() return py.err_next() end,
                           clear = function() py.err_clear() end},
                          {__index = function(t, k) if k == "count" then return py.err_count() end end})
format = {asciiprecision = 6}
script = {user = {scripts = {}}}
function _hil_define(name, src, run)
  local f, err = loadstring(src, "=" .. name)
  if not f then return err end
  local s = setmetatable({name = name, source = src, run = function() return f() end},
                         {__call = function(self) return f() end})
  _G[name] = s
  script.user.scripts[name] = s
  if run then f() end
  return nil
end
debug.sethook(function() py.tick() end, "", 1000000)
"""


class _Py:
    """Python side of the Lua bindings (attributes looked up by Lua through `py.xxx`)."""

    def __init__(self, inst: "Keithley2600Emulator") -> None:
        self.inst = inst

    def get(self, ch, path, key):
        return self.inst.tsp_get(ch, path, key)

    def set(self, ch, path, key, value):
        self.inst.tsp_set(ch, path, key, value)

    def measure(self, ch, what):
        return self.inst.tsp_measure(ch, what)

    def ch_reset(self, ch):
        self.inst.reset_channel(ch)

    def print(self, *args):
        self.inst.out.append("\t".join(_tsp_str(a) for a in args))

    def delay(self, s):
        s = float(s)
        if s < 0:
            raise ValueError("delay: negative time")
        self.inst.hold(s)

    def reset(self):
        self.inst.power_on()

    def err_next(self):
        code, msg = self.inst.pop_error()
        return code, msg, 0 if code == 0 else 2, 0

    def err_clear(self):
        self.inst.errors.clear()

    def err_count(self):
        return len(self.inst.errors)

    def tick(self):
        self.inst.ticks += 1
        if self.inst.ticks * 1_000_000 > INSTRUCTION_LIMIT:
            raise RuntimeError("instruction limit exceeded (runaway script aborted)")


def _tsp_str(a) -> str:
    if isinstance(a, bool):
        return "true" if a else "false"
    if isinstance(a, (int, float)):
        return f"{float(a):.5e}"
    if a is None:
        return "nil"
    return str(a)


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
        self._script: Optional[tuple[str, bool, list[str]]] = None    # (name, run, lines)
        self.lua = None
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
        self.lua = _lupa.LuaRuntime(unpack_returned_tuples=True, register_eval=False)
        self.lua.execute(_BOOT, _Py(self))
        if "b" not in self.CHANNEL_NAMES:
            self.lua.execute("smub = nil")

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
                self._run_lua(lambda: self.lua.globals()._hil_define(name, "\n".join(lines), run),
                              define=True)
            else:
                self._script[2].append(line)
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
        self._run_lua(lambda: self.lua.execute(s))

    def _run_lua(self, fn, define: bool = False) -> None:
        self.ticks = 0
        try:
            err = fn()
            if define and err:
                self.push_error(-285, f"TSP Syntax error {err}")
        except _lupa.LuaSyntaxError as e:
            self.push_error(-285, f"TSP Syntax error at line 1: {_clean(e)}")
        except _lupa.LuaError as e:
            self.push_error(-286, f"TSP Runtime error {_clean(e)}")
        except InstrumentError as e:
            self.push_error(e.code, e.message)
        except Exception as e:        # Python exceptions raised inside bindings
            self.push_error(-286, f"TSP Runtime error: {e}")

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


def _clean(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__
