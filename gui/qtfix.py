"""Guard against a reference-count bug of PySide6 6.12 on Python 3.11.

There, every Python-side `Signal.emit()` drops one reference to `True` and every call of a
Python slot from a C++ signal drops one reference to `None`; after a few thousand signals
the interpreter aborts ("Fatal Python error: bool_dealloc" / "none_dealloc"). These
singletons are never freed anyway, so giving them a huge reference count (what Python 3.12
does by making them immortal) removes the crash without other effects. Nothing is done on
Python >= 3.12, where they are already immortal.
"""
from __future__ import annotations

import ctypes
import sys

_EXTRA_REFS = 1 << 40
_applied = False


def immortalize_singletons() -> bool:
    """Raise the reference counts of None, True and False once. True if applied now."""
    global _applied
    if _applied or sys.version_info >= (3, 12):
        return False
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += _EXTRA_REFS
    _applied = True
    return True
