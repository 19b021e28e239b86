"""Issue 14 item 1: linear-cost write-verify and a streaming record give the same results as before.

Golden digests were computed on the base checkout (commit 210981e: np.unique repeat check, a
ring of readings per cell, int64 loop state, the whole record and chip state rewritten as before).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import hil.runstore.journal as jmod
import hil.runstore.writer as wmod
from hil.cli import main
from hil.geometry import Cells, Geometry
from hil.levels import LevelTable, make_pattern
from hil.limits import Op
from hil.ops.jobs import ProgramConfig, program
from hil.ops.write_verify import has_repeats, write_verify
from hil.runstore import RunRecord, RunWriter, recover
from sim_backend.chip import SimulatedCrossbar, change_log

try:
    from tests.test_kill_campaign import SMALL_SIM as SMALL_STATION      # 1 PE of 16 x 8, seed 3
except ImportError:  # tests/ on sys.path instead of the repository root
    from test_kill_campaign import SMALL_SIM as SMALL_STATION

WV_GEO = Geometry(n_pe=2, rows=64, cols=16)
SMALL = Geometry(n_pe=1, rows=16, cols=8)


def digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# ---- the repeat check --------------------------------------------------------------------------
def test_has_repeats_agrees_with_unique():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        flat = rng.integers(0, n, int(rng.integers(0, 2 * n)))
        assert has_repeats(flat, n) == (np.unique(flat).size != flat.size)


def test_pulse_still_refuses_a_cell_twice():
    xbar = SimulatedCrossbar(SMALL, seed=0)
    with pytest.raises(ValueError, match="twice"):
        xbar.pulse(Cells.from_flat([3, 5, 3], SMALL), Op.SET, 1.5, 1.5, 50e-9)
    assert xbar.counters["pulses"] == 0


# ---- write-verify: the same numbers as the base checkout ----------------------------------------
# seed: (cells per status -1/0/1/2, iterations, digests of final_s, pulses, status, conductance after)
GOLDEN_WV = {
    1: ([0, 2046, 1, 1], 151, "d7822ca75e4f98ba", "9d09d440784a550d", "be74bbc22a732764", "417d14738c5e9eb5"),
    2: ([0, 2045, 0, 3], 146, "4a7f37fdbedb1515", "f49efd221a828efe", "acfc5e04d04940ad", "230527d6bf9e5466"),
}


@pytest.mark.parametrize("seed", sorted(GOLDEN_WV))
def test_write_verify_matches_the_base_checkout(seed):
    """Same pulses, readings, unresponsive and max-pulse verdicts (both occur here) as before."""
    xbar = SimulatedCrossbar(WV_GEO, seed=seed)
    table = LevelTable.linear()
    _, targets = make_pattern("levels32", WV_GEO.n_cells, table)
    r = write_verify(xbar, Cells.all(WV_GEO), targets, table.tolerance_s)
    counts, iterations, *digests = GOLDEN_WV[seed]
    assert np.bincount(r.status + 1).tolist() == counts and r.iterations == iterations
    assert [digest(r.final_s), digest(r.pulses), digest(r.status), digest(xbar.true_conductance())] == digests


# ---- the streaming record -----------------------------------------------------------------------
GOLDEN_RECORD = {   # `hil program` on SMALL_STATION: table -> (rows, {column: digest})
    "programming/pulses": (2928, {"iteration": "a6b3bc7a172940a0", "cell": "552ab417c5f08d2d",
                                  "op": "36d57b40cd3cd949", "v": "04cf1f207b2e6915",
                                  "v_gate": "6c4c4869ebb68240", "width_s": "660e22644fdcc53d",
                                  "time_s": "c2f6e65d9ff50f94"}),
    "programming/verify": (3056, {"iteration": "597702da06ff26a7", "cell": "eaa742d78f820a45",
                                  "g_s": "1204d6e298d52e63", "time_s": "e67dd8fb48cb4217"}),
    "programming/cells": (128, {"cell": "a4b7a8792c116d89", "final_g_s": "903d65a272584e02",
                                "pulses": "a26d4b1cb857b158", "status": "49399a6308a7e98a"}),
}


def test_streamed_record_holds_the_same_pulses_as_before(tmp_path, monkeypatch, capsys):
    """With no table rows held in memory at all, `hil program` writes the base checkout's tables."""
    monkeypatch.setattr(jmod, "HELD_BYTES", 0)
    station = tmp_path / "small.toml"
    station.write_text(SMALL_STATION)
    assert main(["program", "--station", str(station), "--out", str(tmp_path / "r.h5"), "--json"]) == 0
    assert not change_log(tmp_path / "r.h5.chip.npz").exists()          # retired on close
    with RunRecord.open(tmp_path / "r.h5") as rec:
        for name, (rows, cols) in GOLDEN_RECORD.items():
            t = rec.table(name)
            assert rec.table_rows(name) == rows
            assert {c: digest(t[c]) for c in cols} == cols, name


class Killed(Exception):
    pass


def _killed_then_resumed(path, n: int) -> None:
    """Program SMALL (a chip that keeps its state, like a physical one) into `path`, die right
    after the n-th journal record, recover, resume to the end."""
    xbar, cfg = SimulatedCrossbar(SMALL, seed=3), ProgramConfig(max_pulses=12)
    w = RunWriter.create(path, "programming", {"spec": "sim"}, checkpoint_interval_s=None)
    count, orig = [0], w._write

    def write(rtype, header, arrays=()):
        count[0] += 1
        at = orig(rtype, header, arrays)
        if count[0] == n:
            w._release()
            raise Killed
        return at
    w._write = write
    with pytest.raises(Killed):
        program(xbar, w, cfg)
    recover(path)
    w = RunWriter.resume(path, "programming", checkpoint_interval_s=None)
    program(xbar, w, cfg, resume=True)
    w.finalize()


def _tables(path) -> dict:
    with RunRecord.open(path) as rec:
        return {t: rec.table(t) for t in rec.tables()}


@pytest.mark.parametrize("n", [9, 20])
def test_streamed_resume_equals_the_in_memory_one(tmp_path, monkeypatch, n):
    """Killed, recovered and resumed with every row streamed: the record equals the one kept in
    memory, and nothing recorded before the kill is lost or changed."""
    _killed_then_resumed(tmp_path / "mem.h5", n)
    monkeypatch.setattr(jmod, "HELD_BYTES", 0)
    _killed_then_resumed(tmp_path / "stream.h5", n)
    want, got = _tables(tmp_path / "mem.h5"), _tables(tmp_path / "stream.h5")
    assert got.keys() == want.keys() and "programming/pulses" in got
    for t in want:
        for c in want[t]:
            np.testing.assert_array_equal(got[t][c], want[t][c], err_msg=f"{t}/{c}")
    cells = got["programming/cells"]["cell"]
    assert np.array_equal(np.sort(cells), np.arange(SMALL.n_cells))      # each cell finished once


def test_streamed_tables_stay_readable_after_finalize(tmp_path, monkeypatch):
    monkeypatch.setattr(jmod, "HELD_BYTES", 100)
    w = RunWriter.create(tmp_path / "r.h5", "t", {}, checkpoint_interval_s=None)
    for i in range(20):
        w.append("t/rows", i=np.arange(10 * i, 10 * i + 10), x=np.full(10, i / 4))
    assert w.content._held <= 100                                          # memory stays bounded
    w.finalize()
    assert not wmod.journal_path(tmp_path / "r.h5").exists()
    t = w.content.tables["t/rows"]                                         # read back from the HDF5
    np.testing.assert_array_equal(t["i"], np.arange(200))
    np.testing.assert_array_equal(t["x"], np.repeat(np.arange(20) / 4, 10))


# ---- the chip's change log ----------------------------------------------------------------------
def _state(x: SimulatedCrossbar):
    return x.true_conductance(), x.now(), dict(x.counters), x.device.rng.bit_generator.state


def _same(a, b) -> bool:
    return np.array_equal(a[0], b[0]) and a[1:] == b[1:]


def test_chip_state_survives_a_kill_through_its_change_log(tmp_path):
    p = tmp_path / "chip.npz"
    x = SimulatedCrossbar(SMALL, seed=4, state_path=p)
    cells = Cells.all(SMALL)
    x.pulse(cells, Op.RESET, 1.5, 4.0, 50e-9)
    x.read(cells[:40], n_avg=2)
    x.pulse(cells[:40], Op.SET, 1.5, 1.3, 50e-9)
    before_last = _state(x)
    size = change_log(p).stat().st_size
    x.pulse(cells[10:20], Op.SET, 1.6, 1.4, 50e-9)
    x.advance(60.0)
    # the process dies here: no close, the state file itself is still the one made at the start
    again = SimulatedCrossbar(SMALL, seed=4, state_path=p)
    assert _same(_state(again), _state(x))
    # a write cut off by the kill: the chip is as it was after the last whole record
    with open(change_log(p), "r+b") as f:
        f.truncate(size + 30)
    torn = SimulatedCrossbar(SMALL, seed=4, state_path=p)
    assert _same(_state(torn), before_last)
    torn.pulse(cells[:8], Op.SET, 1.6, 1.4, 50e-9)       # nothing is appended after a damaged record
    assert not change_log(p).exists()
    torn.pulse(cells[8:16], Op.SET, 1.6, 1.4, 50e-9)
    assert _same(_state(SimulatedCrossbar(SMALL, seed=4, state_path=p)), _state(torn))
    torn.close()
    assert not change_log(p).exists()


def test_chip_change_log_stays_within_the_state_size(tmp_path):
    p = tmp_path / "chip.npz"
    x = SimulatedCrossbar(SMALL, seed=5, state_path=p)
    cells = Cells.all(SMALL)
    state_bytes = sum(a.nbytes for a in x.device.state().values())
    for k in range(40):
        x.pulse(cells[k % 2::2], Op.SET if k % 3 else Op.RESET, 1.5, 1.4, 50e-9)
        assert change_log(p).exists() is False or change_log(p).stat().st_size <= 2 * state_bytes + 4096
    assert _same(_state(SimulatedCrossbar(SMALL, seed=5, state_path=p)), _state(x))
