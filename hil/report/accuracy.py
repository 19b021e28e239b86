"""Accuracies with their Wilson 95 % intervals: the `{"value", "lo", "hi", "n"}` entries of a
results JSON, the text of a table cell, error bars, and comparisons that call a difference only
when the intervals do not overlap (`hil.stats.differs`, conservative for two figures measured on
the same images)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hil.stats import Interval, accuracy_interval, differs

WITHIN = "within the interval"


def interval(acc: float, n: int) -> Interval:
    """The Wilson interval of an accuracy (fraction) measured on `n` samples."""
    return accuracy_interval(float(acc), int(n))


def fmt(iv: Interval) -> str:
    """'96.40% [94.4, 97.7]': the accuracy and its 95 % interval in points."""
    if iv.n == 0:
        return "—"
    return f"{100 * iv.value:.2f}% [{100 * iv.lo:.1f}, {100 * iv.hi:.1f}]"


def add_intervals(res: dict, counts: dict) -> None:
    """Put `<key>_ci` beside every accuracy `res[key]` (a fraction or a list of them) measured on
    `counts[key]` samples (an int, or one per list item)."""
    for key, n in counts.items():
        v = res[key]
        if isinstance(v, (list, tuple)):
            ns = n if isinstance(n, (list, tuple)) else [n] * len(v)
            res[f"{key}_ci"] = [interval(a, m).as_dict() for a, m in zip(v, ns)]
        else:
            res[f"{key}_ci"] = interval(v, n).as_dict()


def as_interval(d: dict) -> Interval:
    """An Interval back from its `{"value", "lo", "hi", "n"}` dict."""
    return Interval(float(d["value"]), float(d["lo"]), float(d["hi"]), int(d["n"]))


def compare(name_a: str, a: Interval, name_b: str, b: Interval) -> str:
    """One sentence: the difference a − b, called out only when the intervals say so."""
    d = 100 * (a.value - b.value)
    head = f"{name_a} {fmt(a)} against {name_b} {fmt(b)}: "
    if differs(a, b):
        return head + f"{'higher' if d > 0 else 'lower'} by {abs(d):.1f} points (the 95% intervals do not overlap)"
    return head + f"{d:+.1f} points, {WITHIN}"


def verdict(a: Interval, b: Interval) -> str:
    """'+1.2 points' when the intervals separate a from b, else 'within the interval'."""
    return f"{100 * (a.value - b.value):+.1f} points" if differs(a, b) else WITHIN


def yerr(ivs: Sequence[Interval]) -> np.ndarray:
    """Error bars (2, n) in percent points for `matplotlib`'s `yerr`."""
    return np.array([[100 * (iv.value - iv.lo) for iv in ivs], [100 * (iv.hi - iv.value) for iv in ivs]])
