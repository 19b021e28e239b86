"""Station tab: choose the simulated chip or a station file, connect / disconnect, and show
identity, geometry and safety limits."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QFileDialog, QGridLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton,
                               QRadioButton, QSpinBox, QTableWidget, QTableWidgetItem,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from hil.geometry import YAO, WANG, Geometry
from hil.limits import Op
from hil.modules.stability import format_duration

from .. import theme
from ..session import Session
from ..widgets import headline, muted

#: simulated chip geometries offered in the station tab
SIM_GEOMETRIES = {
    "yao": ("Yao 2020 — 8 PEs × 128 × 16", YAO),
    "wang": ("Wang 2019 — 1 PE × 128 × 64", WANG),
    "small": ("Small demo — 2 PEs × 16 × 8", Geometry(2, 16, 8, "small")),
}


class StationPanel(QWidget):
    title = "Station"

    def __init__(self, session: Session, parent=None) -> None:
        super().__init__(parent)
        self.s = session
        self.state = headline("")
        self.sim_radio = QRadioButton("Simulated chip")
        self.file_radio = QRadioButton("Station file")
        grp = QButtonGroup(self)
        grp.addButton(self.sim_radio)
        grp.addButton(self.file_radio)
        self.sim_radio.setChecked(True)
        self.geometry_box = QComboBox()
        for key, (label, _) in SIM_GEOMETRIES.items():
            self.geometry_box.addItem(label, key)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2 ** 31 - 1)
        self.file_edit = QLineEdit()
        self.file_edit.setPlaceholderText("stations/my-station.toml")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.connect_btn = QPushButton("Connect")
        self.connect_btn.setProperty("primary", "true")
        self.connect_btn.clicked.connect(self.connect_station)
        self.disconnect_btn = QPushButton("Disconnect")
        self.disconnect_btn.clicked.connect(self.s.disconnect_station)

        choose = QGroupBox("Station")
        g = QGridLayout(choose)
        g.addWidget(self.sim_radio, 0, 0)
        g.addWidget(QLabel("geometry"), 0, 1, alignment=Qt.AlignRight)
        g.addWidget(self.geometry_box, 0, 2)
        g.addWidget(QLabel("seed"), 0, 3, alignment=Qt.AlignRight)
        g.addWidget(self.seed, 0, 4)
        g.addWidget(self.file_radio, 1, 0)
        g.addWidget(self.file_edit, 1, 1, 1, 3)
        g.addWidget(browse, 1, 4)
        btns = QHBoxLayout()
        btns.addWidget(self.connect_btn)
        btns.addWidget(self.disconnect_btn)
        btns.addStretch(1)
        g.addLayout(btns, 2, 0, 1, 5)
        g.addWidget(muted("A station file (TOML) names the instruments, the channel map and the safety "
                          "limits; backend = \"sim\" files open the simulated chip."), 3, 0, 1, 5)
        g.setColumnStretch(2, 1)

        self.geometry_label = QLabel("")
        self.geometry_label.setStyleSheet("font-size: 11pt;")
        self.limits = QTableWidget(4, 5)
        self.limits.setHorizontalHeaderLabels(["max |V|\n(V)", "max gate\n(V)", "compliance\n(µA)",
                                               "min width\n(ns)", "max width\n(µs)"])
        self.limits.setVerticalHeaderLabels([op.value for op in (Op.READ, Op.SET, Op.RESET, Op.FORM)])
        self.limits.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.limits.setEditTriggers(QTableWidget.NoEditTriggers)
        self.limits.setMinimumHeight(150)
        self.identity = QTreeWidget()
        self.identity.setHeaderLabels(["property", "value"])
        self.identity.header().setSectionResizeMode(0, QHeaderView.ResizeToContents)

        geo = QGroupBox("Geometry and safety limits")
        gl = QVBoxLayout(geo)
        gl.addWidget(self.geometry_label)
        gl.addWidget(self.limits)
        self.chip_label = QLabel("")
        self.chip_label.setWordWrap(True)
        self.chip_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        chip = QGroupBox("Chip state (clock and operation counters from the station)")
        QVBoxLayout(chip).addWidget(self.chip_label)
        ident = QGroupBox("Identity (instruments, firmware, settings)")
        QVBoxLayout(ident).addWidget(self.identity)

        left = QVBoxLayout()
        left.addWidget(self.state)
        left.addWidget(choose)
        left.addWidget(geo)
        left.addWidget(chip)
        left.addStretch(1)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 1)
        lay.addWidget(ident, 1)

        self.s.connection_changed.connect(self.refresh)
        self.s.busy_changed.connect(lambda _: self.refresh())
        self.s.chip.changed.connect(self.refresh)
        self.refresh()

    # ---- choosing -------------------------------------------------------------------
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open station file", self.file_edit.text() or "stations",
                                              "Station files (*.toml)")
        if path:
            self.file_edit.setText(path)
            self.file_radio.setChecked(True)

    def set_choice(self, spec: str, seed: Optional[int] = None, geometry: str = "yao") -> None:
        """Preselect 'sim' (with seed and geometry key) or a station file path."""
        if spec == "sim":
            self.sim_radio.setChecked(True)
            i = self.geometry_box.findData(geometry)
            self.geometry_box.setCurrentIndex(max(i, 0))
            if seed is not None:
                self.seed.setValue(int(seed))
        else:
            self.file_radio.setChecked(True)
            self.file_edit.setText(str(spec))

    def choice(self) -> dict:
        """The current choice as a JSON-able dict (remembered between launches)."""
        if self.sim_radio.isChecked():
            return {"spec": "sim", "seed": self.seed.value(), "geometry": self.geometry_box.currentData()}
        return {"spec": self.file_edit.text().strip()}

    def connect_station(self) -> bool:
        c = self.choice()
        if c["spec"] == "sim":
            label, geom = SIM_GEOMETRIES[c["geometry"]]
            return self.s.connect_station("sim", f"simulated chip ({geom.name}, seed {c['seed']})",
                                          seed=c["seed"], geometry=geom)
        if not c["spec"]:
            self.s.error.emit("No station file", "Type or browse to a station file (.toml), or choose the "
                                                 "simulated chip.")
            return False
        return self.s.connect_station(c["spec"], Path(c["spec"]).name)

    # ---- display --------------------------------------------------------------------
    def refresh(self) -> None:
        s = self.s
        connected = s.connected
        if connected:
            self.state.setText(f"<span style='color:{theme.OK}'>●</span> Connected — {s.station_label}")
        elif s.busy and s.job is not None and s.job.name == "connect":
            self.state.setText(f"<span style='color:{theme.WARN}'>●</span> Connecting…")
        else:
            self.state.setText(f"<span style='color:{theme.MUTED}'>○</span> Not connected")
        self.connect_btn.setEnabled(not s.busy)
        self.disconnect_btn.setEnabled(connected and not s.busy)
        self.identity.clear()
        self.chip_label.setText(chip_summary(s))
        if not connected:
            self.geometry_label.setText("Connect a station to see its geometry and limits.")
            for r in range(4):
                for c in range(5):
                    self.limits.setItem(r, c, QTableWidgetItem(""))
            return
        g = s.geometry
        self.geometry_label.setText(f"{g.n_pe} PE{'s' if g.n_pe > 1 else ''} × {g.rows} rows × {g.cols} "
                                    f"columns = {g.n_cells:,} cells  ({g.name})")
        for r, op in enumerate((Op.READ, Op.SET, Op.RESET, Op.FORM)):
            lim = s.xbar.limits[op]
            vals = (f"{lim.max_v:.2f}", f"{lim.max_v_gate:.2f}", f"{lim.max_compliance_a * 1e6:.0f}",
                    f"{lim.min_width_s * 1e9:.0f}", f"{lim.max_width_s * 1e6:g}")
            for c, v in enumerate(vals):
                it = QTableWidgetItem(v)
                it.setTextAlignment(Qt.AlignCenter)
                self.limits.setItem(r, c, it)
        _fill_tree(self.identity.invisibleRootItem(), s.identity)
        for i in range(self.identity.topLevelItemCount()):
            it = self.identity.topLevelItem(i)
            it.setExpanded(it.childCount() <= 8)


def _fill_tree(parent: QTreeWidgetItem, value, depth: int = 0) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        it = QTreeWidgetItem([str(k), ""])
        parent.addChild(it)
        if isinstance(v, (dict, list)) and v and depth < 4 and len(v) <= 64:
            if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
                it.setText(1, json.dumps(v) if len(v) <= 8 else f"[{len(v)} values]")
            else:
                _fill_tree(it, v, depth + 1)
        else:
            it.setText(1, _short(v))


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= 120 else text[:117] + "…"


def chip_summary(s: Session) -> str:
    """Clock, operation counters, current record and what is programmed where."""
    if not s.connected:
        return "Not connected."
    c = s.chip
    counts = " · ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in c.counters.items()) or \
        "this backend reports no operation counters"
    run = s.run_path.name if s.run_path is not None else "none yet"
    return (f"station clock {format_duration(c.clock_s)} · {counts}\ncurrent record: {run}\n"
            f"{c.describe_regions()}")
