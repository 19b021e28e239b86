"""A settings form built from a typed config (hil.config.Config): one field per dataclass field,
a combo box for choices, a check box for true/false, a text field for numbers (SI units, so
100e-9 is 100 ns; an optional value left empty keeps its default). Any lab module, plugins
included, gets its form from its `config_type`."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLineEdit, QWidget

from hil.errors import ConfigError

from .. import theme

#: unit shown beside a field, by the end of its name (SI throughout)
UNITS = (("_s", "s"), ("_a", "A"), ("_ohm", "Ω"))


def unit_of(name: str) -> str:
    for suffix, unit in UNITS:
        if name.endswith(suffix):
            return unit
    return "V" if name.startswith("v_") or name == "v" else ""


def _base_type(t: Any) -> tuple[Any, bool]:
    """(type without Optional, optional?)."""
    if typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0], True
    return t, False


class ConfigForm(QWidget):
    """Fields of `config_type`; `values()` the settings as typed, `changed` on every edit."""

    changed = Signal()

    def __init__(self, config_type: type, parent=None) -> None:
        super().__init__(parent)
        self.config_type = config_type
        self.widgets: dict[str, QWidget] = {}
        self._types: dict[str, tuple[Any, bool]] = {}
        hints = typing.get_type_hints(config_type)
        self.setStyleSheet(f'QLineEdit[invalid="true"], QComboBox[invalid="true"] {{ border: 1px solid {theme.BAD}; }}')
        lay = QFormLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for f in dataclasses.fields(config_type):
            t, optional = _base_type(hints[f.name])
            self._types[f.name] = (t, optional)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f.metadata.get("choices")
            if choices:
                w = QComboBox()
                w.addItems([str(c) for c in choices])
                w.currentIndexChanged.connect(self.changed)
            elif t is bool:
                w = QCheckBox()
                w.toggled.connect(self.changed)
            else:
                w = QLineEdit()
                w.textChanged.connect(self.changed)
                if optional:
                    w.setPlaceholderText("default")
            w.setToolTip(self._tip(f))
            self.widgets[f.name] = w
            self._set(f.name, default)
            unit = unit_of(f.name)
            lay.addRow(f"{f.name}" + (f" ({unit})" if unit else ""), w)

    @staticmethod
    def _tip(f: dataclasses.Field) -> str:
        m = f.metadata
        if m.get("choices"):
            return f"{f.name}: one of {', '.join(map(str, m['choices']))}"
        lo, hi = m.get("lo"), m.get("hi")
        if lo is None and hi is None:
            return f.name
        return f"{f.name}: {'(' if m.get('lo_open') else '['}{lo if lo is not None else '-inf'}, " \
               f"{hi if hi is not None else 'inf'}]"

    def _set(self, name: str, value: Any) -> None:
        w = self.widgets[name]
        if isinstance(w, QComboBox):
            w.setCurrentText(str(value))
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif value is None:
            w.setText("")
        elif isinstance(value, (tuple, list)):
            w.setText(", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
        else:
            w.setText(f"{value:g}" if isinstance(value, float) else str(value))

    def set_values(self, values: dict) -> None:
        """Show `values` (a config's `to_dict()` or part of it)."""
        for k, v in values.items():
            if k in self.widgets:
                self._set(k, v)

    def values(self) -> dict:
        """The settings as typed (numbers parsed); ConfigError naming a field that is not a number."""
        out = {}
        for name, w in self.widgets.items():
            t, optional = self._types[name]
            if isinstance(w, QCheckBox):
                out[name] = w.isChecked()
                continue
            text = w.currentText() if isinstance(w, QComboBox) else w.text().strip()
            if optional and not text:
                out[name] = None
            elif typing.get_origin(t) is tuple:
                item = typing.get_args(t)[0]
                out[name] = [_parse(name, x.strip(), item) for x in text.split(",") if x.strip()]
            else:
                out[name] = _parse(name, text, t)
        return out

    def mark(self, bad: str) -> None:
        """Outline the field `bad` (a field name, or '' for none) as refused."""
        for name, w in self.widgets.items():
            flag = "true" if name == bad else "false"
            if w.property("invalid") != flag:
                w.setProperty("invalid", flag)
                w.style().unpolish(w)
                w.style().polish(w)


def _parse(name: str, text: str, t: Any) -> Any:
    if t is int or t is float:
        try:
            v = float(text)
            return int(v) if t is int and v.is_integer() else v
        except ValueError:
            raise ConfigError(f"{name}: {text!r} is not a number") from None
    return text
