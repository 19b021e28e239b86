import numpy as np
import pytest

from hil.analog.energy import EnergyModel, VmmLedger
from hil.errors import ConfigError, DataError
from hil.geometry import YAO, Geometry
from hil.analog.mapping import SHARED, AllocationPlan, PairEncoding, plan_network

MCNN_LAYERS = {"c1": (9, 8), "c3": (72, 12), "fc": (192, 10)}


def _plan(groups=3, geom=YAO):
    return plan_network(geom, MCNN_LAYERS, ("c1", "c3"), ("fc",), groups)


def test_pair_encoding_round_trip_and_limits():
    enc = PairEncoding()
    q = np.arange(-7, 8)
    pos, neg = enc.encode(q)
    assert enc.weight_levels == 15
    assert np.all((pos >= 2e-6 - 1e-15) & (pos <= 20e-6 + 1e-15))
    assert np.all(np.minimum(pos, neg) == pytest.approx(2e-6))   # one cell of each pair at g_min
    np.testing.assert_allclose(enc.decode(pos, neg), q, atol=1e-9)
    with pytest.raises(DataError, match="±7"):
        enc.encode([8])
    with pytest.raises(DataError, match="NaN"):
        enc.encode([np.nan])


def test_yao_three_group_plan_matches_the_paper_layout():
    p = _plan(3)
    assert [p.pes_of(g) for g in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert p.pes_of(SHARED) == [6, 7]
    occ = np.zeros(YAO.shape, int)
    for t in p.tiles:
        occ[t.pe, t.row0:t.row0 + t.n_in, t.col0:t.col0 + 2 * t.n_out] += 1
    assert occ.max() == 1                                        # no overlap
    assert occ.sum() == 3 * 2 * 936 + 2 * 1920                   # every weight twice (pair)
    # every (input, output) of every layer covered exactly once per replica
    for name, (n_in, n_out) in MCNN_LAYERS.items():
        for g in ([0] if name == "fc" else range(3)):
            cells, i_in, i_out, sign = p.cells(name, g)
            cover = np.zeros((n_in, n_out), int)
            np.add.at(cover, (i_in[sign > 0], i_out[sign > 0]), 1)
            assert cover.min() == cover.max() == 1


def test_plan_round_trips_through_dict_and_prints():
    p = _plan(3)
    q = AllocationPlan.from_dict(p.to_dict())
    assert q.tiles == p.tiles and q.layers == p.layers
    text = p.table()
    assert "G3" in text and "fc" in text and "8 of 8 PEs" in text
    assert (p.label_map() == "fc").sum() == 2 * 1920


def test_network_that_does_not_fit_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="group 7 of 7"):
        _plan(7)
    with pytest.raises(ConfigError, match="FC layers"):
        plan_network(Geometry(1, 64, 8), MCNN_LAYERS, ("c1", "c3"), ("fc",), 1)


def test_targets_follow_the_weight_signs():
    p = _plan(1)
    enc = PairEncoding()
    q = np.random.default_rng(0).integers(-7, 8, (192, 10))
    cells, targets = p.targets("fc", 0, q, enc)
    _, i_in, i_out, sign = p.cells("fc", 0)
    expect = np.where(sign > 0, enc.encode(q[i_in, i_out])[0], enc.encode(q[i_in, i_out])[1])
    np.testing.assert_allclose(targets, expect)
    with pytest.raises(DataError, match="shape"):
        p.targets("fc", 0, q[:5], enc)


def test_ledger_counts_parallel_time_and_energy():
    m = EnergyModel()
    one, three = VmmLedger(), VmmLedger()
    one.add("c1", 0, 0, 300, 9, 16, m)
    for g in range(3):
        three.add("c1", g, 2 * g, 100, 9, 16, m)
    assert one.summary(m)["wall_s"] == pytest.approx(3 * three.summary(m)["wall_s"])
    assert one.summary(m)["energy_j"] == pytest.approx(three.summary(m)["energy_j"])
    assert m.peak_gops_per_w() > one.summary(m)["gops_per_w"] > 0


def test_locate_names_what_a_cell_holds():
    p = _plan(3)
    t = p.tiles_for("c3", 1)[0]
    hit = p.locate(t.pe, t.row0 + 5, t.col0 + 3)
    assert hit == {"layer": "c3", "group": 1, "input": t.in0 + 5, "output": t.out0 + 1, "sign": -1}
    assert p.locate(0, 127, 15) is None


def test_replica_groups_and_cells_of_a_plan_are_those_of_its_mapped_layers():
    from hil.analog.network import MappedNetwork
    from tests.fakes import ToyCrossbar
    p = _plan(3)
    assert p.groups_of("fc") == [SHARED] and p.groups_of("fc", [1]) == [SHARED]
    assert p.groups_of("c3") == [0, 1, 2] and p.groups_of("c3", [2]) == [2]
    with pytest.raises(ConfigError, match="no layer 'c5'"):
        p.groups_of("c5")
    mapped = MappedNetwork(ToyCrossbar(YAO), p)
    for name in MCNN_LAYERS:
        for rep, g in zip(mapped.replicas(name), p.groups_of(name)):
            a, b = rep.cells(), p.cells(name, g)
            assert rep.group == g and rep.shape == MCNN_LAYERS[name]
            assert all(np.array_equal(u, v) for u, v in zip((a[0].pe, a[0].row, a[0].col, *a[1:]),
                                                               (b[0].pe, b[0].row, b[0].col, *b[1:])))
    assert mapped.layer("fc", 2) is mapped.layer("fc", 0) and mapped.layer("c1", 1) is not mapped.layer("c1", 0)
    with pytest.raises(ConfigError, match="plan is for"):
        MappedNetwork(ToyCrossbar(Geometry(1, 4, 4, "toy")), p)
