"""Exact-conversation testing of VISA drivers (in the spirit of pymeasure's expected_protocol).

    with expected_protocol(Keithley2450, [(":OUTP ON", None), (":MEAS:CURR?", "1.0E-06")]) as smu:
        smu._configured.add(None)
        smu.output(True)
        assert smu.measure_current() == 1e-6

Each pair is (message the driver must write, reply): reply None = nothing to read; a str =
one reply line; a list = several reply lines; TIMEOUT = the read times out (VisaIOError
VI_ERROR_TMO); WRITE_TIMEOUT = the write itself times out. A pair (CLEAR, None) expects a
device clear. The test fails on any unexpected message, read, clear, or unused pair.
"""
from __future__ import annotations

from contextlib import contextmanager

from pyvisa import constants, errors

TIMEOUT = object()
WRITE_TIMEOUT = object()
CLEAR = object()


def _name(x) -> str:
    return {id(TIMEOUT): "TIMEOUT", id(WRITE_TIMEOUT): "WRITE_TIMEOUT", id(CLEAR): "CLEAR"}.get(id(x), repr(x))


class ProtocolMismatch(AssertionError):
    pass


class FakeConnection:
    """Stands in for a pyvisa resource; checks every write/read/clear against the script."""

    def __init__(self, pairs) -> None:
        self.pairs = list(pairs)
        self.i = 0
        self.pending: list = []
        self.timeout = 5000
        self.closed = False
        self.log: list = []

    def _next(self, kind: str, value):
        if self.pending:
            raise ProtocolMismatch(f"driver sent {kind} {_name(value)} while replies {self.pending!r} were "
                                   f"still unread (pair #{self.i})")
        if self.i >= len(self.pairs):
            raise ProtocolMismatch(f"unexpected {kind} {_name(value)}: all {len(self.pairs)} pairs were used")
        sent, reply = self.pairs[self.i]
        if sent is not value and sent != value:
            raise ProtocolMismatch(f"pair #{self.i}: expected {_name(sent)}, driver sent {kind} {_name(value)}")
        self.i += 1
        return reply

    def write(self, msg: str) -> int:
        self.log.append(("write", msg))
        reply = self._next("write", msg)
        if reply is WRITE_TIMEOUT:
            raise errors.VisaIOError(constants.StatusCode.error_timeout.value)
        if reply is None:
            return len(msg)
        self.pending = list(reply) if isinstance(reply, (list, tuple)) else [reply]
        return len(msg)

    def read(self) -> str:
        if not self.pending:
            raise ProtocolMismatch(f"driver read a reply but none is due (after pair #{self.i - 1})")
        r = self.pending.pop(0)
        self.log.append(("read", _name(r)))
        if r is TIMEOUT:
            self.pending = []
            raise errors.VisaIOError(constants.StatusCode.error_timeout.value)
        return r

    def clear(self) -> None:
        self.log.append(("clear", None))
        self.pending = []
        self._next("device clear", CLEAR)

    def close(self) -> None:
        self.closed = True

    def check_done(self) -> None:
        if self.pending:
            raise ProtocolMismatch(f"replies {self.pending!r} were never read")
        if self.i != len(self.pairs):
            rest = ", ".join(_name(p[0]) for p in self.pairs[self.i:])
            raise ProtocolMismatch(f"{len(self.pairs) - self.i} expected message(s) never sent: {rest}")


@contextmanager
def expected_protocol(driver_cls, pairs, resource: str = "GPIB0::1::INSTR", **kwargs):
    """A `driver_cls` instance on a FakeConnection scripted by `pairs`; verifies on exit that the
    conversation was exactly `pairs`. The driver is not closed (test close()/safe_off()
    explicitly); identity checking is off unless check_identity=True is passed."""
    kwargs.setdefault("check_identity", False)
    conn = FakeConnection(pairs)
    inst = driver_cls(resource, connection=conn, **kwargs)
    yield inst
    conn.check_done()
