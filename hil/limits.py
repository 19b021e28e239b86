"""Per-operation safety limits, checked before any backend is called."""
from __future__ import annotations

import enum
import types
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping, Optional

import numpy as np

from hil.errors import ConfigError, SafetyViolation
from hil.schema import MAX_DEPTH, Anything, Number, SchemaError, check_depth, did_you_mean, show


class Op(str, enum.Enum):
    """Cell operations. SET: positive BL pulse, gate sets the compliance. RESET: positive
    SL pulse (reverse polarity) with a high gate. FORM: one-time high-voltage SET. READ: 0.2 V."""

    READ = "READ"
    SET = "SET"
    RESET = "RESET"
    FORM = "FORM"

    @classmethod
    def parse(cls, value) -> "Op":
        if isinstance(value, Op):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            raise ConfigError(f"unknown operation {value!r}; use one of {[o.value for o in cls]}") from None


# Physically sensible bounds of the limit values themselves. A 1T1R crossbar is programmed
# with a few volts, a gate below ~6 V, currents below a milliampere and pulses of ns..ms; SMUs
# could source far more, so a value beyond these is a typo (V for mV, A for uA, s for ns), and
# a station file with it is refused rather than trusted.
MAX_LIMIT_V = 20.0             # V, |V| on the bit or source line
MAX_LIMIT_V_GATE = 20.0        # V, word line (gate)
MAX_LIMIT_COMPLIANCE_A = 0.1   # A
MAX_LIMIT_WIDTH_S = 10.0       # s, longest pulse (or read) width
MIN_LIMIT_WIDTH_S = 1e-12      # s, below any pulse generator

_BOUNDS = {"max_v": (MAX_LIMIT_V, "V"), "max_v_gate": (MAX_LIMIT_V_GATE, "V"),
           "max_compliance_a": (MAX_LIMIT_COMPLIANCE_A, "A"), "min_width_s": (MAX_LIMIT_WIDTH_S, "s"),
           "max_width_s": (MAX_LIMIT_WIDTH_S, "s")}
#: each value of a [limits.OP] table
LIMIT_VALUE = {k: Number(MIN_LIMIT_WIDTH_S if k.endswith("width_s") else 0.0, hi, gt=True, unit=u,
                         describe="a positive finite number") for k, (hi, u) in _BOUNDS.items()}


_POSITIVE = Number(0.0, gt=True, describe="a positive finite number")


def _limit_value(name: str, v, key: str) -> float:
    try:
        return LIMIT_VALUE[name].check(v, f"limit {name}")
    except SchemaError as e:
        raise SchemaError("", f"{e} ({key})") from None


OP_CODES = {Op.READ: 0, Op.SET: 1, Op.RESET: 2, Op.FORM: 3}
OPS_BY_CODE = {v: k for k, v in OP_CODES.items()}


@dataclass(frozen=True)
class OpLimits:
    """Limits of one operation. Voltages in volts, current in amperes, widths in seconds."""

    max_v: float
    max_v_gate: float
    max_compliance_a: float
    min_width_s: float
    max_width_s: float

    def __post_init__(self) -> None:
        # positive and finite here; the physical bounds apply to station files (from_dict), since
        # emulators build deliberately wide limits of their own
        for f in fields(self):
            try:
                _POSITIVE.check(getattr(self, f.name), f"limit {f.name}")
            except SchemaError as e:
                raise ConfigError(str(e)) from None
        if self.min_width_s > self.max_width_s:
            raise ConfigError(f"min_width_s {self.min_width_s} exceeds max_width_s {self.max_width_s}")


DEFAULT_LIMITS = {
    Op.READ: OpLimits(max_v=0.5, max_v_gate=5.5, max_compliance_a=1e-3, min_width_s=10e-9, max_width_s=1.0),
    Op.SET: OpLimits(max_v=3.0, max_v_gate=3.0, max_compliance_a=200e-6, min_width_s=10e-9, max_width_s=10e-3),
    Op.RESET: OpLimits(max_v=3.0, max_v_gate=5.5, max_compliance_a=500e-6, min_width_s=10e-9, max_width_s=10e-3),
    Op.FORM: OpLimits(max_v=4.5, max_v_gate=3.0, max_compliance_a=200e-6, min_width_s=10e-9, max_width_s=10e-3),
}


@dataclass(frozen=True)
class SafetyLimits:
    """Limits for READ, SET, RESET and FORM; immutable (`per_op` is a read-only mapping)."""

    per_op: Mapping[Op, OpLimits] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    def __post_init__(self) -> None:
        per = {Op.parse(k): v for k, v in dict(self.per_op).items()}
        for op, lim in per.items():
            if not isinstance(lim, OpLimits):
                raise ConfigError(f"limits.{op.value} must be OpLimits, got {type(lim).__name__}")
        object.__setattr__(self, "per_op", types.MappingProxyType(per))

    def __reduce__(self):
        return (SafetyLimits, (dict(self.per_op),))

    def __getitem__(self, op) -> OpLimits:
        return self.per_op[Op.parse(op)]

    def to_dict(self) -> dict:
        return {op.value: asdict(lim) for op, lim in self.per_op.items()}

    @classmethod
    def from_dict(cls, d: Optional[Mapping], key: str = "limits") -> "SafetyLimits":
        """Build limits from a mapping like the station file's [limits.SET] tables.
        Unspecified operations and keys keep the defaults. Raises SchemaError naming the key."""
        d = {} if d is None else d
        check_depth(d, MAX_DEPTH, key)
        if not isinstance(d, Mapping):
            raise SchemaError(key, f"must be a table ([{key}.SET] ...), got {show(d)}")
        names = [o.value for o in Op]
        per = dict(DEFAULT_LIMITS)
        for name, table in d.items():
            if str(name).upper() not in names:
                raise SchemaError("", f"unknown operation {name!r} ({key}.{name}"
                                      f"{did_you_mean(str(name).upper(), names)}); use one of {names}")
            op, tkey = Op(str(name).upper()), f"{key}.{name}"
            if not isinstance(table, Mapping):
                raise SchemaError(tkey, f"must be a table of values ([{tkey}]), got {show(table)}")
            unknown = sorted(set(table) - set(_BOUNDS))
            if unknown:
                raise SchemaError("", f"{tkey}: unknown key(s) {unknown}{did_you_mean(unknown[0], _BOUNDS)}; "
                                      f"known: {sorted(_BOUNDS)}")
            new = {k: _limit_value(k, v, f"{tkey}.{k}") for k, v in table.items()}
            both = {**asdict(per[op]), **new}
            if both["min_width_s"] > both["max_width_s"]:
                raise SchemaError(tkey, f"min_width_s = {both['min_width_s']:g} s exceeds max_width_s = "
                                        f"{both['max_width_s']:g} s")
            per[op] = replace(per[op], **new)
        return cls(per)

    def check(self, op, v, v_gate, width, compliance_a=None, where=None) -> None:
        """Raise SafetyViolation if any value of a (vectorized) operation is outside the limits.

        `where` optionally maps the index of an offending value to a cell description."""
        op = Op.parse(op)
        lim = self.per_op[op]
        checks = [("|V|", v, lim.max_v, "V", True), ("gate voltage", v_gate, lim.max_v_gate, "V", True)]
        if compliance_a is not None:
            checks.append(("compliance", compliance_a, lim.max_compliance_a, "A", True))
        for name, values, bound, unit, absolute in checks:
            a = np.asarray(values, dtype=float)
            if not np.all(np.isfinite(a)):
                i = int(np.argmax(~np.isfinite(a.ravel())))
                raise SafetyViolation(f"{op.value} rejected: {name} is not a finite number "
                                      f"(value #{i}{_at(where, i)}); nothing was applied")
            mag = np.abs(a) if absolute else a
            if np.any(mag > bound):
                i = int(np.argmax(mag.ravel() > bound))
                raise SafetyViolation(
                    f"{op.value} rejected: {name} {a.ravel()[i]:.4g} {unit} exceeds the limit "
                    f"{bound:.4g} {unit}{_at(where, i)}; nothing was applied")
        w = np.asarray(width, dtype=float)
        if not np.all(np.isfinite(w)):
            raise SafetyViolation(f"{op.value} rejected: pulse width is not a finite number; nothing was applied")
        bad = (w < lim.min_width_s * (1 - 1e-9)) | (w > lim.max_width_s * (1 + 1e-9))
        if np.any(bad):
            i = int(np.argmax(bad.ravel()))
            raise SafetyViolation(
                f"{op.value} rejected: width {w.ravel()[i]:.4g} s outside {lim.min_width_s:.3g}.."
                f"{lim.max_width_s:.3g} s{_at(where, i)}; nothing was applied")


class _LimitsSpec(Anything):
    """[limits] in a station schema: checked by SafetyLimits.from_dict."""

    def check(self, v, key):
        SafetyLimits.from_dict(v, key)
        return v


#: the [limits] table of station files
LIMITS_SCHEMA = _LimitsSpec()


def _at(where, i: int) -> str:
    if where is None:
        return ""
    try:
        return f" at {where(i)}"
    except Exception:  # a failed description must never hide the violation itself
        return ""
