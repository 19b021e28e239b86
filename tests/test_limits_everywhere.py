"""No path past the station limits (issue 9, findings 2, 3 and 16).

Every public method of every backend (SimulatedCrossbar, InstrumentCrossbar on
stations/sim-instruments.toml over the emulated instruments, DryRunCrossbar) and every driver
object a station hands out (the board and each SMU) is driven with values beyond the limits; each
call must raise, and the emulated instruments must see zero bytes (transactions, bytes, events,
applied voltages and chip counters unchanged). Public methods are enumerated by introspection:
a new public method without a case here fails `test_every_public_*_method_has_a_case`.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from drivers.board import ArrayBoard
from drivers.crossbar_1t1r import InstrumentCrossbar
from drivers.keithley2400 import Keithley2400
from drivers.keithley2450 import Keithley2450
from drivers.keithley2600 import Keithley2600
from drivers.keysight_b2900 import KeysightB2900
from drivers.visa_instrument import Setting
from hil.ops.dryrun import DryRunCrossbar
from hil.errors import BackendError, ConfigError, SafetyViolation
from hil.geometry import YAO, Cells
from hil.limits import SafetyLimits
from hil.programming import WriteVerifyPolicy
from hil.ops.write_verify import write_verify
from hil.registry import open_station
from sim_backend.chip import SimulatedCrossbar
from sim_backend.world import drop_world, get_world

SIM_INSTRUMENTS = Path(__file__).resolve().parents[1] / "stations" / "sim-instruments.toml"
_ids = itertools.count()

#: the public entries of the Crossbar contract that can apply a voltage (DESIGN.md §4)
CHECKED = ("read", "pulse", "vmm", "vmm_amplitude", "program", "read_stress", "read_smu", "dc_sweep")
#: public backend methods that apply no voltage (clock, identity, state files, oracle access)
BACKEND_NO_VOLTAGE = {"now", "advance", "describe", "has", "close", "safe", "true_conductance",
                      "stuck_mask", "save_state", "load_state", "report", "identity",
                      "check_program"}
#: finding 2: refused by write_verify, accepted by xbar.program on the old code
F2_POLICY = WriteVerifyPolicy(set_v_bl=4.5, set_gate_max=4.5, reset_gate=5.4)
#: tighter than sim-instruments.toml, so that every check below is the station's, not a
#: hardware range: reads above 0.1 V, SET pulses over 1 ms, gates above 4.5 V are refused
TIGHT = {("READ", "max_v"): 0.1, ("READ", "max_v_gate"): 3.3, ("RESET", "max_v_gate"): 4.5,
         ("SET", "max_width_s"): 1e-3}

EXTRA_SMUS = """
[instruments.smu2]
kind = "keithley2450"
resource = "GPIB0::18::INSTR"
visa_library = "sim-instruments.toml@hilsim"

[instruments.smu3]
kind = "keithley2400"
resource = "GPIB0::24::INSTR"
visa_library = "sim-instruments.toml@hilsim"

[instruments.smu4]
kind = "keysight-b2900"
resource = "GPIB0::23::INSTR"
visa_library = "sim-instruments.toml@hilsim"

[emulation.instruments.smu2]
kind = "keithley2450"
resource = "GPIB0::18::INSTR"
bus = "usb"
wiring = { "1" = ["BL", "SL"] }

[emulation.instruments.smu3]
kind = "keithley2400"
resource = "GPIB0::24::INSTR"
bus = "gpib"
wiring = { "1" = ["BL", "SL"] }

[emulation.instruments.smu4]
kind = "keysight_b2901a"
resource = "GPIB0::23::INSTR"
bus = "gpib"
wiring = { "1" = ["BL", "SL"] }
"""


# ---- stations ---------------------------------------------------------------------------------
def _set(text: str, table: str, key: str, value: str) -> str:
    """`key = value` in [table] of a TOML text (replaced, or added when the key is absent)."""
    lines = text.splitlines()
    start = lines.index(f"[{table}]") if f"[{table}]" in lines else None
    if start is None:
        return text.rstrip("\n") + f"\n\n[{table}]\n{key} = {value}\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start + 1, end):
        if lines[i].split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}"
            break
    else:
        lines.insert(start + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def station(tmp_path):
    """factory(program=, gate=, limits=, extra_smus=) -> (opened InstrumentCrossbar, its world):
    stations/sim-instruments.toml on a fresh emulated world, with the given edits."""
    opened, worlds = [], []

    def make(*, program="board-firmware", gate="board", limits=None, extra_smus=False):
        d = tmp_path / f"s{len(worlds)}"
        d.mkdir()
        world = f"t-limits-{os.getpid()}-{next(_ids)}"
        text = SIM_INSTRUMENTS.read_text()
        assert 'world = "sim-instruments"' in text and "hilsim://sim-instruments/board" in text
        text = text.replace('world = "sim-instruments"', f'world = "{world}"')
        text = text.replace("hilsim://sim-instruments/board", f"hilsim://{world}/board")
        text = _set(text, "program", "path", f'"{program}"')
        text = _set(text, "channels", "gate", f'"{gate}"')
        for (op, key), v in (limits or {}).items():
            text = _set(text, f"limits.{op}", key, repr(float(v)))
        if extra_smus:
            text += EXTRA_SMUS
        path = d / "sim-instruments.toml"
        path.write_text(text)
        worlds.append(world)
        xb = open_station(str(path))
        opened.append(xb)
        assert isinstance(xb, InstrumentCrossbar) and xb.spec.program_path == program
        return xb, get_world(world)

    yield make
    for xb in opened:
        xb.close()
    for w in worlds:
        drop_world(w)


def snapshot(world) -> tuple:
    """Everything an instrument that received a byte would change."""
    return ({k: dict(v) for k, v in world.counters.items()}, len(world.events), dict(world.max_applied_v),
            dict(world.chip.counters), world.chip.true_conductance().copy())


def assert_same(before, after) -> None:
    assert before[:4] == after[:4]
    np.testing.assert_array_equal(before[4], after[4])


def tight_limits() -> SafetyLimits:
    d: dict = {}
    for (op, key), v in TIGHT.items():
        d.setdefault(op, {})[key] = v
    return SafetyLimits.from_dict(d)


# ---- the cases ----------------------------------------------------------------------------------
CELLS = Cells.block(0, range(2), range(2))
T = np.full(4, 10e-6)
LO, HI = T - 0.2e-6, T + 0.2e-6
NO_CAP = (BackendError, "capability")

#: method -> [(case name, call(xb), expected error, message fragment)], limits = TIGHT
BACKEND_CASES = {
    "read": [("default 0.2 V above READ 0.1 V", lambda x: x.read(CELLS), SafetyViolation, "READ rejected"),
             ("0.45 V", lambda x: x.read(CELLS, v_read=0.45), SafetyViolation, "READ rejected"),
             ("NaN", lambda x: x.read(CELLS, v_read=float("nan")), SafetyViolation, "not a finite")],
    "pulse": [("SET 3.5 V", lambda x: x.pulse(CELLS, "SET", 3.5, 1.0, 50e-9), SafetyViolation, "|V| 3.5"),
              ("SET gate 3.5 V", lambda x: x.pulse(CELLS, "SET", 1.5, 3.5, 50e-9), SafetyViolation, "gate"),
              ("RESET 3.5 V", lambda x: x.pulse(CELLS, "RESET", 3.5, 4.0, 50e-9), SafetyViolation, "|V| 3.5"),
              ("RESET gate 5.0 V", lambda x: x.pulse(CELLS, "RESET", 1.0, 5.0, 50e-9), SafetyViolation, "gate"),
              ("FORM 4.8 V", lambda x: x.pulse(CELLS, "FORM", 4.8, 1.2, 50e-9), SafetyViolation, "|V| 4.8"),
              ("SET 5 ms", lambda x: x.pulse(CELLS, "SET", 1.5, 1.0, 5e-3), SafetyViolation, "width"),
              ("SET 1 ps", lambda x: x.pulse(CELLS, "SET", 1.5, 1.0, 1e-12), SafetyViolation, "width"),
              ("compliance 10 mA", lambda x: x.pulse(CELLS, "SET", 1.5, 1.0, 50e-9, compliance_a=10e-3),
               SafetyViolation, "compliance"),
              ("one cell of four", lambda x: x.pulse(CELLS, "SET", [1.5, 1.5, 1.5, 3.2], 1.0, 50e-9),
               SafetyViolation, "col 1")],
    "vmm": [("default 0.2 V", lambda x: x.vmm(0, np.ones((1, 128), int)), SafetyViolation, "READ rejected"),
            ("0.45 V", lambda x: x.vmm(0, np.ones((1, 4), int), rows=range(4), v_read=0.45),
             SafetyViolation, "READ rejected")],
    "vmm_amplitude": [("+0.15 V above READ 0.1 V", lambda x: x.vmm_amplitude(0, np.full((1, 4), 0.15), rows=range(4)),
                       SafetyViolation, r"READ rejected: \|V\| 0.15 V"),
                      ("-0.15 V: the limit is on |V|", lambda x: x.vmm_amplitude(0, [[0.05, 0.0, -0.15, 0.0]],
                                                                               rows=range(4)),
                       SafetyViolation, "row 2"),
                      ("NaN", lambda x: x.vmm_amplitude(0, [[0.05, np.nan, 0.0, 0.0]], rows=range(4)),
                       ValueError, "NaN")],
    "program": [("finding 2 policy", lambda x: x.program(CELLS, T, LO, HI, F2_POLICY), SafetyViolation,
                 "set_v_bl = 4.5"),
                ("verify reads above READ 0.1 V", lambda x: x.program(CELLS, T, LO, HI, WriteVerifyPolicy()),
                 SafetyViolation, "verify reads"),
                ("5 ms SET width", lambda x: x.program(CELLS, T, LO, HI, WriteVerifyPolicy(width_s=5e-3)),
                 SafetyViolation, "width"),
                ("FORM ramp top 4.8 V", lambda x: x.program(CELLS, T, LO, HI, WriteVerifyPolicy(form_v_max=4.8)),
                 SafetyViolation, "form_v_max")],
    "read_stress": [("default 0.2 V", lambda x: x.read_stress(CELLS, 10), SafetyViolation, "READ rejected"),
                    ("5 s read pulses", lambda x: x.read_stress(CELLS, 10, v_read=0.05, width_s=5.0),
                     SafetyViolation, "width")],
    "read_smu": [("default 0.2 V", lambda x: x.read_smu(CELLS), SafetyViolation, "READ rejected"),
                 ("0.45 V", lambda x: x.read_smu(CELLS, v_read=0.45), SafetyViolation, "READ rejected")],
    "dc_sweep": [("SET 3.5 V", lambda x: x.dc_sweep(CELLS, [0.0, 3.5], v_gate=1.0, compliance_a=1e-4),
                  SafetyViolation, "|V| 3.5"),
                 ("RESET gate 5.0 V", lambda x: x.dc_sweep(CELLS, [-1.0], v_gate=5.0, compliance_a=1e-4),
                  SafetyViolation, "gate"),
                 ("SET 5 ms dwell", lambda x: x.dc_sweep(CELLS, [0.5], v_gate=1.0, compliance_a=1e-4, dwell_s=5e-3),
                  SafetyViolation, "width"),
                 ("compliance 10 mA", lambda x: x.dc_sweep(CELLS, [0.5], v_gate=1.0, compliance_a=1e-2),
                  SafetyViolation, "compliance"),
                 ("0 V at a 4 V gate above READ 3.3 V", lambda x: x.dc_sweep(CELLS, [0.0], v_gate=4.0,
                                                                             compliance_a=1e-4),
                  SafetyViolation, "READ rejected")],
}


def _public_methods(cls) -> set:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def _run_backend_cases(xb, counters) -> int:
    """Every case of every public checked method of `xb`; returns how many ran."""
    n = 0
    for name in sorted(_public_methods(type(xb)) & set(CHECKED)):
        cap = {"read_stress": "read_stress", "read_smu": "smu_read", "dc_sweep": "dc_sweep"}.get(name)
        for case, call, exc, frag in BACKEND_CASES[name]:
            before = counters()
            if cap is not None and not xb.has(cap):
                exc, frag = NO_CAP
            with pytest.raises(exc, match=frag) as info:
                call(xb)
            assert after_equal(before, counters()), f"{type(xb).__name__}.{name} ({case}) touched the backend"
            assert "\n" not in str(info.value)
            n += 1
    return n


def after_equal(a, b) -> bool:
    try:
        assert_same(a, b)
        return True
    except AssertionError:
        return False


# ---- backends ----------------------------------------------------------------------------------
def test_every_public_backend_method_has_a_case():
    for cls in (SimulatedCrossbar, InstrumentCrossbar, DryRunCrossbar):
        public = _public_methods(cls)
        unknown = public - set(CHECKED) - BACKEND_NO_VOLTAGE
        assert not unknown, (f"{cls.__name__} has public method(s) {sorted(unknown)} without a beyond-limits "
                             f"case: add them to BACKEND_CASES (or BACKEND_NO_VOLTAGE if they apply no voltage)")
        assert set(CHECKED) <= public, f"{cls.__name__} lacks checked methods {set(CHECKED) - public}"
        for name in CHECKED + ("check_program",):      # the base class's, never a backend's own
            assert name not in vars(cls), f"{cls.__name__} overrides Crossbar.{name}"
    assert set(BACKEND_CASES) == set(CHECKED)


def test_a_backend_that_overrides_a_checked_method_is_refused_at_class_creation():
    from hil.crossbar import Crossbar
    for name in CHECKED + ("check_program",):
        with pytest.raises(TypeError, match=f"Crossbar.{name}.*_{name}"):
            type("Sneaky", (SimulatedCrossbar,), {name: lambda self, *a, **k: None})
    with pytest.raises(TypeError, match="Crossbar.program"):
        class Direct(Crossbar):           # noqa: F841 - refused while the class statement runs
            def program(self, *a, **k):
                return None


def test_simulated_crossbar_refuses_everything_beyond_the_limits():
    x = SimulatedCrossbar(YAO, seed=1, limits=tight_limits())

    def counters():
        return ({}, 0, {}, dict(x.counters), x.true_conductance().copy())
    assert _run_backend_cases(x, counters) >= 20
    assert x.now() == 0.0


def test_dry_run_crossbar_refuses_everything_beyond_the_limits():
    shadow = SimulatedCrossbar(YAO, seed=1)
    x = DryRunCrossbar(YAO, tight_limits(), shadow, station="tight")

    def counters():
        return ({}, x.reads, {}, dict(shadow.counters), shadow.true_conductance().copy())
    tally = repr(x.tally)
    assert _run_backend_cases(x, counters) >= 20
    assert repr(x.tally) == tally and shadow.now() == 0.0


@pytest.mark.parametrize("program", ["board-firmware", "smu-script"])
def test_instrument_crossbar_refuses_everything_beyond_the_limits(station, program):
    xb, world = station(program=program, gate="smu1.b" if program == "smu-script" else "board", limits=TIGHT)
    assert xb.has("smu_read") and not xb.has("read_stress")
    assert _run_backend_cases(xb, lambda: snapshot(world)) >= 20


@pytest.mark.parametrize("program", ["board-firmware", "smu-script"])
def test_finding_2_program_cannot_bypass_the_set_limits(station, program):
    """SET limited to 3 V / gate 3 V: write_verify refused the policy, xbar.program did not."""
    xb, world = station(program=program, gate="smu1.b" if program == "smu-script" else "board")
    assert xb.limits["SET"].max_v == 3.0 and xb.limits["SET"].max_v_gate == 3.0
    cells = Cells.block(0, range(4), range(4))
    t = np.full(len(cells), 10e-6)
    before = snapshot(world)
    with pytest.raises(SafetyViolation, match="set_v_bl = 4.5"):
        write_verify(xb, cells, t, 0.5e-6, F2_POLICY)
    with pytest.raises(SafetyViolation, match="set_v_bl = 4.5"):
        xb.program(cells, t, t - 0.4e-6, t + 0.4e-6, F2_POLICY)
    assert_same(before, snapshot(world))
    assert max(world.max_applied_v.values()) <= 3.3


@pytest.mark.parametrize("program", ["board-firmware", "smu-script"])
def test_finding_3_read_limit_applies_to_the_verify_reads(station, program):
    """[limits.READ] max_v = 0.1: xbar.read refused, write_verify read the chip at 0.2 V."""
    xb, world = station(program=program, gate="smu1.b" if program == "smu-script" else "board",
                        limits={("READ", "max_v"): 0.1})
    cells = Cells.block(0, range(4), range(4))
    t = np.full(len(cells), 10e-6)
    before = snapshot(world)
    with pytest.raises(SafetyViolation, match="READ rejected"):
        xb.read(cells)
    with pytest.raises(SafetyViolation, match="verify reads would apply 0.2 V"):
        write_verify(xb, cells, t, 0.5e-6)
    with pytest.raises(SafetyViolation, match="verify reads would apply 0.2 V"):
        xb.program(cells, t, t - 0.4e-6, t + 0.4e-6)
    assert_same(before, snapshot(world))
    assert world.chip.counters["reads"] == before[3]["reads"]


def test_within_the_limits_the_same_station_still_programs(station):
    """The checks refuse values, not stations: a policy inside the limits runs through program."""
    xb, world = station()
    cells = Cells.block(0, range(2), range(2))
    before = snapshot(world)
    r = xb.program(cells, T, LO, HI, WriteVerifyPolicy(max_pulses=40))
    assert len(r) == len(cells) and (r.status >= 0).all()
    assert world.counters["board"]["transactions"] > before[0]["board"]["transactions"]


# ---- drivers a station hands out -------------------------------------------------------------------
#: public driver methods and settings that apply no voltage of their own (identity, status,
#: output switching at an already checked level, measuring, safe-off, running an uploaded and
#: checked policy) and the raw transport (`write`, `query`: text for the instrument, documented
#: as below every check)
DRIVER_NO_VOLTAGE = {"identify", "status", "clear_events", "set_watchdog", "ground_all", "describe", "close",
                     "output", "measure_current", "measure_voltage", "safe_off", "load_write_verify_script",
                     "write_verify_cell", "check_errors", "where", "aperture_s", "resync",
                     "write", "query", "query_float",
                     # settings that set ranges, functions and timing, not levels
                     "source_v_range", "measure_i_range", "nplc", "source_function", "measure_function",
                     "source_delay_s"}

BAD_POLICY_CALLS = [("finding 2 policy", F2_POLICY), ("verify reads at 0.2 V", WriteVerifyPolicy())]

BOARD_CASES = {
    "pulse": [("SET 3.5 V", lambda b: b.pulse(CELLS, "SET", 3.5, 1.0, 50e-9)),
              ("SET gate 3.5 V", lambda b: b.pulse(CELLS, "SET", 1.5, 3.5, 50e-9)),
              ("RESET 3.5 V", lambda b: b.pulse(CELLS, "RESET", 3.5, 4.0, 50e-9)),
              ("FORM 4.8 V", lambda b: b.pulse(CELLS, "FORM", 4.8, 1.2, 50e-9)),
              ("SET 5 ms", lambda b: b.pulse(CELLS, "SET", 1.5, 1.0, 5e-3))],
    "read_cells": [("0.2 V", lambda b: b.read_cells(CELLS))],
    "vmm": [("0.2 V", lambda b: b.vmm(0, np.ones((1, 4), int), rows=range(4), cols=range(4)))],
    "vmm_amplitude": [("+0.15 V", lambda b: b.vmm_amplitude(0, np.full((1, 4), 0.15), rows=range(4), cols=range(4))),
                      ("-0.15 V", lambda b: b.vmm_amplitude(0, [[0.0, -0.15, 0.0, 0.0]], rows=range(4)))],
    "route": [("gate 5 V", lambda b: b.route(CELLS[:1], bl="bus", sl="ground", wl="dac", gate_v=5.0))],
    "set_gate": [("5 V", lambda b: b.set_gate(5.0))],
    "program_job": [(name, (lambda p: lambda b: b.program_job(CELLS, T, LO, HI, p))(p))
                    for name, p in BAD_POLICY_CALLS],
}


def _smu_cases(smu) -> dict:
    """method/setting -> [(case, setup(smu) or None, call(smu))] for one SMU driver."""
    if isinstance(smu, Keithley2600):
        def armed(s):
            s.configure(1e-4, channel="a")
            s.source_voltage(0.0, channel="a")
            s.output(True, channel="a")

        def loaded(s):
            s.load_write_verify_script()
        return {
            "configure": [("compliance 10 mA", None, lambda s: s.configure(10e-3, channel="a"))],
            "source_voltage": [("20 V", None, lambda s: s.source_voltage(20.0, channel="a")),
                               ("5 V on the unwired smub", None, lambda s: s.source_voltage(5.0, channel="b"))],
            "pulse": [("5 V", armed, lambda s: s.pulse(5.0, 1e-3, channel="a")),
                      ("5 s", armed, lambda s: s.pulse(1.0, 5.0, channel="a"))],
            "command": [("level 20 V", None, lambda s: s.command("level_v", 20.0, ch="smua"))],
            "level_v": [("level 20 V", None, lambda s: s.command("level_v", 20.0, ch="smub"))],
            "compliance_a": [("10 mA", None, lambda s: s.command("compliance_a", 10e-3, ch="smua"))],
            "set_write_verify_policy": [(name, loaded, (lambda p: lambda s: s.set_write_verify_policy(p))(p))
                                        for name, p in BAD_POLICY_CALLS],
        }

    def armed(s):
        s.configure(1e-4, nplc=0.01)
        s.source_voltage(0.0)
        s.output(True)
    cases = {
        "configure": [("compliance 10 mA", None, lambda s: s.configure(10e-3, nplc=0.01))],
        "source_voltage": [("20 V", None, lambda s: s.source_voltage(20.0)),
                           ("5 V", None, lambda s: s.source_voltage(5.0))],
        "pulse": [("5 V", armed, lambda s: s.pulse(5.0, 2e-3)),
                  ("5 s", armed, lambda s: s.pulse(1.0, 5.0))],
        "command": [("level 20 V", None, lambda s: s.command("level_v", 20.0))],
        "level_v": [("assign 20 V", None, lambda s: setattr(s, "level_v", 20.0))],
        "compliance_a": [("assign 10 mA", None, lambda s: setattr(s, "compliance_a", 10e-3))],
    }
    if isinstance(smu, KeysightB2900):
        cases["pulse_peak_v"] = [("assign 20 V", None, lambda s: setattr(s, "pulse_peak_v", 20.0))]
        cases["pulse_width_s"] = [("assign 5 s", None, lambda s: setattr(s, "pulse_width_s", 5.0))]
    return cases


def _driver_names(cls) -> set:
    names = _public_methods(cls)
    names |= {n for n in dir(cls) if isinstance(getattr(cls, n, None), Setting)}
    return names


def test_every_public_driver_method_has_a_case():
    expected = {ArrayBoard: set(BOARD_CASES)}
    for cls in (Keithley2600, Keithley2400, Keithley2450, KeysightB2900):
        expected[cls] = set(_smu_cases(cls.__new__(cls)))
    for cls, cased in expected.items():
        unknown = _driver_names(cls) - cased - DRIVER_NO_VOLTAGE
        assert not unknown, (f"{cls.__name__} has public method(s)/setting(s) {sorted(unknown)} without a "
                             f"beyond-limits case: add one (or list it in DRIVER_NO_VOLTAGE)")


def test_station_drivers_refuse_everything_beyond_the_limits(station):
    xb, world = station(limits=TIGHT, extra_smus=True)
    assert {type(s) for s in xb.smus.values()} == {Keithley2600, Keithley2450, Keithley2400, KeysightB2900}
    ran = 0
    for name, cases in BOARD_CASES.items():
        for case, call in cases:
            before = snapshot(world)
            with pytest.raises(SafetyViolation) as info:
                call(xb.board)
            assert after_equal(before, snapshot(world)), f"board.{name} ({case}) reached the board"
            assert "\n" not in str(info.value)
            ran += 1
    for smu_name, smu in xb.smus.items():
        assert smu.limits is xb.limits
        for name, cases in _smu_cases(smu).items():
            for case, setup, call in cases:
                if setup is not None:
                    setup(smu)
                before = snapshot(world)
                with pytest.raises((SafetyViolation, ConfigError)) as info:
                    call(smu)
                assert isinstance(info.value, SafetyViolation), (smu_name, name, case, info.value)
                assert after_equal(before, snapshot(world)), f"{smu_name}.{name} ({case}) reached the instrument"
                ran += 1
    assert ran >= 40
    assert world.max_applied_v["BL"] <= 0.1 and world.max_applied_v["WL"] <= 3.3


def test_drivers_of_a_station_carry_its_limits_by_role(station):
    """smu1.a (bit and source line) may not exceed the widest line level, the board DAC the
    widest gate; the same values pass where a terminal allows them."""
    xb, world = station()          # sim-instruments.toml: FORM 4.5 V on the lines, RESET gate 5.5 V
    smu = xb.smus["smu1"]
    assert smu.roles == {"a": frozenset({"bl", "sl"})}
    before = snapshot(world)
    with pytest.raises(SafetyViolation, match="4.8 V exceeds the station limits of bl/sl"):
        smu.source_voltage(4.8, channel="a")
    assert_same(before, snapshot(world))
    smu.source_voltage(4.4, channel="a")
    assert xb.board.limits is xb.limits
