"""The GUI's Sweeps tab on a small finished sweep folder, then live: a point added while the
folder is open shows on the next refresh."""
from __future__ import annotations

import pytest

from hil.sweep import SweepTable, load_spec
from tests.test_gui_lab import hint
from tests.test_sweep import finished_folder


@pytest.fixture
def panel(qtbot, qapp, settings, errors):
    from gui.mainwindow import MainWindow
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    return w.panels["sweeps"]


def test_sweeps_tab_shows_table_and_figure_and_refreshes_live(panel, tmp_path):
    out = finished_folder(tmp_path, seeds=(0, 1))
    assert hint(panel.plot) == "Open a sweep folder"                # not empty 0–1 axes
    assert panel.open_folder(out)
    assert panel.table.rowCount() == 8                      # 2 x 2 axis values x 2 seeds
    headers = [panel.table.horizontalHeaderItem(i).text() for i in range(panel.table.columnCount())]
    assert {"seed", "in_band_fraction", "config.program.max_pulses"} <= set(headers)
    assert [panel.axis_box.itemText(i) for i in range(panel.axis_box.count())] == \
        ["config.program.max_pulses", "device.read_noise.rel"]
    panel.figure_box.setCurrentText("in_band_fraction")
    panel.axis_box.setCurrentText("config.program.max_pulses")
    curve = panel.plot.getPlotItem().listDataItems()[-1]
    x, y = curve.getData()
    assert list(x) == [5, 40] and y[0] < y[1]               # mean over seeds and read noise per pulse budget
    assert hint(panel.plot) == ""
    assert "8 of 8 points" in panel.status.text()

    # the sweep grows (another seed) while the tab watches: the next timer tick shows it
    spec = load_spec(tmp_path / "spec.toml")
    table = SweepTable(out)
    p = spec.points()[0]
    table.add({"point_id": "f" * 16, "seed": 7, **p.coords, "in_band_fraction": 0.5, "mean_pulses": 1.0,
               "status": "ok", "error": "", "wall_s": 0.1, "worker": "w", "version": "0"})
    panel.refresh()
    assert panel.table.rowCount() == 9


def test_a_folder_without_a_sweep_is_refused_in_the_status_line(panel, tmp_path):
    assert not panel.open_folder(tmp_path)
    assert "not a sweep folder" in panel.status.text()
