"""Typed errors of the hil core. Every message says what was wrong and what to do."""


class HilError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(HilError):
    """A station file, parameter file or option is malformed or inconsistent."""


class SafetyViolation(HilError):
    """An operation would exceed the station's safety limits; nothing was applied."""


class AddressError(HilError):
    """A cell address (PE, row, column) is outside the geometry or malformed."""


class BackendError(HilError):
    """The backend (instrument, board or simulator) reported a failure."""


class InstrumentTimeout(BackendError):
    """An instrument did not answer in time."""


class DataError(HilError):
    """A data or run file is missing, corrupt, or of an unsupported schema."""


class Cancelled(HilError):
    """A long operation was cancelled through its cancel token."""
