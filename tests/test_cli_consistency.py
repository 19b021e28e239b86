"""CLI consistency (issue 12): help text on every option, `hil read --run` reads the chip kept beside a record."""
import argparse
import json

import numpy as np
import pytest

from hil.cli import build_parser, main


def _options_without_help(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options_without_help(sub, path + [name])
        elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
            yield " ".join(path + [action.option_strings[0] if action.option_strings else action.dest])


def test_every_option_of_every_command_has_help_text():
    assert list(_options_without_help(build_parser(), ["hil"])) == []


def test_read_run_reads_the_chip_kept_beside_the_record(tmp_path, capsys):
    out = tmp_path / "p0.h5"
    assert main(["program", "--station", "sim", "--pe", "0", "--seed", "3", "--pattern", "checker",
                 "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert main(["read", "--run", str(out), "--pe", "0", "--full", "--json"]) == 0
    g_run = np.array(json.loads(capsys.readouterr().out)["g_s"])
    assert main(["read", "--pe", "0", "--seed", "3", "--full", "--json"]) == 0
    g_fresh = np.array(json.loads(capsys.readouterr().out)["g_s"])
    # the programmed chip is a checkerboard of two levels; a fresh chip of the same seed is not
    hi, lo = g_run[0, ::2, ::2], g_run[0, ::2, 1::2]
    assert np.median(hi) > 2 * np.median(lo) or np.median(lo) > 2 * np.median(hi)
    assert not np.allclose(g_run, g_fresh, rtol=0.05)


def test_read_run_refuses_a_record_without_its_chip(tmp_path, capsys):
    out = tmp_path / "p0.h5"
    assert main(["program", "--station", "sim", "--pe", "0", "--seed", "3", "--out", str(out), "--json"]) == 0
    (tmp_path / "p0.h5.chip.npz").unlink()
    capsys.readouterr()
    assert main(["read", "--run", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no chip is kept beside this record" in err
