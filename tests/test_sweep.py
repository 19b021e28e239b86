"""`hil sweep`: spec validation, a sweep on a 2-worker LocalCluster surviving a killed worker,
a killed client resumed to the same table as an uninterrupted run, and the plots."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hil.cli import main
from hil.sweep import SweepTable, load_spec, run_sweep
from hil.sweep.plot import plot_sweep

ROOT = Path(__file__).resolve().parents[1]
HIL = [sys.executable, "-m", "hil"]
#: a cheap target: 8 levels written on one 8 x 8 PE per point
SPEC = """
[sweep]
target = "write_verify"
seeds = "{seeds}"
geometry = {{n_pe = 1, rows = 8, cols = 8}}
[config.program]
levels = 8
[[axis]]
name = "config.program.max_pulses"
values = [5, 40]
[[axis]]
name = "device.read_noise.rel"
values = [0.004, 0.02]
"""
#: columns that differ between two runs of the same point
RUN_COLUMNS = ["wall_s", "worker", "finished_utc"]


def spec_file(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 single-threaded worker processes (restarted by their nannies when killed)."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            Client(c) as client:
        yield c.scheduler_address, client


def _complete_once(table: SweepTable, spec) -> "object":
    df = table.frame()
    assert sorted(df["point_id"]) == sorted(p.id for p in spec.points())      # every point, each once
    assert (df["status"] == "ok").all()
    return df


# ---- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ('[sweep]\ntarget = "nope"', "sweep.target 'nope' is unknown"),
    ('[sweep]\ntarget = "write_verify"\n[[axis]]\nname = "device.defects.stuck_rate"\nvalues = [0.1]',
     "defects.stuck_rate: did you mean 'stuck_on_rate'?"),
    ('[sweep]\ntarget = "write_verify"\n[[axis]]\nname = "device.defects.stuck_off_rate"\nvalues = [0.1, 0.9]',
     "at device.defects.stuck_off_rate = 0.9"),
    ('[sweep]\ntarget = "write_verify"\n[[axis]]\nname = "config.program.max_pulses"\nrange = [50, 5]\nsteps = 3',
     "range [50, 5] is empty"),
    ('[sweep]\ntarget = "write_verify"\n[[axis]]\nname = "config.program.levls"\nvalues = [4]',
     "unknown ProgramConfig setting(s) levls"),
    ('[sweep]\ntarget = "write_verify"\nseeds = "3-1"', "seeds '3-1'"),
    ('[sweep]\ntarget = "write_verify"\nprogramming = "statistical"\n[[axis]]\nname = "config.program.max_pulses"\n'
     'values = [5, 40]', "the programming (policy) changes at config.program.max_pulses = 40"),
])
def test_bad_spec_is_one_line_exit_2_before_any_task(tmp_path, capsys, body, message):
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec_file(tmp_path, body)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()                            # nothing started


def test_grid_points_and_stable_ids(tmp_path):
    spec = load_spec(spec_file(tmp_path, SPEC.format(seeds="0-2")))
    pts = spec.points()
    assert len(pts) == 2 * 2 * 3 and len({p.id for p in pts}) == len(pts)
    assert [p.id for p in pts] == [p.id for p in load_spec(spec_file(tmp_path, SPEC.format(seeds="0-2"))).points()]
    cfg, dev = spec.settings(pts[0].coords)
    assert cfg["program"] == {"levels": 8, "max_pulses": 5} and dev == {"read_noise": {"rel": 0.004}}


# ---- on a cluster ------------------------------------------------------------------------------
def test_a_worker_killed_mid_sweep_loses_nothing_and_counts_nothing_twice(tmp_path, cluster):
    address, client = cluster
    spec = load_spec(spec_file(tmp_path, SPEC.format(seeds="0-3")))
    killed = []

    def kill_a_busy_worker(progress, row) -> None:
        if killed:
            return
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("point-") for k in keys)]
        pids = client.run(os.getpid, workers=busy[:1])
        (addr, pid), = pids.items()
        killed.append((addr, client.processing()[addr]))
        os.kill(pid, signal.SIGKILL)

    o = run_sweep(spec, tmp_path / "out", scheduler=address, on_point=kill_a_busy_worker)
    assert killed and killed[0][1], "the killed worker had a point in flight"
    assert o.ok == len(spec.points()) and not o.lost and o.failed == 0
    df = _complete_once(SweepTable(tmp_path / "out"), spec)
    assert not (tmp_path / "out" / "parts").exists() or not list((tmp_path / "out" / "parts").iterdir())
    assert set(df.columns) >= {"seed", "config.program.max_pulses", "device.read_noise.rel", "in_band_fraction",
                               "mean_pulses", "wall_s", "worker", "version", "status", "error"}


def test_a_killed_client_resumes_to_the_uninterrupted_table(tmp_path, cluster):
    address, _ = cluster
    spec_path = spec_file(tmp_path, SPEC.format(seeds="0-2"))
    spec = load_spec(spec_path)
    out = tmp_path / "cut"
    proc = subprocess.Popen(HIL + ["sweep", "run", str(spec_path), "--scheduler", address, "--out", str(out)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = 0
    for line in proc.stderr:                         # one line per finished point
        seen += line.startswith("point ")
        if seen == 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = SweepTable(out).point_ids()
    assert 3 <= len(before) < len(spec.points())

    o = run_sweep(spec, out, scheduler=address)
    assert o.skipped == len(before) and o.ok == len(spec.points()) - len(before)
    cut = _complete_once(SweepTable(out), spec)
    whole = _complete_once(SweepTable(tmp_path / "whole"), spec) if run_sweep(
        spec, tmp_path / "whole", scheduler=address).ok else None
    key = lambda df: df.drop(columns=RUN_COLUMNS).sort_values("point_id").reset_index(drop=True)
    assert key(cut).equals(key(whole)[key(cut).columns])

    again = run_sweep(spec, out, scheduler=address)              # nothing left to do
    assert again.skipped == len(spec.points()) and again.ok == 0


def test_a_point_with_bad_parameters_is_recorded_failed_and_the_sweep_goes_on(tmp_path, cluster):
    address, _ = cluster
    # PE 3 passes the config's range check but does not exist on the 1-PE chip: the point fails on the worker
    text = SPEC.format(seeds="0-1").replace("values = [0.004, 0.02]", "values = [0.004]") + \
        '[[axis]]\nname = "config.program.pes"\nvalues = [[0], [3]]\n'
    spec = load_spec(spec_file(tmp_path, text))
    o = run_sweep(spec, tmp_path / "out", scheduler=address)
    df = SweepTable(tmp_path / "out").frame()
    bad = df[df["status"] == "failed"]
    assert o.failed == len(bad) == 4 and o.ok == 4 and len(df) == 8
    assert bad["error"].str.contains("PE 3 does not exist").all()
    assert (bad["config.program.pes"] == "[3]").all()


def finished_folder(root: Path, seeds=(0, 1, 2)) -> Path:
    """A sweep folder of the test SPEC written row by row (as the engine does), figures made up."""
    spec = load_spec(spec_file(root, SPEC.format(seeds=",".join(map(str, seeds)))))
    table = SweepTable(root / "out")
    table.claim(spec.to_dict())
    for p in spec.points():
        mp, rel = p.coords["config.program.max_pulses"], p.coords["device.read_noise.rel"]
        table.add({"point_id": p.id, "seed": p.seed, **p.coords, "in_band_fraction": 1 - rel * 10 / mp - 0.01 * p.seed,
                   "mean_pulses": mp / 3, "status": "ok", "error": "", "wall_s": 0.1, "worker": "w", "version": "0"})
    table.consolidate()
    return root / "out"


def test_plots_have_bands_over_seeds_and_a_heat_map(tmp_path):
    out = finished_folder(tmp_path)
    files = plot_sweep(out, figure="in_band_fraction")
    names = sorted(f.name for f in files)
    assert names == sorted(f"in_band_fraction-{n}.{e}" for n in ("vs-max_pulses", "vs-rel", "max_pulses-rel")
                           for e in ("png", "svg"))
    assert all(f.stat().st_size > 1000 for f in files)
    assert main(["sweep", "plot", str(out), "--figure", "nope"]) == 2


def test_the_table_is_standard_parquet_that_pandas_and_pyarrow_open(tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq
    table = SweepTable(tmp_path / "out")
    table.claim({"fingerprint": "f"})
    table.add({"point_id": "a", "seed": 0, "acc": 0.5, "pes": [0], "n": 3, "status": "ok", "error": None})
    table.add({"point_id": "b", "seed": 1, "acc": float("nan"), "pes": [3], "n": None, "status": "failed",
               "error": "PE 3 does not exist"})
    table.add({"point_id": "c", "seed": 2, "acc": 0.7, "pes": "all", "n": 4, "status": "ok", "error": None})
    table.consolidate()
    assert not list(table.parts.glob("*")) and table.table.is_file()
    ours = table.frame().set_index("point_id")
    for theirs in (pd.read_parquet(table.table, engine="pyarrow"), pq.read_table(table.table).to_pandas()):
        theirs = theirs.set_index("point_id")
        assert list(theirs.columns) == list(ours.columns) and list(theirs.index) == ["a", "b", "c"]
        assert theirs["pes"].tolist() == ["[0]", "[3]", "all"] and theirs["seed"].tolist() == [0, 1, 2]
        assert theirs["error"].tolist()[1] == "PE 3 does not exist" and theirs["error"].isna().tolist() == [True, False, True]
        pd.testing.assert_series_equal(theirs["acc"], ours["acc"])
        pd.testing.assert_series_equal(theirs["n"], ours["n"])
    assert pq.read_schema(table.table).field("error").type == "string"      # text, also where values are None


def test_band_is_the_95_percent_interval_of_the_mean_over_seeds():
    import pandas as pd
    from hil.sweep.plot import summarize
    df = pd.DataFrame({"a": [1, 1, 1, 2], "f": [0.1, 0.2, 0.3, 0.5]})
    s = summarize(df, ["a"], "f").set_index("a")
    assert s.loc[1, "mean"] == pytest.approx(0.2) and s.loc[1, "n"] == 3
    assert s.loc[1, "half"] == pytest.approx(4.303 * 0.1 / 3 ** 0.5)       # t(0.975, 2 dof) * sd / sqrt(n)
    assert s.loc[2, "half"] == 0.0


def test_statistical_fast_mode_agrees_with_pulse_level_within_the_intervals(tmp_path, cluster):
    from hil.sweep.plot import summarize
    address, _ = cluster
    # programming stays the same at every point (the model is fitted once); drift does not touch it
    text = SPEC.format(seeds="0-3").replace("rows = 8, cols = 8", "rows = 16, cols = 16").replace(
        'name = "config.program.max_pulses"\nvalues = [5, 40]', 'name = "device.drift.pull_per_decade"\nvalues = [0.006, 0.02]')
    means = {}
    for mode in ("pulse", "statistical"):
        spec = load_spec(spec_file(tmp_path, text.replace("[sweep]", f'[sweep]\nprogramming = "{mode}"'), f"{mode}.toml"))
        assert run_sweep(spec, tmp_path / mode, scheduler=address).ok == len(spec.points())
        df = SweepTable(tmp_path / mode).frame()
        means[mode] = {f: summarize(df, ["device.drift.pull_per_decade", "device.read_noise.rel"], f)
                       for f in ("in_band_fraction", "mean_pulses")}
    assert list((tmp_path / "statistical" / "cache").glob("programming-*.npz"))     # fitted once, kept
    for f in ("in_band_fraction", "mean_pulses"):
        p, s = means["pulse"][f], means["statistical"][f]
        assert ((p["mean"] - s["mean"]).abs() <= p["half"] + s["half"]).all(), (f, p, s)


def test_hil_gui_without_the_gui_extra_names_the_extra(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "PySide6" else real(name, *a))
    assert main(["gui"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'memristor-hil[gui]'" in err and err.count("\n") == 1
