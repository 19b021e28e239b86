"""Small wording helpers for the methods paragraphs generated from a run's configs."""
from __future__ import annotations

from typing import Sequence

_UNITS = ((30 * 86400.0, "month"), (86400.0, "day"), (3600.0, "h"), (60.0, "min"), (1.0, "s"))


def duration(seconds: float) -> str:
    """'10 min', '2 h', '1 day', '30 days' (the largest unit that divides it, else seconds)."""
    s = float(seconds)
    for unit_s, name in _UNITS[1:]:
        if s >= unit_s and abs(s / unit_s - round(s / unit_s)) < 1e-9:
            k = int(round(s / unit_s))
            return f"{k} {name}{'s' if name == 'day' and k != 1 else ''}"
    return f"{s:g} s"


def count(n: int, noun: str) -> str:
    """'6,000 images', '1 epoch'."""
    return f"{int(n):,} {noun}{'' if int(n) == 1 else 's'}"


def listing(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
