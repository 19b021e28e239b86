"""SCPI parsing and the common part of the emulated SCPI SMUs (2400, 2450, B2900).

Headers are matched node by node in short or long form (`:SOUR:VOLT:RANG` =
`:SOURce:VOLTage:RANGe`), numeric suffixes of SOUR/SENS/OUTP are ignored, optional nodes
(LEV, IMM, AMPL, STAT, NEXT, DC) dropped; `;` separates commands in one message and a part
without a leading colon is relative to the previous header's path. Unknown headers give
-113 "Undefined header", bad numbers -104 "Data type error", values outside an accepted range
-222 "Data out of range", bad enumerations -224 "Illegal parameter value", a missing value
-109 "Missing parameter"; readings with the output off give -221 "Settings conflict" and
9.91e37.
"""
from __future__ import annotations

import re
from typing import Callable, Optional

from .base import Channel, EmulatedInstrument, InstrumentError

NAN_READING = "+9.910000E+37"

LONG = {
    "SOURCE": "SOUR", "SENSE": "SENS", "VOLTAGE": "VOLT", "CURRENT": "CURR", "FUNCTION": "FUNC",
    "RANGE": "RANG", "AUTO": "AUTO", "PROTECTION": "PROT", "LEVEL": "LEV", "IMMEDIATE": "IMM",
    "AMPLITUDE": "AMPL", "OUTPUT": "OUTP", "STATE": "STAT", "MEASURE": "MEAS", "SYSTEM": "SYST",
    "ERROR": "ERR", "NEXT": "NEXT", "FORMAT": "FORM", "ELEMENTS": "ELEM", "DELAY": "DEL",
    "CLEAR": "CLE", "MODE": "MODE", "FIXED": "FIX", "ILIMIT": "ILIM", "SHAPE": "SHAP",
    "PULSE": "PULS", "WIDTH": "WIDT", "TRIGGER": "TRIG", "TRANSIENT": "TRAN", "COUNT": "COUN",
    "INITIATE": "INIT", "READ": "READ", "NPLCYCLES": "NPLC", "DC": "DC",
}
SHORT = set(LONG.values())
OPTIONAL = {"LEV", "IMM", "AMPL", "STAT", "NEXT", "DC"}
SUFFIXED = {"SOUR", "SENS", "OUTP"}


def split_commands(text: str) -> list[str]:
    """Split a message at ';' outside quotes."""
    parts, cur, quote = [], [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            cur.append(ch)
        elif ch == ";":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def normalize(header: str) -> Optional[tuple[str, ...]]:
    """Canonical short-form node tuple of a header, or None if a node is not valid SCPI here."""
    nodes = []
    for raw in header.strip(":").split(":"):
        node = raw.upper()
        m = re.fullmatch(r"([A-Z]+)(\d*)", node)
        if not m:
            return None
        node, suffix = m.groups()
        short = LONG.get(node, node if node in SHORT else None)
        if short is None:
            return None
        if suffix and short not in SUFFIXED:
            return None
        nodes.append(short)
    kept = [n for n in nodes if n not in OPTIONAL]
    return tuple(kept) if kept else tuple(nodes)


def parse_number(arg: str) -> float:
    if not arg:
        raise InstrumentError(-109, "Missing parameter")
    try:
        return float(arg)
    except ValueError:
        raise InstrumentError(-104, "Data type error") from None


def parse_bool(arg: str) -> bool:
    a = arg.strip().upper()
    if a in ("ON", "1"):
        return True
    if a in ("OFF", "0"):
        return False
    if not a:
        raise InstrumentError(-109, "Missing parameter")
    raise InstrumentError(-224, "Illegal parameter value")


def parse_choice(arg: str, choices: dict) -> str:
    a = arg.strip().strip("\"'").upper()
    if not a:
        raise InstrumentError(-109, "Missing parameter")
    for value, forms in choices.items():
        if a in forms:
            return value
    raise InstrumentError(-224, "Illegal parameter value")


def check_range(x: float, lo: float, hi: float) -> float:
    if not lo <= x <= hi:
        raise InstrumentError(-222, "Data out of range")
    return x


def fmt(x: float) -> str:
    return f"{x:+.6E}"


Handler = Callable[[Channel, str, bool], Optional[str]]


class ScpiSmu(EmulatedInstrument):
    """Common SCPI behaviour: dispatch, common commands, error queue, output, levels, ranges.

    Subclasses fill `handlers()` with canonical header -> method(channel, arg, is_query)."""

    CHANNEL_NAMES = ("1",)
    V_RANGES: tuple = (0.2, 2.0, 20.0, 200.0)
    I_RANGES: tuple = (1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)
    MAX_I = 1.05
    NPLC_RANGE = (0.01, 10.0)
    NO_ERROR = '0,"No error"'

    def _src_func(self, c, arg, query):
        """:SOUR:FUNC — only voltage sourcing is emulated (2400/2450 dialect)."""
        if query:
            return "VOLT"
        parse_choice(arg, {"VOLT": ("VOLT", "VOLTAGE")})
        return None

    def __init__(self, *args, **kwargs) -> None:
        self._handlers = self.handlers()
        super().__init__(*args, **kwargs)

    # ---- table ---------------------------------------------------------------------
    def handlers(self) -> dict[tuple, Handler]:
        return {
            ("SYST", "ERR"): self._syst_err,
            ("OUTP",): self._outp,
            ("SOUR", "VOLT"): self._level,
            ("SOUR", "VOLT", "RANG"): self._v_range,
            ("SOUR", "VOLT", "RANG", "AUTO"): self._v_range_auto,
            ("SENS", "FUNC"): self._sens_func,
            ("SENS", "CURR", "RANG"): self._i_range,
            ("SENS", "CURR", "RANG", "AUTO"): self._i_range_auto,
            ("SENS", "CURR", "NPLC"): self._nplc,
            ("MEAS", "CURR"): self._meas_curr,
        }

    # ---- dispatch ------------------------------------------------------------------
    def process(self, text: str) -> list[str]:
        replies: list[str] = []
        for line in text.split("\n"):
            answers = []
            path: tuple = ()
            for part in split_commands(line):
                header, _, arg = part.partition(" ")
                arg = arg.strip()
                try:
                    out, path = self._one(header, arg, path)
                except InstrumentError as e:
                    self.push_error(e.code, e.message)
                    continue
                if out is not None:
                    answers.append(out)
            if answers:
                replies.append(";".join(answers))
        return replies

    def _one(self, header: str, arg: str, path: tuple):
        query = header.endswith("?")
        h = header[:-1] if query else header
        if h.startswith("*"):
            return self._common(h.upper(), arg, query), path
        relative = not h.startswith(":") and bool(path)
        nodes = normalize(h)
        if nodes is None:
            raise InstrumentError(-113, "Undefined header")
        if relative:
            nodes = normalize(":".join(path[:-1] + nodes)) or nodes
        fn = self._handlers.get(nodes)
        if fn is None:
            raise InstrumentError(-113, "Undefined header")
        if not query and "?" in arg:
            raise InstrumentError(-113, "Undefined header")
        return fn(self.channels[self.CHANNEL_NAMES[0]], arg, query), nodes

    def _common(self, h: str, arg: str, query: bool) -> Optional[str]:
        if h == "*IDN" and query:
            return self.IDN
        if h == "*RST" and not query:
            self.power_on()
            return None
        if h == "*CLS" and not query:
            self.clear_status()
            return None
        if h == "*OPC":
            return "1" if query else None
        if h == "*WAI" and not query:
            return None
        if h == "*ESR" and query:
            v, self.esr = self.esr, 0
            return str(v)
        raise InstrumentError(-113, "Undefined header")

    # ---- common handlers -------------------------------------------------------------
    def _syst_err(self, c: Channel, arg: str, query: bool):
        if not query:
            raise InstrumentError(-113, "Undefined header")
        code, msg = self.pop_error()
        return self.NO_ERROR if code == 0 else f'{code},"{msg}"'

    def _outp(self, c: Channel, arg: str, query: bool):
        if query:
            return "1" if c.on else "0"
        self.set_on(c, parse_bool(arg))
        return None

    def _check_level_in_range(self, c: Channel, v: float) -> None:
        top = (c.v_range if c.v_range is not None else max(self.V_RANGES)) * 1.05
        if abs(v) > top:
            raise InstrumentError(-222, "Data out of range")

    def _level(self, c: Channel, arg: str, query: bool):
        if query:
            return fmt(c.level_v)
        v = parse_number(arg)
        self._check_level_in_range(c, v)
        self.set_level(c, v)
        return None

    def _pick_range(self, x: float, ranges: tuple) -> float:
        x = abs(x)
        for r in ranges:
            if x <= r * 1.0000001:
                return r
        raise InstrumentError(-222, "Data out of range")

    def _v_range(self, c: Channel, arg: str, query: bool):
        if query:
            return fmt(c.v_range or max(self.V_RANGES))
        c.v_range = self._pick_range(parse_number(arg), self.V_RANGES)
        return None

    def _v_range_auto(self, c: Channel, arg: str, query: bool):
        if query:
            return "1" if c.v_range is None else "0"
        c.v_range = None if parse_bool(arg) else (c.v_range or max(self.V_RANGES))
        return None

    def _i_range(self, c: Channel, arg: str, query: bool):
        if query:
            return fmt(c.i_range or max(self.I_RANGES))
        c.i_range = self._pick_range(parse_number(arg), self.I_RANGES)
        return None

    def _i_range_auto(self, c: Channel, arg: str, query: bool):
        if query:
            return "1" if c.i_range is None else "0"
        c.i_range = None if parse_bool(arg) else (c.i_range or max(self.I_RANGES))
        return None

    def _compliance(self, c: Channel, arg: str, query: bool):
        if query:
            return fmt(c.limit_i)
        c.limit_i = check_range(parse_number(arg), 1e-9, self.MAX_I)
        return None

    def _sens_func(self, c: Channel, arg: str, query: bool):
        if query:
            return '"CURR:DC"'
        parse_choice(arg, {"CURR": ("CURR", "CURR:DC", "CURRENT", "CURRENT:DC")})
        return None

    def _nplc(self, c: Channel, arg: str, query: bool):
        if query:
            return fmt(c.nplc)
        c.nplc = check_range(parse_number(arg), *self.NPLC_RANGE)
        return None

    def _src_delay(self, c: Channel, arg: str, query: bool):
        if query:
            return fmt(c.source_delay_s)
        c.source_delay_s = check_range(parse_number(arg), 0.0, 1e4)
        return None

    def reading(self, c: Channel) -> str:
        """One measurement cycle: source delay at the level (a pulse if high), then aperture."""
        if not c.on:
            self.world.spend(c.aperture_s())
            self.push_error(-221, "Settings conflict; output is off")
            return NAN_READING
        if c.source_delay_s > 0:
            self.hold(c.source_delay_s)
        i = self.measure_i(c)
        return fmt(i)

    def _meas_curr(self, c: Channel, arg: str, query: bool):
        if not query:
            raise InstrumentError(-113, "Undefined header")
        return self.reading(c)
