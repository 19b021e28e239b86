"""Per-operation safety limits, checked before any backend is called."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping, Optional

import numpy as np

from .errors import ConfigError, SafetyViolation


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
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise ConfigError(f"limit {f.name} must be a positive finite number, got {v!r}")
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
    """Limits for READ, SET, RESET and FORM."""

    per_op: Mapping[Op, OpLimits] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    def __getitem__(self, op) -> OpLimits:
        return self.per_op[Op.parse(op)]

    def to_dict(self) -> dict:
        return {op.value: asdict(lim) for op, lim in self.per_op.items()}

    @classmethod
    def from_dict(cls, d: Optional[Mapping]) -> "SafetyLimits":
        """Build limits from a mapping like the station file's [limits.SET] tables.
        Unspecified operations and keys keep the defaults."""
        per = dict(DEFAULT_LIMITS)
        for key, table in (d or {}).items():
            op = Op.parse(key)
            if not isinstance(table, Mapping):
                raise ConfigError(f"limits.{key} must be a table of values")
            known = {f.name for f in fields(OpLimits)}
            unknown = set(table) - known
            if unknown:
                raise ConfigError(f"limits.{key}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
            try:
                per[op] = replace(per[op], **{k: float(v) for k, v in table.items()})
            except (TypeError, ValueError) as e:
                raise ConfigError(f"limits.{key}: values must be numbers ({e})") from None
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


def _at(where, i: int) -> str:
    if where is None:
        return ""
    try:
        return f" at {where(i)}"
    except Exception:  # a failed description must never hide the violation itself
        return ""
