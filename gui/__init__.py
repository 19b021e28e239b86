"""Probe-station GUI (PySide6 + pyqtgraph) over the `hil` API; entry point `gui.app.main`."""
from .qtfix import immortalize_singletons as _immortalize_singletons

_immortalize_singletons()   # PySide6 6.12 + Python 3.11 refcount bug, see gui/qtfix.py
