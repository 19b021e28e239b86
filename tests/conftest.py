"""Shared fixtures and the hardware opt-in of DESIGN §9.

Tests marked `@pytest.mark.hardware` need a station and run only when one is named:

    pytest --station stations/sim-instruments.toml      # the emulated instruments
    pytest --station stations/my-lab.toml -m hardware    # the real probe station, these tests only

Without `--station` they are skipped; with it they receive the station file as `station_file`.
The GUI fixtures import Qt only when a test asks for them.
"""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest

from hil.geometry import Geometry
from hil.registry import open_station

#: a small simulated chip: quick to program in the GUI tests
SMALL = Geometry(2, 16, 8, "small")


def pytest_addoption(parser) -> None:
    parser.addoption("--station", metavar="FILE", default=None,
                     help="station file (TOML) for the tests marked 'hardware'; without it they are skipped")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "hardware: needs a station; runs only with --station FILE")
    station = config.getoption("--station")
    if station is not None and not Path(station).is_file():
        raise pytest.UsageError(f"--station {station}: no such station file")


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("--station") is not None:
        return
    skip = pytest.mark.skip(reason="needs a station: pytest --station FILE")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def station_file(request) -> Path:
    """The station file given with --station (tests using it are marked `hardware`)."""
    return Path(request.config.getoption("--station")).resolve()


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    """A fresh folder for run records."""
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture
def small_station():
    """A simulated chip of SMALL geometry (seed 0), closed after the test."""
    with open_station("sim", seed=0, geometry=SMALL) as xbar:
        yield xbar


# ---- GUI ---------------------------------------------------------------------------------------
@pytest.fixture
def errors(monkeypatch) -> list:
    """Every error dialog is captured as (title, text) instead of shown."""
    from PySide6.QtWidgets import QMessageBox

    seen = []
    monkeypatch.setattr(QMessageBox, "critical", staticmethod(lambda parent, title, text, *a: seen.append((title, text))))
    return seen


@pytest.fixture
def settings(tmp_path):
    """GUI settings in a file of the test's own (never the user's)."""
    from PySide6.QtCore import QSettings

    return QSettings(str(tmp_path / "gui.ini"), QSettings.IniFormat)


@pytest.fixture
def make_window(qtbot, qapp, settings, errors, runs_dir):
    """Factory: a shown MainWindow connected to a simulated station (`seed`, `geometry` name),
    every run folder pointing at `runs_dir`, idle. Windows close with the test."""
    from gui import theme
    from gui.mainwindow import MainWindow

    def make(seed: int, geometry: str, timeout_ms: int = 10_000):
        theme.apply(qapp)
        w = MainWindow(settings=settings)
        qtbot.addWidget(w)
        w.show()
        for panel in w.panels.values():
            if hasattr(panel, "folder"):
                panel.folder.setText(str(runs_dir))
        w.panels["cellops"].runs_dir = runs_dir
        st = w.panels["station"]
        st.set_choice("sim", seed, geometry)
        assert st.connect_station()
        qtbot.waitUntil(lambda: w.s.connected and not w.s.busy, timeout=timeout_ms)
        return w

    return make
