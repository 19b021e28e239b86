"""Keithley 2600B System SourceMeter (TSP/Lua): plain source/measure on smua/smub and an
on-instrument write-verify script.

Plain API (channel "a" or "b"): configure, source_voltage, output, measure_current, pulse,
safe_off — each one TSP chunk (one bus transaction), e.g.
`smua.source.limiti = 0.0001`, `smua.source.output = smua.OUTPUT_ON`, `print(smua.measure.i())`.
Error queue: `print(errorqueue.count)`, then `errorqueue.next()` for each entry.

Write-verify job (drivers/tsp/write_verify.lua, loaded as script "hilwv" with
`loadscript hilwv ... endscript` and run once to define its functions): the host routes ONE
cell through the array board (BL -> smua bus, SL -> ground, WL -> smub bus), then calls
`hilwv_cell(lo, hi)`, which loops pulse + verify read on the instrument and prints
"G<TAB>pulses<TAB>status" — one bus transaction per cell. RESET is a negative BL pulse
(reverse polarity with the SL grounded), so the board need not re-route between SET and RESET.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Optional

from hil.crossbar import check_policy
from hil.errors import BackendError, ConfigError

from .visa_instrument import Setting, SmuDriver, in_range, range_or_auto

log = logging.getLogger(__name__)

V_RANGES = (0.1, 1.0, 6.0, 40.0)
I_RANGES = (100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0, 1.5, 3.0)
SCRIPT_NAME = "hilwv"


def write_verify_script() -> str:
    """The TSP source of the write-verify script (without loadscript/endscript)."""
    return resources.files("drivers.tsp").joinpath("write_verify.lua").read_text()


@dataclass(frozen=True)
class CellResult:
    """Outcome of the on-instrument write-verify of one cell."""

    g_s: float
    pulses: int
    status: int          # hil.ops.write_verify codes: 0 in band, 1 max pulses, 2 unresponsive


def _tsp_num(x: float) -> str:
    return repr(float(x))


class Keithley2600(SmuDriver):
    """Keithley 2600B (2601B/2602B/2611B/2612B/2635B/2636B...) over VISA, TSP commands."""

    MODEL_NAME = "Keithley 2600B"
    MODEL_PATTERN = r"Model 26\d\dB"
    MAX_V = 40.0
    MAX_PULSE_S = 10.0
    CHANNELS = ("a", "b")

    source_v_range = Setting("{ch}.source.rangev = {:g}", range_or_auto(V_RANGES, " V"), "source range (V)",
                             auto_command_fmt="{ch}.source.autorangev = {ch}.AUTORANGE_ON")
    compliance_a = Setting("{ch}.source.limiti = {:g}", in_range(1e-9, 3.0, " A"), "current limit (A)")
    measure_i_range = Setting("{ch}.measure.rangei = {:g}", range_or_auto(I_RANGES, " A"), "current range (A)",
                              auto_command_fmt="{ch}.measure.autorangei = {ch}.AUTORANGE_ON")
    nplc = Setting("{ch}.measure.nplc = {:g}", in_range(0.001, 25.0), "integration time (PLC)")
    level_v = Setting("{ch}.source.levelv = {!r}", in_range(-40.0, 40.0, " V"), "DC source level (V)")

    def __init__(self, resource: str, visa_library: str = "", *, min_pulse_s: float = 100e-6,
                 **kwargs) -> None:
        """`min_pulse_s`: shortest pulse this driver makes with delay() (real 2600B sources
        settle in tens of µs; the emulator accepts any width)."""
        self.MIN_PULSE_S = float(min_pulse_s)
        self._script_loaded = False
        self._policy_set = False
        self._outputs: dict[str, bool] = {}
        super().__init__(resource, visa_library, **kwargs)

    # ---- identity --------------------------------------------------------------------
    def identify(self):
        ident = super().identify()
        m = re.search(r"26\d(\d)B", ident.model + " " + ident.raw)
        if m and m.group(1) in "15":          # 2601B, 2611B, 2635B: one channel
            self.CHANNELS = ("a",)
        return ident

    def _ch(self, channel: str) -> str:
        ch = channel
        if ch not in self.CHANNELS:
            raise ConfigError(f"{self.where()} has no channel smu{ch} (channels: "
                              f"{', '.join('smu' + c for c in self.CHANNELS)})")
        return "smu" + ch

    # ---- errors ---------------------------------------------------------------------
    def _drain_errors(self) -> list[tuple[int, str]]:
        n = int(self.query_float("print(errorqueue.count)"))
        if n <= 0:
            return []
        lines = self.query("for i = 1, errorqueue.count do local c, m = errorqueue.next() print(c, m) end",
                           n_lines=n)
        lines = [lines] if isinstance(lines, str) else lines
        out = []
        for line in lines:
            code, _, msg = line.partition("\t")
            try:
                out.append((int(float(code)), msg.strip()))
            except ValueError:
                out.append((-1, line.strip()))
        return out

    # ---- plain SMU API ---------------------------------------------------------------
    def configure(self, compliance_a: float, v_range: Optional[float] = None,
                  i_range: Optional[float] = None, nplc: float = 1.0, *, channel: str = "a") -> None:
        """DC-volts source, current limit `compliance_a` (A), source range `v_range` (V, None =
        auto), measure range `i_range` (A, None = auto), `nplc`; one TSP chunk, then an
        error-queue check. Validated before any I/O; must precede output(True)."""
        ch = self._ch(channel)
        cmds = [f"{ch}.source.func = {ch}.OUTPUT_DCVOLTS",
                self.command("source_v_range", v_range, ch=ch),
                self.command("compliance_a", compliance_a, ch=ch),
                self.command("measure_i_range", i_range, ch=ch),
                self.command("nplc", nplc, ch=ch)]
        self.write(" ".join(cmds))
        self._v_range[channel] = v_range
        self._configured.add(channel)
        self._setting_values[f"{ch}.nplc"] = nplc
        self.check_errors(f"configure smu{channel}")

    def source_voltage(self, v: float, *, channel: str = "a") -> None:
        ch = self._ch(channel)
        v = self._check_level(v, channel)
        self.write(self.command("level_v", v, ch=ch))

    def output(self, on: bool, *, channel: str = "a") -> None:
        ch = self._ch(channel)
        if on:
            self._require_configured(channel, f"output(True, channel={channel!r})")
        self.write(f"{ch}.source.output = {ch}.OUTPUT_{'ON' if on else 'OFF'}")
        self._outputs[channel] = bool(on)

    def measure_current(self, *, channel: str = "a") -> float:
        ch = self._ch(channel)
        return self.query_float(f"print({ch}.measure.i())")

    def measure_voltage(self, *, channel: str = "a") -> float:
        ch = self._ch(channel)
        return self.query_float(f"print({ch}.measure.v())")

    def pulse(self, v: float, width_s: float, *, channel: str = "a") -> None:
        """Level `v` for `width_s` (timed on the instrument with delay()), then 0 V; output on."""
        ch = self._ch(channel)
        v = self._check_level(v, channel)
        w = self._check_width(width_s)
        self._require_configured(channel, "pulse()")
        if not self._outputs.get(channel):
            raise ConfigError(f"{self.where()}: switch smu{channel} on (at 0 V) before pulse()")
        self.write(f"{self.command('level_v', v, ch=ch)} delay({_tsp_num(w)}) {ch}.source.levelv = 0")

    def safe_off(self) -> None:
        """Levels 0 V, outputs off on every channel, then a state check. Best effort, never raises."""
        if self._closed:
            return
        cmds = " ".join(f"smu{c}.source.levelv = 0 smu{c}.source.output = smu{c}.OUTPUT_OFF"
                        for c in self.CHANNELS)
        ok = self._best_effort("levels 0 + outputs off", lambda: self.write(cmds))
        states = None
        try:
            reply = self.query("print(" + ", ".join(f"smu{c}.source.output" for c in self.CHANNELS) + ")")
            states = [float(s) for s in reply.split("\t")]
        except Exception as e:
            log.error("%s: output-state check failed: %s", self.where(), e)
        if ok and (states is None or any(states)):
            self._best_effort("outputs off (retry)", lambda: self.write(cmds))
        self._outputs = {c: False for c in self.CHANNELS}
        log.info("%s: safe off (output states %s)", self.where(), states)

    # ---- on-instrument write-verify -------------------------------------------------
    def load_write_verify_script(self) -> None:
        """Load the write-verify script as `hilwv` and run it once (defines its functions);
        one transaction plus an error check."""
        body = write_verify_script().rstrip("\n")
        self.write(f"loadscript {SCRIPT_NAME}\n{body}\nendscript\n{SCRIPT_NAME}.run()")
        self.check_errors("loading the write-verify script")
        self._script_loaded = True
        self._policy_set = False

    def set_write_verify_policy(self, policy, *, v_read: float = 0.2, read_gate_v: float = 3.3,
                                min_stuck_change_s: Optional[float] = None) -> None:
        """Send a hil.ops.write_verify.WriteVerifyPolicy (and the verify-read level/gate) to the script."""
        if not self._script_loaded:
            raise ConfigError(f"{self.where()}: call load_write_verify_script() first")
        if min_stuck_change_s is None:
            from hil.programming import MIN_STUCK_CHANGE_S
            min_stuck_change_s = MIN_STUCK_CHANGE_S
        if policy.width_s < self.MIN_PULSE_S:
            raise ConfigError(f"{self.where()}: policy width_s = {policy.width_s:g} s is below the "
                              f"shortest pulse this 2600B makes ({self.MIN_PULSE_S:g} s); use a longer "
                              f"width or the board's pulse generator")
        for name, v in (("v_read", v_read), ("read_gate_v", read_gate_v)):
            if not 0 < float(v) <= self.MAX_V:
                raise ConfigError(f"{name} = {v!r} V must be in (0, {self.MAX_V:g}] V")
        if not hasattr(policy, "validate"):
            raise ConfigError(f"{self.where()}: policy must be a WriteVerifyPolicy, got {type(policy).__name__}")
        if self.limits is not None:
            check_policy(self.limits, policy, v_read, read_gate_v, f"{self.where()}: write-verify script: ")
        args = [v_read, read_gate_v, int(policy.n_verify_reads), int(policy.max_pulses), policy.width_s,
                policy.set_v_bl, policy.set_gate_start, policy.set_gate_step, policy.set_gate_max,
                policy.reset_v_sl_start, policy.reset_v_sl_step, policy.reset_v_sl_max, policy.reset_gate,
                policy.form_threshold_s, policy.form_v_start, policy.form_v_step, policy.form_v_max,
                policy.form_gate, int(policy.stuck_after), min_stuck_change_s]
        text = ", ".join(str(a) if isinstance(a, int) else _tsp_num(a) for a in args)
        self.write(f"hilwv_policy({text})")
        self.check_errors("setting the write-verify policy")
        self._policy_set = True
        self._policy = policy

    def write_verify_cell(self, lo_s: float, hi_s: float, *, timeout_s: Optional[float] = None) -> CellResult:
        """Run the on-instrument write-verify for the cell the board has routed: pulses until a
        verify reading is within [lo_s, hi_s] (siemens), max pulses or unresponsive. One bus
        transaction. Needs smua and smub configured and on. Never retried on a timeout."""
        if not self._policy_set:
            raise ConfigError(f"{self.where()}: call set_write_verify_policy() first")
        for c in ("a", "b"):
            self._require_configured(c, "write_verify_cell()")
            if not self._outputs.get(c):
                raise ConfigError(f"{self.where()}: smu{c} output must be on for write_verify_cell()")
        lo, hi = float(lo_s), float(hi_s)
        if not 0 <= lo <= hi:
            raise ConfigError(f"write_verify_cell: need 0 <= lo_s <= hi_s, got {lo_s!r}, {hi_s!r}")
        cmd = f"hilwv_cell({_tsp_num(lo)}, {_tsp_num(hi)})"
        if timeout_s is None:     # worst case: every pulse plus its verify read, plus margin
            p = self._policy
            timeout_s = max(self.timeout_s, 2.0 + p.max_pulses * (p.width_s + 0.05))
        with self._timeout(timeout_s):
            reply = self.query(cmd, idempotent=False)
        try:
            g, n, st = reply.split("\t")
            return CellResult(float(g), int(float(n)), int(float(st)))
        except ValueError:
            self.check_errors(cmd)
            raise BackendError(f"{self.where()}: unreadable write-verify reply {reply!r} to {cmd!r}") from None

    @contextmanager
    def _timeout(self, seconds: float):
        old = getattr(self._conn, "timeout", None)
        try:
            if old is not None:
                self._conn.timeout = int(seconds * 1000)
            yield
        finally:
            if old is not None:
                self._conn.timeout = old
