"""The Wang CNN trained in situ through the drivers on the emulated instruments
(stations/sim-wang-instruments.toml) learns like the simulated path on the same chip, and
`station_cost` reports the bus transactions and station time of every batch."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hil.registry import open_station
from hil.runstore import RunWriter
from hil.wang2019.demo import station_cost
from sim_backend.world import BUSES, drop_world, get_world

STATIONS = Path(__file__).resolve().parents[1] / "stations"
WORLD = "sim-wang-instruments"
BATCHES, BATCH, N_TEST = 8, 50, 200


def _cost(tmp_path, station: str, transactions) -> dict:
    with open_station(str(STATIONS / station), seed=0) as x, \
            RunWriter.create(tmp_path / f"{station}.h5", "wang2019", {}, {}) as w:
        return station_cost(x, w, transactions(), batches=BATCHES, batch=BATCH, test_samples=N_TEST)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emulated")
    drop_world(WORLD)                              # a fresh emulated chip, as the simulated one
    emulated = _cost(tmp, f"{WORLD}.toml",
                     lambda: lambda: sum(c["transactions"] for c in get_world(WORLD).counters.values()))
    drop_world(WORLD)
    return _cost(tmp, "sim-wang.toml", lambda: lambda: 0), emulated


def test_through_the_drivers_it_learns_like_the_simulated_path(runs):
    sim, emu = runs
    for r in runs:
        assert np.mean(r["losses"][-2:]) < 0.85 * r["losses"][0]
        assert r["test_acc"] > 0.3                                   # chance is 0.1
    # same placement of 4,060 cells: initialization RESET + SET of each, then per batch a SET of every
    # cell and a RESET of the one cell of each pair whose gate voltage goes down
    assert emu["pulses"] == sim["pulses"] == 2 * 4060 + BATCHES * (4060 + 4060 // 2)
    p = (sim["test_acc"] + emu["test_acc"]) / 2
    assert abs(emu["test_acc"] - sim["test_acc"]) <= 3 * math.sqrt(2 * p * (1 - p) / N_TEST)
    # read noise is drawn fresh per call and the two paths do not consume it in the same order, so
    # single batches differ (a loss spike lands on different batches); over the second half they agree
    half = BATCHES // 2
    assert abs(np.mean(emu["losses"][half:]) - np.mean(sim["losses"][half:])) < 0.4


def test_bus_transactions_and_station_time_per_batch_are_reported(runs):
    sim, emu = runs
    assert len(emu["transactions_per_batch"]) == len(emu["station_s_per_batch"]) == BATCHES
    assert min(emu["transactions_per_batch"]) > 100 and emu["median_transactions_per_batch"] > 100
    assert sim["median_transactions_per_batch"] == 0                # the simulator has no bus
    # every plain batch costs the same exchanges; the first adds the initialization, the last the test set
    plain = emu["transactions_per_batch"][1:-1]
    assert len(set(plain)) == 1
    assert emu["transactions_per_batch"][0] > plain[0] and emu["transactions_per_batch"][-1] > plain[0]
    # station time carries the bus latency of every exchange, and dwarfs the simulator's pulse time
    assert emu["median_station_s_per_batch"] > plain[0] * BUSES["serial"].latency_s
    assert emu["median_station_s_per_batch"] > 10 * sim["median_station_s_per_batch"]
    whole = emu["whole_run_station_s"]
    assert whole > 1200 * emu["median_station_s_per_batch"] + emu["init_s"] + emu["yield_scan_s"]


def test_station_cost_needs_plain_batches(tmp_path):
    with open_station(str(STATIONS / "sim-wang.toml"), seed=0) as x, \
            RunWriter.create(tmp_path / "r.h5", "wang2019", {}, {}) as w:
        with pytest.raises(ValueError, match="at least 3 batches"):
            station_cost(x, w, lambda: 0, batches=2)
