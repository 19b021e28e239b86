"""Shared base of the SMU drivers: a VISA session with logging, counting, timeout recovery,
error-queue checks, identity check, declared (validated) settings and a safe exit.

Settings are declared once per class, pymeasure-style::

    compliance_a = Setting(":SENS:CURR:PROT {:.6g}", in_range(1e-9, 1.05), "current compliance (A)")

`inst.compliance_a = 1e-4` validates (ConfigError before any I/O) and writes the command;
`inst.command("compliance_a", 1e-4)` validates and returns the command text, so several
settings can be joined into one bus transaction.

A driver is opened with `pyvisa.ResourceManager(visa_library).open_resource(resource)`:
visa_library "" (system VISA), "@py" (pyvisa-py) or "STATION.toml@hilsim" / "@hilsim"
(the emulated instruments of `sim_backend`). Tests pass `connection=` (any object with
write/read/clear/close) instead.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from hil.crossbar import check_compliance, check_level, check_width
from hil.errors import BackendError, ConfigError, InstrumentTimeout

log = logging.getLogger(__name__)

__all__ = ["Setting", "in_range", "in_set", "range_or_auto", "Identity", "VisaInstrument", "SmuDriver",
           "parse_float", "SCPI_NAN"]

SCPI_NAN = 9.91e37          # SCPI "not a number" (e.g. a reading with the output off)


# ---- validators ---------------------------------------------------------------------------
def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return v


def in_range(lo: float, hi: float, unit: str = "") -> Callable[[Any, str, str], float]:
    """Validator: a finite number in [lo, hi]."""
    def check(value, name: str, model: str) -> float:
        v = _number(value, name)
        if not lo <= v <= hi:
            raise ConfigError(f"{name} = {v:g}{unit} is outside the {model} range "
                              f"[{lo:g}, {hi:g}]{unit}; nothing was sent")
        return v
    check.doc = f"[{lo:g}, {hi:g}]{unit}"
    return check


def in_set(values: Iterable, unit: str = "") -> Callable[[Any, str, str], Any]:
    """Validator: one of `values` (numbers compared with a relative tolerance of 1e-9)."""
    values = tuple(values)

    def check(value, name: str, model: str):
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not isinstance(value, (str, bool)):
                try:
                    if math.isclose(float(value), v, rel_tol=1e-9):
                        return v
                except (TypeError, ValueError):
                    break
            elif value == v:
                return v
        raise ConfigError(f"{name} = {value!r}{unit} is not accepted by the {model}; use one of "
                          f"{', '.join(f'{v:g}' if isinstance(v, float) else repr(v) for v in values)}"
                          f"; nothing was sent")
    check.doc = f"one of {values}"
    return check


def range_or_auto(values: Iterable[float], unit: str = "") -> Callable[[Any, str, str], Any]:
    """Validator: None (auto range) or one of the fixed ranges `values`."""
    fixed = in_set(values, unit)

    def check(value, name: str, model: str):
        return None if value is None else fixed(value, name, model)
    check.doc = f"None (auto) or {fixed.doc}"
    return check


@dataclass(frozen=True)
class Setting:
    """One instrument setting: command template (str.format with the value and `ch`), validator,
    docstring. Assigning the attribute validates and writes; reading returns the last value set."""

    command_fmt: str
    validator: Callable[[Any, str, str], Any]
    doc: str = ""
    auto_command_fmt: Optional[str] = None      # command used when the validated value is None

    def __set_name__(self, owner, name: str) -> None:
        object.__setattr__(self, "name", name)

    def command(self, value, model: str = "instrument", **ctx) -> str:
        v = self.validator(value, self.name, model)
        if v is None:
            if self.auto_command_fmt is None:
                raise ConfigError(f"{self.name} has no automatic setting on the {model}")
            return self.auto_command_fmt.format(**ctx)
        return self.command_fmt.format(v, **ctx)

    def __get__(self, inst, owner=None):
        if inst is None:
            return self
        return inst._setting_values.get(self.name)

    def __set__(self, inst, value) -> None:
        inst.write(inst.command(self.name, value))
        inst._setting_values[self.name] = value


def parse_float(text: str, what: str) -> float:
    try:
        return float(text.strip().split(",")[0])
    except (ValueError, AttributeError, IndexError):
        raise ValueError(f"{what}: cannot parse {text!r} as a number") from None


@dataclass(frozen=True)
class Identity:
    """Parsed *IDN? reply."""

    manufacturer: str
    model: str
    serial: str
    firmware: str
    raw: str

    @classmethod
    def parse(cls, raw: str) -> "Identity":
        parts = [p.strip() for p in raw.strip().split(",")]
        parts += [""] * (4 - len(parts))
        model = re.sub(r"^model\s+", "", parts[1], flags=re.I)
        return cls(parts[0], model, parts[2], ",".join(parts[3:]).strip(","), raw.strip())

    def to_dict(self) -> dict:
        return {"manufacturer": self.manufacturer, "model": self.model, "serial": self.serial,
                "firmware": self.firmware, "idn": self.raw}


def _is_timeout(exc: BaseException) -> bool:
    try:
        from pyvisa import constants, errors
    except ImportError:            # pragma: no cover - pyvisa is a dependency
        return False
    return isinstance(exc, errors.VisaIOError) and exc.error_code == constants.StatusCode.error_timeout


def _is_visa_error(exc: BaseException) -> bool:
    try:
        from pyvisa import errors
    except ImportError:            # pragma: no cover
        return False
    return isinstance(exc, (errors.VisaIOError, errors.InvalidSession))


# ---- the instrument ---------------------------------------------------------------------
class VisaInstrument:
    """A message-based instrument on a VISA session.

    Subclasses set MODEL_NAME (for messages), MODEL_PATTERN (regex the *IDN? model must match),
    ERROR_QUERY / NO_ERROR parsing via `_drain_errors`, and declare `Setting`s.

    Timeouts: every VISA timeout triggers a device clear and a resync (`*CLS`, then `*OPC?`
    read until it answers "1", discarding stale replies); a query marked idempotent is then
    retried up to `retries` times, anything else raises InstrumentTimeout naming the
    instrument and the command. Replies that cannot be parsed are treated the same way."""

    MODEL_NAME = "VISA instrument"
    MODEL_PATTERN = r".*"
    read_termination = "\n"
    write_termination = "\n"
    RESYNC_MAX_STALE = 8            # stale replies discarded while resyncing

    def __init__(self, resource: str, visa_library: str = "", *, timeout_s: float = 5.0,
                 retries: int = 1, name: Optional[str] = None, connection=None,
                 check_identity: bool = True) -> None:
        self.resource = str(resource)
        self.visa_library = visa_library
        self.name = name or self.MODEL_NAME
        self.retries = int(retries)
        self.timeout_s = float(timeout_s)
        self.identity: Optional[Identity] = None
        self.stats = {"writes": 0, "queries": 0, "timeouts": 0, "retries": 0, "resyncs": 0,
                      "bytes_out": 0, "bytes_in": 0}
        self._setting_values: dict[str, Any] = {}
        self._closed = False
        self._recovering = False
        self._conn = connection if connection is not None else self._open()
        if check_identity:
            try:
                self.identify()
            except BaseException:
                self._close_session()
                raise

    # ---- session ------------------------------------------------------------------------
    def _open(self):
        try:
            import pyvisa
        except ImportError as e:     # pragma: no cover
            raise BackendError(f"pyvisa is not installed ({e}); cannot open {self.resource}") from None
        try:
            rm = pyvisa.ResourceManager(self.visa_library)
            res = rm.open_resource(self.resource)
            res.read_termination = self.read_termination
            res.write_termination = self.write_termination
            res.timeout = int(self.timeout_s * 1000)
        except Exception as e:
            lib = self.visa_library or "the system VISA library"
            raise BackendError(f"cannot open the {self.MODEL_NAME} at {self.resource} via {lib}: {e}. "
                               f"Check the resource string, cabling and that the instrument is on") from None
        log.info("opened %s at %s (%s)", self.MODEL_NAME, self.resource, self.visa_library or "system VISA")
        return res

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.resource!r})"

    def where(self) -> str:
        """'Keithley 2450 at GPIB0::18::INSTR' (with the *IDN? model once known)."""
        model = f" ({self.identity.model})" if self.identity else ""
        return f"{self.MODEL_NAME}{model} at {self.resource}"

    # ---- raw I/O ---------------------------------------------------------------------------
    def _raw_write(self, cmd: str) -> None:
        log.debug("%s << %s", self.resource, cmd)
        self.stats["writes"] += 1
        self.stats["bytes_out"] += len(cmd) + len(self.write_termination)
        self._conn.write(cmd)

    def _raw_read(self) -> str:
        reply = self._conn.read()
        self.stats["bytes_in"] += len(reply)
        log.debug("%s >> %s", self.resource, reply)
        return reply.strip()

    def _fail(self, cmd: str, exc: BaseException) -> BackendError:
        if _is_timeout(exc):
            return InstrumentTimeout(f"{self.where()} did not answer {cmd!r} within {self.timeout_s:g} s "
                                     f"(after device clear and resync). Check the instrument and cabling")
        return BackendError(f"{self.where()} failed on {cmd!r}: {exc}")

    def write(self, cmd: str) -> None:
        """Send one message; a timeout is followed by a resync and raises InstrumentTimeout
        (writes are never retried)."""
        self._check_open(cmd)
        try:
            self._raw_write(cmd)
        except Exception as e:
            if _is_timeout(e) and not self._recovering:
                self.stats["timeouts"] += 1
                errs = self._recover()
                queue = ("; instrument error queue: " + "; ".join(f"{c} {m}" for c, m in errs)) if errs else ""
                raise InstrumentTimeout(str(self._fail(cmd, e)) + queue) from None
            if _is_visa_error(e) or isinstance(e, OSError):
                raise self._fail(cmd, e) from None
            raise

    def query(self, cmd: str, *, idempotent: bool = True, n_lines: int = 1,
              parse: Optional[Callable[[str], Any]] = None):
        """Send `cmd`, read `n_lines` reply lines (a str, or a list when n_lines > 1), optionally
        `parse`d. On a timeout or an unparsable reply: device clear, read the error queue,
        resync, then retry when `idempotent`, else raise (InstrumentTimeout / BackendError naming
        the instrument, the command and what the error queue said)."""
        self._check_open(cmd)
        attempt = 0
        while True:
            try:
                self._raw_write(cmd)
                lines = [self._raw_read() for _ in range(n_lines)]
                self.stats["queries"] += 1
                value = lines[0] if n_lines == 1 else lines
                return parse(value) if parse is not None else value
            except Exception as e:
                timeout = _is_timeout(e)
                bad_reply = isinstance(e, ValueError)
                if self._recovering or not (timeout or bad_reply):
                    if _is_visa_error(e) or isinstance(e, OSError):
                        raise self._fail(cmd, e) from None
                    raise
                if timeout:
                    self.stats["timeouts"] += 1
                log.warning("%s: %s on %r (attempt %d); device clear and resync", self.where(),
                            "timeout" if timeout else f"bad reply ({e})", cmd, attempt + 1)
                errs = self._recover()
                if not idempotent or attempt >= self.retries:
                    queue = ("; instrument error queue: " + "; ".join(f"{c} {m}" for c, m in errs)) if errs else ""
                    if timeout:
                        raise InstrumentTimeout(str(self._fail(cmd, e)) + queue) from None
                    raise BackendError(f"{self.where()} gave an unreadable reply to {cmd!r}: {e}{queue}") from None
                attempt += 1
                self.stats["retries"] += 1

    def query_float(self, cmd: str, *, idempotent: bool = True) -> float:
        return self.query(cmd, idempotent=idempotent, parse=lambda s: parse_float(s, cmd))

    # ---- recovery ----------------------------------------------------------------------
    def resync(self) -> None:
        """`*CLS`, then `*OPC?` until the reply is "1" (stale replies discarded)."""
        self.stats["resyncs"] += 1
        self._raw_write("*CLS")
        self._raw_write("*OPC?")
        for _ in range(self.RESYNC_MAX_STALE):
            if self._raw_read() == "1":
                return
        raise BackendError(f"{self.where()}: could not resynchronise (no '1' from *OPC?)")

    def _recover(self) -> list:
        """After a timeout / bad reply: device clear, read the error queue (returned, logged),
        resync. Never raises; nested failures are logged."""
        errs: list = []
        self._recovering = True
        try:
            try:
                self._conn.clear()
            except Exception as e:
                log.error("%s: device clear failed: %s", self.where(), e)
            try:
                errs = self._drain_errors()
                if errs:
                    log.warning("%s: error queue after the failure: %s", self.where(), errs)
            except Exception as e:
                log.error("%s: reading the error queue failed: %s", self.where(), e)
            try:
                self.resync()
            except Exception as e:
                log.error("%s: resync failed: %s", self.where(), e)
        finally:
            self._recovering = False
        return errs

    def _check_open(self, cmd: str) -> None:
        if self._closed:
            raise BackendError(f"{self.where()} is closed; cannot send {cmd!r}")

    # ---- identity and errors ---------------------------------------------------------
    def identify(self) -> Identity:
        """Query *IDN?, check the model against MODEL_PATTERN, remember and return it."""
        raw = self.query("*IDN?")
        ident = Identity.parse(raw)
        if not re.search(self.MODEL_PATTERN, raw, flags=re.I):
            raise BackendError(f"expected a {self.MODEL_NAME} at {self.resource} but *IDN? says {raw.strip()!r}; "
                               f"fix the instrument kind or resource string in the station file")
        self.identity = ident
        log.info("%s identified: %s", self.resource, raw.strip())
        return ident

    def check_errors(self, context: str = "") -> None:
        """Drain the instrument's error queue; raise BackendError with its messages if any."""
        errs = self._drain_errors()
        if errs:
            what = f" after {context}" if context else ""
            msgs = "; ".join(f"{code} {msg}" for code, msg in errs)
            raise BackendError(f"{self.where()} reported error(s){what}: {msgs}")

    def _drain_errors(self) -> list[tuple[int, str]]:
        raise NotImplementedError

    def command(self, setting: str, value, **ctx) -> str:
        """Validated command text of a declared Setting (raises ConfigError before any I/O)."""
        s = getattr(type(self), setting, None)
        if not isinstance(s, Setting):
            raise ConfigError(f"{type(self).__name__} has no setting {setting!r}")
        return s.command(value, self.MODEL_NAME, **ctx)

    # ---- close --------------------------------------------------------------------------
    def safe_off(self) -> None:                    # overridden by SMU drivers
        pass

    def _close_session(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.close()
        except Exception as e:
            log.warning("%s: closing the session failed: %s", self.where(), e)

    def close(self) -> None:
        """Leave the instrument safe (safe_off, best effort) and close the session. Idempotent."""
        if self._closed:
            return
        try:
            self.safe_off()
        finally:
            self._close_session()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            log.warning("%s: leaving on %s; switching outputs off", self.where(), exc_type.__name__)
        self.close()


class SmuDriver(VisaInstrument):
    """Common SMU API of all four drivers (voltage source, current measure).

    configure(compliance_a, v_range, i_range, nplc) must come before output(True);
    source_voltage(v); output(on); measure_current() -> A; pulse(v, width_s); safe_off().

    `limits` (the station's SafetyLimits) and `roles` ({channel: roles}, the terminals 'bl', 'sl',
    'gate' a channel is wired to; channel None on a one-channel SMU): every level (DC, pulse),
    compliance and pulse width the driver would send is checked against the widest value any
    operation allows on those terminals (hil.crossbar.check_level), before any byte is written.
    A channel without roles gets the widest value of every terminal."""

    MIN_PULSE_S = 1e-3
    MAX_PULSE_S = 10.0
    MAX_V = 20.0
    LEVEL_SETTINGS = ("level_v", "pulse_peak_v")       # Settings that put a voltage on the output

    def __init__(self, *args, limits=None, roles: Optional[dict] = None, **kwargs) -> None:
        self._configured: set = set()
        self._v_range: dict = {}
        self.limits = limits
        self.roles = {ch: frozenset(r) for ch, r in (roles or {}).items()}
        super().__init__(*args, **kwargs)

    def command(self, setting: str, value, **ctx) -> str:
        """As VisaInstrument.command, and levels, compliance and widths within the station limits."""
        text = super().command(setting, value, **ctx)
        if self.limits is not None and value is not None:
            ch = ctx.get("ch")
            channel = ch[3:] if isinstance(ch, str) and ch.startswith("smu") else ch
            where = f"{self.where()}{'' if channel is None else f' smu{channel}'}: "
            if setting in self.LEVEL_SETTINGS:
                check_level(self.limits, value, self.roles.get(channel), "level", where)
            elif setting == "compliance_a":
                check_compliance(self.limits, value, where)
            elif setting == "pulse_width_s":
                check_width(self.limits, value, where)
        return text

    def _require_configured(self, channel, what: str) -> None:
        if channel not in self._configured:
            raise ConfigError(f"{self.where()}: call configure(compliance_a, ...) before {what}; "
                              f"compliance and ranges must be set before the output is switched on")

    def _check_level(self, v, channel=None) -> float:
        v = _number(v, "voltage")
        if self.limits is not None:
            check_level(self.limits, v, self.roles.get(channel), "level",
                        f"{self.where()}{'' if channel is None else f' smu{channel}'}: ")
        rng = self._v_range.get(channel)
        top = min(self.MAX_V, rng * 1.01) if rng else self.MAX_V
        if abs(v) > top:
            raise ConfigError(f"{self.where()}: {v:g} V exceeds the configured source range "
                              f"({top:g} V); nothing was sent")
        return v

    def _check_width(self, width_s) -> float:
        w = _number(width_s, "width_s")
        if self.limits is not None:
            check_width(self.limits, w, f"{self.where()}: ")
        if not self.MIN_PULSE_S <= w <= self.MAX_PULSE_S:
            raise ConfigError(f"{self.where()}: pulse width {w:g} s is outside what this driver can make "
                              f"[{self.MIN_PULSE_S:g}, {self.MAX_PULSE_S:g}] s; use the array board's "
                              f"pulse generator for shorter pulses; nothing was sent")
        return w

    def _best_effort(self, what: str, fn: Callable[[], Any]) -> bool:
        try:
            fn()
            return True
        except Exception as e:
            log.error("%s: %s failed during safe-off: %s", self.where(), what, e)
            return False


class ScpiSmu(SmuDriver):
    """SMU speaking SCPI (2400, 2450, B2900). Subclasses declare the Settings
    `source_function`, `source_v_range`, `compliance_a`, `measure_function`, `measure_i_range`,
    `nplc`, `level_v` and set CONFIGURE_ORDER / MEASURE_QUERY / extra configure commands.

    configure() validates everything first, sends one compound message (`;`-joined) and then
    checks the error queue."""

    ERROR_QUERY = ":SYST:ERR?"
    MEASURE_QUERY = ":MEAS:CURR?"
    OUTPUT_ON = ":OUTP ON"
    OUTPUT_OFF = ":OUTP OFF"
    OUTPUT_QUERY = ":OUTP?"
    CONFIGURE_PREFIX: Sequence[str] = ()     # fixed commands before the settings
    CONFIGURE_SUFFIX: Sequence[str] = ()     # fixed commands after the settings
    CONFIGURE_ORDER: Sequence[str] = ()      # settings, in the order they are sent
    LINE_FREQ_HZ = 50.0
    MAX_ERRORS = 32

    def __init__(self, *args, **kwargs) -> None:
        self._output_on = False
        super().__init__(*args, **kwargs)

    def _drain_errors(self) -> list[tuple[int, str]]:
        errs = []
        for _ in range(self.MAX_ERRORS):
            reply = self.query(self.ERROR_QUERY)
            code_s, _, msg = reply.partition(",")
            try:
                code = int(float(code_s))
            except ValueError:
                errs.append((-1, f"unparsable error-queue reply {reply!r}"))
                break
            if code == 0:
                break
            errs.append((code, msg.strip().strip('"')))
        return errs

    def configure(self, compliance_a: float, v_range: Optional[float] = None,
                  i_range: Optional[float] = None, nplc: float = 1.0) -> None:
        """Voltage source / current measure with compliance `compliance_a` (A), source range
        `v_range` (V, None = auto), measure range `i_range` (A, None = auto) and integration
        time `nplc` (power-line cycles). Refused (ConfigError) before any I/O if a value is
        invalid; must precede output(True)."""
        values = {"compliance_a": compliance_a, "source_v_range": v_range, "measure_i_range": i_range,
                  "nplc": nplc, "source_function": "VOLT", "measure_function": "CURR"}
        cmds = list(self.CONFIGURE_PREFIX)
        cmds += [self.command(name, values[name]) for name in self.CONFIGURE_ORDER]
        cmds += list(self.CONFIGURE_SUFFIX)
        self.write(";".join(cmds))
        self._setting_values.update(values)
        self._v_range[None] = v_range
        self._configured.add(None)
        self.check_errors("configure")

    def source_voltage(self, v: float) -> None:
        """Set the DC source level (V); validated against the configured range."""
        v = self._check_level(v)
        self.write(self.command("level_v", v))
        self._setting_values["level_v"] = v

    def output(self, on: bool) -> None:
        """Switch the output on (only after configure) or off."""
        if on:
            self._require_configured(None, "output(True)")
        self.write(self.OUTPUT_ON if on else self.OUTPUT_OFF)
        self._output_on = bool(on)

    def measure_current(self) -> float:
        """One current reading (A). An overflow / not-a-number reading raises with the
        instrument's error queue."""
        i = self.query_float(self.MEASURE_QUERY)
        return self._checked_reading(i, self.MEASURE_QUERY)

    def _checked_reading(self, i: float, cmd: str) -> float:
        if abs(i) >= SCPI_NAN * 0.99:
            self.check_errors(cmd)
            raise BackendError(f"{self.where()} returned no valid reading for {cmd!r} (output off?)")
        return i

    def aperture_s(self) -> float:
        return float(self._setting_values.get("nplc", 1.0)) / self.LINE_FREQ_HZ

    def safe_off(self) -> None:
        """Level 0 V and output off, then confirm with an output-state query. Best effort,
        idempotent, logged; never raises."""
        if self._closed:
            return
        ok = self._best_effort("level 0 + output off", lambda: self._raw_safe_off())
        state = None
        try:
            state = self.query(self.OUTPUT_QUERY).strip()
        except Exception as e:
            log.error("%s: output-state check failed: %s", self.where(), e)
        if state not in ("0", "OFF") and ok:     # a dropped command: try once more
            self._best_effort("output off (retry)", lambda: self.write(self.OUTPUT_OFF))
        self._output_on = False
        log.info("%s: safe off (output state %s)", self.where(), state)

    def _safe_off_commands(self) -> list[str]:
        return [self.command("level_v", 0.0), self.OUTPUT_OFF]

    def _raw_safe_off(self) -> None:
        self.write(";".join(self._safe_off_commands()))
