"""Exact command/response tests of the SMU drivers (no hardware, no emulator)."""
from __future__ import annotations

import pytest

from drivers.keithley2400 import Keithley2400
from drivers.keithley2450 import Keithley2450
from drivers.keithley2600 import Keithley2600, write_verify_script
from drivers.keysight_b2900 import KeysightB2900
from hil.errors import BackendError, ConfigError, InstrumentTimeout
from hil.programming import WriteVerifyPolicy

from tests.protocol import CLEAR, TIMEOUT, WRITE_TIMEOUT, ProtocolMismatch, expected_protocol

OK = '0,"No error"'
RESYNC = [(CLEAR, None), (":SYST:ERR?", OK), ("*CLS", None), ("*OPC?", "1")]

CFG_2400 = (':SOUR:FUNC VOLT;:SOUR:VOLT:RANG 2;:SENS:FUNC "CURR";:SENS:CURR:PROT 0.0001;'
            ':SENS:CURR:RANG 0.0001;:SENS:CURR:NPLC 1;:SOUR:VOLT:MODE FIX;:FORM:ELEM CURR')
CFG_2450 = (':SOUR:FUNC VOLT;:SOUR:VOLT:RANG 2;:SOUR:VOLT:ILIM 0.0001;:SENS:FUNC "CURR";'
            ':SENS:CURR:RANG 0.0001;:SENS:CURR:NPLC 1')
CFG_B2900 = (':SOUR:FUNC:MODE VOLT;:SOUR:VOLT:RANG 2;:SENS:FUNC "CURR";:SENS:CURR:PROT 0.0001;'
             ':SENS:CURR:RANG 0.0001;:SENS:CURR:NPLC 1')
CFG_2600A = ("smua.source.func = smua.OUTPUT_DCVOLTS smua.source.rangev = 6 smua.source.limiti = 0.0001 "
             "smua.measure.rangei = 0.0001 smua.measure.nplc = 1")
ERRCOUNT = "print(errorqueue.count)"
RESYNC_TSP = [(CLEAR, None), (ERRCOUNT, "0.00000e+00"), ("*CLS", None), ("*OPC?", "1")]


# ---- identity --------------------------------------------------------------------------
@pytest.mark.parametrize("cls,idn", [
    (Keithley2400, "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C32 Oct 4 2010/A02 /S/K"),
    (Keithley2450, "KEITHLEY INSTRUMENTS,MODEL 2450,04096218,1.7.3c"),
    (KeysightB2900, "Keysight Technologies,B2902A,MY51140123,3.4.2011.5100"),
    (Keithley2600, "Keithley Instruments Inc., Model 2602B, 4123456, 3.2.2"),
])
def test_identify_accepts_the_right_model(cls, idn):
    with expected_protocol(cls, [("*IDN?", idn)], check_identity=True) as smu:
        assert smu.identity.raw == idn
        assert smu.identity.serial in idn


def test_identify_refuses_a_2450_where_a_2600b_is_configured():
    idn = "KEITHLEY INSTRUMENTS,MODEL 2450,04096218,1.7.3c"
    with pytest.raises(BackendError, match=r"expected a Keithley 2600B at GPIB0::26::INSTR but \*IDN\? "
                                           r"says 'KEITHLEY INSTRUMENTS,MODEL 2450"):
        with expected_protocol(Keithley2600, [("*IDN?", idn)], resource="GPIB0::26::INSTR",
                               check_identity=True):
            pass


def test_single_channel_2600b_has_no_smub():
    with expected_protocol(Keithley2600, [("*IDN?", "Keithley Instruments Inc., Model 2601B, 1, 3.2.2")],
                           check_identity=True) as smu:
        with pytest.raises(ConfigError, match="no channel smub"):
            smu.configure(1e-4, channel="b")


# ---- 2400 -------------------------------------------------------------------------------
def test_2400_configure_output_measure():
    with expected_protocol(Keithley2400, [
        (CFG_2400, None), (":SYST:ERR?", OK),
        (":SOUR:VOLT:LEV 0.2", None), (":OUTP ON", None), (":READ?", "+1.234500E-06"),
    ]) as smu:
        smu.configure(1e-4, 2.0, 1e-4, 1.0)
        smu.source_voltage(0.2)
        smu.output(True)
        assert smu.measure_current() == pytest.approx(1.2345e-6)


def test_2400_auto_ranges():
    cfg = (':SOUR:FUNC VOLT;:SOUR:VOLT:RANG:AUTO ON;:SENS:FUNC "CURR";:SENS:CURR:PROT 1e-05;'
           ':SENS:CURR:RANG:AUTO ON;:SENS:CURR:NPLC 0.1;:SOUR:VOLT:MODE FIX;:FORM:ELEM CURR')
    with expected_protocol(Keithley2400, [(cfg, None), (":SYST:ERR?", OK)]) as smu:
        smu.configure(1e-5, None, None, 0.1)


def test_2400_pulse_uses_source_delay_and_auto_output_off():
    with expected_protocol(Keithley2400, [
        (CFG_2400.replace("NPLC 1", "NPLC 0.01"), None), (":SYST:ERR?", OK),
        (":OUTP ON", None),
        (":OUTP OFF;:SOUR:VOLT:LEV 1.5;:SOUR:DEL 0.0018;:SOUR:CLE:AUTO ON", None),
        (":READ?", "+4.5E-05"),
        (":SOUR:CLE:AUTO OFF;:SOUR:DEL 0;:SOUR:VOLT:LEV 0;:OUTP ON", None),
    ]) as smu:
        smu.configure(1e-4, 2.0, 1e-4, 0.01)
        smu.output(True)
        assert smu.pulse(1.5, 2e-3) == pytest.approx(4.5e-5)


def test_2400_error_queue_is_drained_and_raised():
    with expected_protocol(Keithley2400, [
        (CFG_2400, None), (":SYST:ERR?", '-222,"Data out of range"'), (":SYST:ERR?", '-113,"Undefined header"'),
        (":SYST:ERR?", OK),
    ]) as smu:
        with pytest.raises(BackendError, match=r"Keithley 2400 at GPIB0::1::INSTR reported error\(s\) after "
                                               r"configure: -222 Data out of range; -113 Undefined header"):
            smu.configure(1e-4, 2.0, 1e-4, 1.0)


def test_2400_output_off_reading_raises_with_instrument_message():
    with expected_protocol(Keithley2400, [
        (":READ?", "+9.910000E+37"), (":SYST:ERR?", '-221,"Settings conflict; output is off"'), (":SYST:ERR?", OK),
    ]) as smu:
        with pytest.raises(BackendError, match="Settings conflict; output is off"):
            smu.measure_current()


def test_2400_safe_off_and_close_are_idempotent():
    with expected_protocol(Keithley2400, [
        (":SOUR:CLE:AUTO OFF;:SOUR:VOLT:LEV 0;:OUTP OFF", None), (":OUTP?", "0"),
    ]) as smu:
        smu.close()
        smu.close()
        assert smu._conn.closed


def test_2400_safe_off_repeats_a_lost_output_off():
    with expected_protocol(Keithley2400, [
        (":SOUR:CLE:AUTO OFF;:SOUR:VOLT:LEV 0;:OUTP OFF", None), (":OUTP?", "1"), (":OUTP OFF", None),
    ]) as smu:
        smu.safe_off()


# ---- validation before I/O --------------------------------------------------------------
@pytest.mark.parametrize("cls", [Keithley2400, Keithley2450, KeysightB2900])
def test_bad_settings_are_refused_before_any_io(cls):
    with expected_protocol(cls, []) as smu:
        with pytest.raises(ConfigError, match="compliance_a"):
            smu.configure(5.0, 2.0, 1e-4, 1.0)
        with pytest.raises(ConfigError, match="source_v_range = 5"):
            smu.configure(1e-4, 5.0, 1e-4, 1.0)
        with pytest.raises(ConfigError, match="nplc"):
            smu.configure(1e-4, 2.0, 1e-4, 1000.0)
        with pytest.raises(ConfigError, match="before output"):
            smu.output(True)
        with pytest.raises(ConfigError, match="pulse width"):
            smu.pulse(1.0, 1e-9)


def test_level_above_configured_range_is_refused():
    with expected_protocol(Keithley2450, [(CFG_2450, None), (":SYST:ERR?", OK)]) as smu:
        smu.configure(1e-4, 2.0, 1e-4, 1.0)
        with pytest.raises(ConfigError, match="exceeds the configured source range"):
            smu.source_voltage(5.0)


# ---- 2450 -------------------------------------------------------------------------------
def test_2450_configure_output_measure_pulse_safe_off():
    with expected_protocol(Keithley2450, [
        (CFG_2450, None), (":SYST:ERR?", OK),
        (":SOUR:VOLT 0.2", None), (":OUTP ON", None), (":MEAS:CURR?", "2.0E-06"),
        (":SOUR:VOLT 0", None),
        (":SOUR:VOLT:DEL 0.0008;:SOUR:VOLT 1.2;:MEAS:CURR?", "3.0E-05"),
        (":SOUR:VOLT 0;:SOUR:VOLT:DEL 0", None),
        (":SOUR:VOLT 0;:OUTP OFF", None), (":OUTP?", "0"),
    ]) as smu:
        smu.configure(1e-4, 2.0, 1e-4, 1.0)
        smu.source_voltage(0.2)
        smu.output(True)
        assert smu.measure_current() == pytest.approx(2e-6)
        smu.source_voltage(0.0)
        smu._setting_values["nplc"] = 0.01          # aperture 0.2 ms
        assert smu.pulse(1.2, 1e-3) == pytest.approx(3e-5)
        smu.safe_off()


def test_2450_pulse_needs_output_on():
    with expected_protocol(Keithley2450, [(CFG_2450, None), (":SYST:ERR?", OK)]) as smu:
        smu.configure(1e-4, 2.0, 1e-4, 1.0)
        with pytest.raises(ConfigError, match="output on"):
            smu.pulse(1.0, 0.1)


# ---- B2900 ------------------------------------------------------------------------------
def test_b2900_pulse_mode_conversation():
    with expected_protocol(KeysightB2900, [
        (CFG_B2900, None), (":SYST:ERR?", '+0,"No error"'),
        (":SOUR:VOLT 0", None), (":OUTP ON", None),
        (":SOUR:FUNC:SHAP PULS;:SOUR:PULS:DEL 0;:TRIG:TRAN:COUN 1", None),
        (":SOUR:VOLT:TRIG 1.5;:SOUR:PULS:WIDT 0.0001;:INIT:TRAN;*OPC?", "1"),
        (":SOUR:VOLT:TRIG -1.2;:SOUR:PULS:WIDT 5e-05;:INIT:TRAN;*OPC?", "1"),
        (":MEAS:CURR?", "+1.0E-07"),
        (":SOUR:VOLT 0;:OUTP OFF;:SOUR:FUNC:SHAP DC", None), (":OUTP?", "0"),
    ]) as smu:
        smu.configure(1e-4, 2.0, 1e-4, 1.0)
        smu.source_voltage(0.0)
        smu.output(True)
        smu.pulse(1.5, 100e-6)
        smu.pulse(-1.2, 50e-6)
        assert smu.measure_current() == pytest.approx(1e-7)
        smu.safe_off()


# ---- timeouts and resync -----------------------------------------------------------------
def test_timeout_on_idempotent_query_resyncs_and_retries():
    with expected_protocol(Keithley2450, [
        (":MEAS:CURR?", TIMEOUT), *RESYNC, (":MEAS:CURR?", "1.5E-06"),
    ]) as smu:
        assert smu.measure_current() == pytest.approx(1.5e-6)
        assert smu.stats["timeouts"] == 1 and smu.stats["retries"] == 1


def test_resync_discards_stale_replies():
    with expected_protocol(Keithley2450, [
        (":MEAS:CURR?", TIMEOUT), (CLEAR, None), (":SYST:ERR?", OK), ("*CLS", None), ("*OPC?", ["1.0E-06", "1"]),
        (":MEAS:CURR?", "2.0E-06"),
    ]) as smu:
        assert smu.measure_current() == pytest.approx(2e-6)


def test_garbled_reply_is_retried_for_idempotent_queries():
    with expected_protocol(Keithley2400, [
        (":READ?", "+1.2#4E-06"), *RESYNC, (":READ?", "+1.234E-06"),
    ]) as smu:
        assert smu.measure_current() == pytest.approx(1.234e-6)


def test_timeout_on_non_idempotent_query_is_not_retried():
    with expected_protocol(KeysightB2900, [
        (":SOUR:VOLT:TRIG 1;:SOUR:PULS:WIDT 0.001;:INIT:TRAN;*OPC?", TIMEOUT), *RESYNC,
    ]) as smu:
        smu._configured.add(None)
        smu._output_on = True
        smu._pulse_shape = True
        with pytest.raises(InstrumentTimeout, match=r"Keysight B2900 at GPIB0::1::INSTR did not answer "
                                                     r"':SOUR:VOLT:TRIG 1;.*INIT:TRAN;\*OPC\?'"):
            smu.pulse(1.0, 1e-3)


def test_write_timeout_resyncs_and_raises_naming_the_command():
    with expected_protocol(Keithley2450, [(":OUTP OFF", WRITE_TIMEOUT), *RESYNC]) as smu:
        with pytest.raises(InstrumentTimeout, match="':OUTP OFF'"):
            smu.output(False)


def test_persistent_timeout_gives_up_after_retries():
    with expected_protocol(Keithley2450, [
        (":MEAS:CURR?", TIMEOUT), *RESYNC, (":MEAS:CURR?", TIMEOUT), *RESYNC,
    ]) as smu:
        with pytest.raises(InstrumentTimeout):
            smu.measure_current()


def test_protocol_helper_fails_on_unexpected_or_unused_pairs():
    with pytest.raises(ProtocolMismatch, match="expected ':OUTP ON', driver sent write ':OUTP OFF'"):
        with expected_protocol(Keithley2450, [(":OUTP ON", None)]) as smu:
            smu.output(False)
    with pytest.raises(ProtocolMismatch, match="never sent: ':OUTP OFF'"):
        with expected_protocol(Keithley2450, [(":OUTP OFF", None), (":OUTP OFF", None)]) as smu:
            smu.output(False)


# ---- context manager ----------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exit_on_exception_switches_off(exc):
    with pytest.raises(exc):
        with expected_protocol(Keithley2450, [
            (":SOUR:VOLT 0;:OUTP OFF", None), (":OUTP?", "0"),
        ]) as smu:
            with smu:
                raise exc()
    assert smu._conn.closed


def test_safe_off_is_best_effort_when_the_instrument_is_gone():
    with expected_protocol(Keithley2450, [
        (":SOUR:VOLT 0;:OUTP OFF", WRITE_TIMEOUT), *RESYNC, (":OUTP?", "0"),
    ]) as smu:
        smu.safe_off()          # logged, never raises


# ---- 2600B ----------------------------------------------------------------------------------
def test_2600_configure_output_measure_pulse():
    with expected_protocol(Keithley2600, [
        (CFG_2600A, None), (ERRCOUNT, "0.00000e+00"),
        ("smua.source.levelv = 0.2", None),
        ("smua.source.output = smua.OUTPUT_ON", None),
        ("print(smua.measure.i())", "2.00000e-06"),
        ("smua.source.levelv = 1.5 delay(0.0002) smua.source.levelv = 0", None),
    ]) as smu:
        smu.configure(1e-4, 6.0, 1e-4, 1.0)
        smu.source_voltage(0.2)
        smu.output(True)
        assert smu.measure_current() == pytest.approx(2e-6)
        smu.pulse(1.5, 200e-6)


def test_2600_error_queue_reads_all_entries_in_one_query():
    drain = "for i = 1, errorqueue.count do local c, m = errorqueue.next() print(c, m) end"
    with expected_protocol(Keithley2600, [
        (CFG_2600A, None), (ERRCOUNT, "2.00000e+00"),
        (drain, ["-2.86000e+02\tTSP Runtime error at line 1: bad", "-2.22000e+02\tParameter too big"]),
    ]) as smu:
        with pytest.raises(BackendError, match="-286 TSP Runtime error at line 1: bad; -222 Parameter too big"):
            smu.configure(1e-4, 6.0, 1e-4, 1.0)


def test_2600_safe_off_both_channels_and_verify():
    with expected_protocol(Keithley2600, [
        ("smua.source.levelv = 0 smua.source.output = smua.OUTPUT_OFF "
         "smub.source.levelv = 0 smub.source.output = smub.OUTPUT_OFF", None),
        ("print(smua.source.output, smub.source.output)", "0.00000e+00\t0.00000e+00"),
    ]) as smu:
        smu.close()
        smu.close()


def test_2600_script_load_policy_and_cell_job():
    pol = WriteVerifyPolicy(width_s=1e-4)
    script = write_verify_script().rstrip("\n")
    args = ("0.2, 3.3, 4, 150, 0.0001, 1.6, 0.8, 0.03, 2.2, 0.8, 0.05, 2.2, 4.0, 5e-07, 2.5, 0.1, 3.5, "
            "1.2, 12, 3e-07")
    with expected_protocol(Keithley2600, [
        (f"loadscript hilwv\n{script}\nendscript\nhilwv.run()", None), (ERRCOUNT, "0.00000e+00"),
        (f"hilwv_policy({args})", None), (ERRCOUNT, "0.00000e+00"),
        ("hilwv_cell(9.5e-06, 1.05e-05)", "1.00123e-05\t1.50000e+01\t0.00000e+00"),
    ]) as smu:
        smu.load_write_verify_script()
        smu.set_write_verify_policy(pol)
        smu._configured.update({"a", "b"})
        smu._outputs.update({"a": True, "b": True})
        r = smu.write_verify_cell(9.5e-6, 10.5e-6)
        assert (r.g_s, r.pulses, r.status) == (pytest.approx(1.00123e-5), 15, 0)
        assert smu._conn.timeout == 5000        # the long job timeout was restored


def test_2600_cell_job_refuses_without_outputs_and_short_policy_widths():
    with expected_protocol(Keithley2600, [
        ("loadscript hilwv\n" + write_verify_script().rstrip("\n") + "\nendscript\nhilwv.run()", None),
        (ERRCOUNT, "0.00000e+00"),
    ]) as smu:
        smu.load_write_verify_script()
        with pytest.raises(ConfigError, match="below the shortest pulse"):
            smu.set_write_verify_policy(WriteVerifyPolicy())          # 50 ns
        with pytest.raises(ConfigError, match="set_write_verify_policy"):
            smu.write_verify_cell(1e-6, 2e-6)


def test_2600_cell_job_timeout_is_not_retried():
    drain = "for i = 1, errorqueue.count do local c, m = errorqueue.next() print(c, m) end"
    with expected_protocol(Keithley2600, [
        ("hilwv_cell(1e-06, 2e-06)", TIMEOUT), (CLEAR, None), (ERRCOUNT, "1.00000e+00"),
        (drain, "-2.86000e+02\tTSP Runtime error: attempt to call global 'hilwv_cell' (a nil value)"),
        ("*CLS", None), ("*OPC?", "1"),
    ]) as smu:
        smu._policy_set = True
        smu._policy = WriteVerifyPolicy(width_s=1e-4)
        smu._configured.update({"a", "b"})
        smu._outputs.update({"a": True, "b": True})
        with pytest.raises(InstrumentTimeout, match=r"did not answer 'hilwv_cell\(1e-06, 2e-06\)'.*"
                                                     r"error queue: -286 TSP Runtime error: attempt to call"):
            smu.write_verify_cell(1e-6, 2e-6)
