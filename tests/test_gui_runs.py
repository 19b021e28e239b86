"""Runs tab (issue 12 item 4): a folder of records as a sortable table with damaged files flagged,
the detail view (images for 2-D+ data such as 8×1×3×3 kernels, lines only for series), exports
of any dataset or table to CSV/NPY and of the preview to PNG (300 dpi) and SVG with one-line
errors, and the record of the shipped headless sequence opened with its steps."""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from hil.cli import main
from test_runs_index import KERNELS, _records

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "sequences" / "form-program-endurance-retention.toml"
FRESH = ROOT / "sequences" / "fresh-chip-params.toml"


@pytest.fixture
def runs(qtbot, qapp):
    """The Runs tab on its own, with the session's error dialogs collected in `runs.errors`."""
    from gui import theme
    from gui.panels.runs import RunsPanel
    from gui.session import Session
    theme.apply(qapp)
    s = Session()
    panel = RunsPanel(s)
    panel.errors = []
    s.error.connect(lambda title, text: panel.errors.append((title, text)))
    qtbot.addWidget(panel)
    panel.resize(1200, 700)
    return panel


def test_folder_table_lists_records_and_flags_damaged_files(runs, tmp_path):
    _records(tmp_path)
    assert runs.list_folder(tmp_path)
    rows = {r[-1]: r for r in runs.row_texts()}
    assert set(rows) == {"a-module.h5", "b-cut.h5", "c-garbage.h5", "d-truncated.h5", "e-other.h5"}
    assert rows["a-module.h5"][1:5] == ["module", "sim-small (simulated)", "complete", "switching 94% of cells"]
    assert rows["c-garbage.h5"][3] == "corrupt" and rows["c-garbage.h5"][4]          # the reason, in its place
    assert rows["b-cut.h5"][3] == "interrupted" and "hil runs recover" in rows["b-cut.h5"][4]
    assert "5 record(s)" in runs.folder_note.text() and "4 damaged or cut off" in runs.folder_note.text()
    runs.table.sortItems(1, Qt.AscendingOrder)                       # sortable by any column
    assert [r[1] for r in runs.row_texts()] == ["", "", "", "", "module"]
    row = [r[-1] for r in runs.row_texts()].index("a-module.h5")
    runs.table.selectRow(row)                                        # choosing a row opens it
    assert runs.path == tmp_path / "a-module.h5" and "module run, complete" in runs.header.text()
    garbage = [r[-1] for r in runs.row_texts()].index("c-garbage.h5")
    assert not runs.open_row(garbage)
    assert runs.errors[-1][0] == "Run record problem" and "not a readable HDF5 file" in runs.errors[-1][1]
    assert not runs.list_folder(tmp_path / "nope") and "no such folder" in runs.errors[-1][1]


def test_kernels_are_drawn_as_images_and_series_as_lines(runs, tmp_path):
    good = _records(tmp_path)
    assert runs.open_run(good)
    assert runs.select_item("dataset", "model/c1")
    assert runs._img is not None and np.array_equal(runs.preview_data, KERNELS)
    img = runs._img.image
    assert img.shape == (3 * 3 + 2 * 2, 3 * 3 + 2 * 2)                # 8 kernels of 3x3 in a 3x3 grid
    np.testing.assert_array_equal(img[:3, :3], KERNELS[0, 0])
    assert np.isnan(img[3:5]).all()                                   # gaps between the tiles
    assert not runs.preview.getPlotItem().listDataItems()            # no line through the kernels
    assert runs.select_item("table", "modules/pulse-train/series")
    runs.column_box.setCurrentText("g_s")
    assert runs._img is None and len(runs.preview.getPlotItem().listDataItems()) == 1


def test_exports_round_trip_and_fail_in_one_line(runs, tmp_path):
    good = _records(tmp_path)
    assert runs.open_run(good)
    assert runs.select_item("dataset", "model/c1") and runs.export_data_btn.isEnabled()
    out = runs.export_data(tmp_path / "out" / "c1.csv")
    back = np.loadtxt(out, delimiter=",", dtype=np.float32).reshape(KERNELS.shape)
    assert np.array_equal(back, KERNELS)
    assert np.array_equal(np.load(runs.export_data(tmp_path / "out" / "c1.npy")), KERNELS)
    assert runs.select_item("table", "modules/pulse-train/series")
    table = np.load(runs.export_data(tmp_path / "out" / "series.npy"))
    assert table.dtype.names == ("pulse", "g_s") and np.array_equal(table["pulse"], np.arange(5))
    assert runs.export_data(tmp_path / "out" / "series.txt") is None
    assert runs.errors[-1] == ("Export failed", f"export to {tmp_path / 'out' / 'series.txt'}: the file must end "
                                                f"in .csv or .npy")
    assert runs.select_item("dataset", "model/c1")
    png = runs.export_figure(tmp_path / "fig" / "c1.png")
    image = QImage(str(png))
    assert round(image.dotsPerMeterX() * 0.0254) == 300 and image.width() >= 3 * runs.preview.width()
    svg = runs.export_figure(tmp_path / "fig" / "c1.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<image" in svg
    assert runs.export_figure(tmp_path / "fig" / "c1.jpg") is None and "must end in .png or .svg" in runs.errors[-1][1]
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["c1.png", "c1.svg"]


def test_the_shipped_sequence_record_opens_with_its_steps(runs, tmp_path, capsys):
    out = tmp_path / "seq" / "fper.h5"
    assert main(["sequence", "run", str(SHIPPED), "--params", str(FRESH), "--seed", "7", "--out", str(out)]) == 0
    capsys.readouterr()
    assert runs.list_folder(out.parent)
    assert [r[1:5] for r in runs.row_texts()] == [["sequence", "sim", "complete", "5 steps"]]
    assert runs.open_row(0) and "sequence run, complete" in runs.header.text()
    top = {runs.tree.topLevelItem(i).text(0): runs.tree.topLevelItem(i) for i in range(runs.tree.topLevelItemCount())}
    sec = top["sequence steps"]
    steps = [(sec.child(k).text(0), sec.child(k).text(1)) for k in range(sec.childCount())]
    assert [s for s, _ in steps] == ["1. forming", "2. program 8 levels", "3. endurance 1,000 cycles",
                                     "4. program again for retention", "5. retention 1 day"]
    assert all(" · done" in d for _, d in steps) and sec.isExpanded()
    assert steps[0][1].startswith("module · done · formed ") and steps[1][1].startswith("program · done · in band")
    assert steps[2][1] == "module · done · switching 100% of cells" and "over 1 d" in steps[4][1]
    assert runs._img is not None                                     # a g_s result (reads x cells) as an image
    assert runs.preview_data.shape[1] == 16
    assert runs.errors == []
