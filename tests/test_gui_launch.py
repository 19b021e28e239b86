"""`hil gui` fails fast with exit 2 and one line instead of hanging or aborting (issue 9 finding 10)."""
from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gui.app as app

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120          # generous: each case takes about a second; the old code hung for good


def _run(args, env_changes: dict, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def _last_line(r) -> str:
    return r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("entry", [["-m", "hil", "gui"], ["-m", "gui"]], ids=["hil gui", "python -m gui"])
def test_missing_station_file_fails_fast_instead_of_hanging(entry, tmp_path):
    r = _run(entry + ["--station", str(tmp_path / "nope.toml"), "--screenshot", str(tmp_path / "shots")],
             {"QT_QPA_PLATFORM": "offscreen"}, tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.toml" in lines[0] and "station" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "shots").exists()


def test_station_that_fails_to_connect_ends_the_screenshot_session(tmp_path):
    """An error while connecting is reported and ends the scripted session (no modal dialog waits)."""
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[station]\nbackend = "sim"\n[sim]\nparams = "{tmp_path / "none.json"}"\n')
    r = _run(["-m", "hil", "gui", "--station", str(bad), "--screenshot", str(tmp_path / "shots")],
             {"QT_QPA_PLATFORM": "offscreen"}, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "none.json" in _last_line(r) and "error" in _last_line(r)
    assert "Traceback" not in r.stderr


def test_no_display_is_one_line_not_an_abort(tmp_path):
    r = _run(["-m", "hil", "gui"], {}, tmp_path)        # no DISPLAY, WAYLAND_DISPLAY or QT_QPA_PLATFORM
    assert r.returncode == 2, (r.returncode, r.stderr)
    line, = r.stderr.strip().splitlines()
    assert "no display" in line and "QT_QPA_PLATFORM=offscreen" in line


def test_missing_xcb_library_is_named_with_its_package(tmp_path):
    """End to end with a detector that finds every library but libxcb-cursor: exit 2, no Qt abort."""
    code = ("import sys, gui.app as a\n"
            "a._find_library = lambda name: None if name == 'xcb-cursor' else f'lib{name}.so'\n"
            "sys.exit(a.main(station='sim'))\n")
    r = _run(["-c", code], {"DISPLAY": ":0"}, tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    line, = r.stderr.strip().splitlines()
    assert "libxcb-cursor0" in line and "apt install" in line and "QT_QPA_PLATFORM=offscreen" in line


@pytest.fixture
def x11(monkeypatch):
    """An X11 session as Qt would see it: DISPLAY set, no platform chosen."""
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr(app, "_x_display_reachable", lambda: True)


def test_detector_lists_every_missing_xcb_library(x11, monkeypatch):
    gone = {"xcb-icccm", "xcb-keysyms", "xkbcommon-x11"}
    monkeypatch.setattr(app, "_find_library", lambda name: None if name in gone else f"lib{name}.so")
    msg = app.qt_problem()
    for pkg in ("libxcb-icccm4", "libxcb-keysyms1", "libxkbcommon-x11-0"):
        assert pkg in msg
    assert "\n" not in msg


def test_detector_is_quiet_when_everything_is_there(x11, monkeypatch):
    monkeypatch.setattr(app, "_find_library", lambda name: f"lib{name}.so")
    assert app.qt_problem() is None
    monkeypatch.setattr(app, "_find_library", lambda name: None)     # the lookup cannot work here: let Qt try
    assert app.qt_problem() is None


def test_unreachable_display_and_platform_mismatches(x11, monkeypatch):
    monkeypatch.setattr(app, "_find_library", lambda name: f"lib{name}.so")
    monkeypatch.setattr(app, "_x_display_reachable", lambda: False)
    assert "cannot connect to the X display" in app.qt_problem()
    monkeypatch.setenv("QT_QPA_PLATFORM", "wayland")
    assert "WAYLAND_DISPLAY is not set" in app.qt_problem()
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert app.qt_problem() is None


def test_qt_import_failure_names_the_library_package(x11, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("PySide6.QtGui"):
            raise ImportError("libEGL.so.1: cannot open shared object file: No such file or directory")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    msg = app.qt_problem()
    assert "libEGL.so.1" in msg and "apt install libegl1" in msg


@pytest.mark.parametrize("size, what", [("1280x", "WIDTHxHEIGHT"), ("640x480", "outside 1280x800")])
def test_bad_size_is_one_line_exit_2(size, what, tmp_path):
    r = _run(["-m", "hil", "gui", "--size", size, "--screenshot", str(tmp_path / "shots")],
             {"QT_QPA_PLATFORM": "offscreen"}, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert _last_line(r).startswith("hil gui: error: --size") and what in _last_line(r)
    assert not (tmp_path / "shots").exists()


def test_parse_size():
    assert app.parse_size("1920x1080") == (1920, 1080) and app.parse_size(" 1280 × 800 ") == (1280, 800)
