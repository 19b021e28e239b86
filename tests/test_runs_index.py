"""Run index and exports (issue 12 item 4): a folder of records listed with date, kind, station,
status and key figure, damaged and cut-off files flagged; any dataset or table to CSV or NPY and
back; `hil runs list|export` with one-line errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hil.cli import main
from hil.errors import Cancelled, ConfigError, DataError
from hil.runstore.export import export_item, read_item
from hil.runstore.index import CORRUPT, INTERRUPTED, index_folder, key_figure
from hil.runstore.lifecycle import run_record

KERNELS = np.arange(72, dtype=np.float32).reshape(8, 1, 3, 3) / 7


def _records(folder):
    """A complete module record, a stopped one whose .h5 was lost (journal only), random bytes,
    a truncated copy and an HDF5 file of someone else's."""
    good = folder / "a-module.h5"
    with run_record(good, "module", station={"label": "sim-small", "describe": {"backend": "simulated"}}) as w:
        w.put("model/c1", KERNELS)
        w.append("modules/pulse-train/series", pulse=np.arange(5), g_s=np.linspace(1e-6, 5e-6, 5))
        w.set_attrs("/", summary={"module": "pulse-train", "switching_fraction": 0.9375, "cells": 16})
    cut = folder / "b-cut.h5"
    with pytest.raises(Cancelled):
        with run_record(cut, "sequence", station={"label": "sim"}) as w:
            w.append("t", x=np.arange(3))
            raise Cancelled("stop")
    cut.unlink()                                    # the journal is all that is left
    (folder / "c-garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    raw = good.read_bytes()
    (folder / "d-truncated.h5").write_bytes(raw[:len(raw) // 3])
    import h5py
    with h5py.File(folder / "e-other.h5", "w") as f:
        f["x"] = np.zeros(3)
    (folder / "notes.txt").write_text("not a record")
    return good


def test_folder_listing_flags_corrupt_and_cut_off_files(tmp_path):
    good = _records(tmp_path)
    entries = {e.name: e for e in index_folder(tmp_path)}
    assert set(entries) == {"a-module.h5", "b-cut.h5", "c-garbage.h5", "d-truncated.h5", "e-other.h5"}
    a = entries["a-module.h5"]
    assert (a.kind, a.status, a.key_figure) == ("module", "complete", "switching 94% of cells")
    assert a.station == "sim-small (simulated)" and a.created.startswith("20") and a.problem == ""
    assert entries["b-cut.h5"].status == INTERRUPTED and "hil runs recover" in entries["b-cut.h5"].problem
    for bad in ("c-garbage.h5", "d-truncated.h5"):
        assert entries[bad].status == CORRUPT and entries[bad].problem and "\n" not in entries[bad].problem
    assert entries["e-other.h5"].problem == "not a memristor-hil run record"
    assert good.exists() and (tmp_path / "b-cut.h5.journal").exists()     # listing changes nothing
    with pytest.raises(DataError, match="no such folder"):
        index_folder(tmp_path / "nope")


def test_key_figures_of_the_summaries():
    assert key_figure({"in_band_fraction": 0.9995, "write_errors": 8}) == "in band 99.95%"
    assert key_figure({"formed": 15, "cells": 16}) == "formed 15 of 16"
    assert key_figure({"median_rel_change": -0.012, "duration": "1 d"}) == "median ΔG -1.2% over 1 d"
    assert key_figure({"sequence": "x", "steps": 5}) == "5 steps"
    assert key_figure({"module": "x", "flag": True}) == ""


def test_export_round_trips_csv_and_npy(tmp_path):
    good = _records(tmp_path)
    for suffix in (".csv", ".npy"):
        out = export_item(good, "model/c1", tmp_path / f"k{suffix}")
        back = np.load(out) if suffix == ".npy" else np.loadtxt(out, delimiter=",", dtype=np.float32).reshape(8, 1, 3, 3)
        assert np.array_equal(back, KERNELS)
    table, is_table = read_item(good, "modules/pulse-train/series")
    assert is_table and table.dtype.names == ("pulse", "g_s")
    csv = np.genfromtxt(export_item(good, "modules/pulse-train/series", tmp_path / "s.csv"), delimiter=",",
                        names=True)
    assert np.array_equal(csv["pulse"], np.arange(5)) and np.array_equal(csv["g_s"], table["g_s"])
    assert np.array_equal(np.load(export_item(good, "modules/pulse-train/series", tmp_path / "s.npy")), table)
    with pytest.raises(ConfigError, match=r"must end in \.csv or \.npy"):
        export_item(good, "model/c1", tmp_path / "k.txt")
    with pytest.raises(DataError, match="has no dataset or table 'model/zz'; datasets: model/c1"):
        export_item(good, "model/zz", tmp_path / "z.csv")
    assert not (tmp_path / "z.csv").exists() and not (tmp_path / "k.txt").exists()


def test_cli_runs_list_and_export(tmp_path, capsys):
    good = _records(tmp_path)
    assert main(["runs", "list", str(tmp_path), "--json"]) == 0
    runs = {r["name"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs["a-module.h5"]["key_figure"] == "switching 94% of cells" and runs["c-garbage.h5"]["status"] == CORRUPT
    assert main(["runs", "list", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "switching 94% of cells" in text and "corrupt" in text and "hil runs recover" in text
    out = tmp_path / "x" / "k.npy"
    assert main(["runs", "export", str(good), "model/c1", "--to", str(out)]) == 0
    assert np.array_equal(np.load(out), KERNELS)
    capsys.readouterr()
    assert main(["runs", "export", str(good), "nope", "--to", str(tmp_path / "n.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no dataset or table 'nope'" in err
    shutil.rmtree(tmp_path / "x")
    assert main(["runs", "export", str(tmp_path / "c-garbage.h5"), "model/c1", "--to", str(out)]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err and not out.exists()
