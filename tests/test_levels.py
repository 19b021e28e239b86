import numpy as np
import pytest

from hil.errors import ConfigError
from hil.levels import LevelTable, format_us, make_pattern, validate_targets


def test_linear_defaults_count_spacing_and_tolerance():
    t = LevelTable.linear()
    assert t.n_levels == 32
    assert t.levels_s[0] == pytest.approx(2e-6) and t.levels_s[-1] == pytest.approx(20e-6)
    spacing = 18e-6 / 31
    assert np.allclose(np.diff(t.levels_s), spacing)
    assert t.tolerance_s == pytest.approx(0.4 * spacing)
    assert t.g_window == pytest.approx((2e-6, 20e-6))


def test_linear_custom_and_half_spacing_allowed():
    t = LevelTable.linear(1e-6, 9e-6, n=5, tolerance_frac=0.5)
    assert np.allclose(t.levels_s, [1e-6, 3e-6, 5e-6, 7e-6, 9e-6])
    assert t.tolerance_s == pytest.approx(1e-6)


@pytest.mark.parametrize("levels,tol,match", [
    ([5e-6], 0.1e-6, "at least 2 levels"),
    ([2e-6, 4e-6, 4e-6], 0.1e-6, "strictly increasing"),
    ([2e-6, 6e-6, 4e-6], 0.1e-6, "strictly increasing"),
    ([2e-6, float("nan"), 4e-6], 0.1e-6, "level #1 is NaN"),
    ([2e-6, 4e-6, 5e-6], 0.6e-6, "overlap"),
    ([2e-6, 4e-6], 0.0, "positive"),
    ([2e-6, 4e-6], float("nan"), "positive"),
    ([-1e-6, 4e-6], 0.1e-6, "negative"),
])
def test_invalid_tables_rejected(levels, tol, match):
    with pytest.raises(ConfigError, match=match):
        LevelTable(np.array(levels), tol)


def test_linear_rejects_overlap_and_few_levels():
    with pytest.raises(ConfigError, match="overlap"):
        LevelTable.linear(tolerance_frac=0.6)
    with pytest.raises(ConfigError, match="at least 2"):
        LevelTable.linear(n=1)
    with pytest.raises(ConfigError, match="g_max"):
        LevelTable.linear(g_min=20e-6, g_max=2e-6)


def test_levels_are_read_only_and_table_is_frozen():
    t = LevelTable.linear(n=4)
    with pytest.raises(ValueError):
        t.levels_s[0] = 0.0
    with pytest.raises(Exception):
        t.tolerance_s = 1.0


def test_band_and_nearest_level():
    t = LevelTable.linear(2e-6, 8e-6, n=4, tolerance_frac=0.25)   # 2, 4, 6, 8 µS, ±0.5 µS
    lo, hi = t.band(np.array([4e-6, 8e-6]))
    assert np.allclose(lo, [3.5e-6, 7.5e-6]) and np.allclose(hi, [4.5e-6, 8.5e-6])
    idx = t.nearest_level(np.array([0.0, 2.9e-6, 3.1e-6, 6.2e-6, 100e-6]))
    assert idx.tolist() == [0, 0, 1, 2, 3]
    assert t.nearest_level(np.array([[5.1e-6]])).shape == (1, 1)


def test_dict_round_trip_and_linear_form():
    t = LevelTable.linear(n=8)
    assert LevelTable.from_dict(t.to_dict()) == t
    assert LevelTable.from_dict({"g_min": 2e-6, "g_max": 20e-6, "n": 8}) == t
    with pytest.raises(ConfigError, match="unknown key"):
        LevelTable.from_dict({"levels": [1, 2]})
    with pytest.raises(ConfigError, match="missing"):
        LevelTable.from_dict({"levels_s": [1e-6, 2e-6]})


def test_levels_pattern_repeats_every_level():
    t = LevelTable.linear(n=32)
    idx, targets = make_pattern("levels32", 70, t)
    assert idx.tolist() == list(range(32)) + list(range(32)) + list(range(6))
    assert np.array_equal(targets, t.levels_s[idx])
    idx2, _ = make_pattern("levels", 70, t)
    assert np.array_equal(idx, idx2)


def test_checker_and_random_patterns():
    t = LevelTable.linear(n=8)
    idx, targets = make_pattern("checker", 5, t)
    assert idx.tolist() == [0, 7, 0, 7, 0]
    assert targets[0] == t.levels_s[0] and targets[1] == t.levels_s[-1]
    a, _ = make_pattern("random", 200, t, seed=3)
    b, _ = make_pattern("random", 200, t, seed=3)
    c, _ = make_pattern("random", 200, t, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 7 and len(set(a.tolist())) == 8
    with pytest.raises(ConfigError, match="seed"):
        make_pattern("random", 10, t)


def test_unknown_pattern_lists_known_names():
    with pytest.raises(ConfigError) as e:
        make_pattern("zigzag", 4, LevelTable.linear())
    for name in ("levels32", "levels", "checker", "random"):
        assert name in str(e.value)


def test_validate_targets_messages():
    win = (2e-6, 20e-6)
    ok = validate_targets([2e-6, 10e-6, 20e-6], win)
    assert ok.dtype == float and ok.shape == (3,)
    with pytest.raises(ConfigError) as e:
        validate_targets([5e-6, 25e-6], win)
    assert str(e.value) == "target #1 = 25.0 µS is outside the programmable window 2.0–20.0 µS"
    with pytest.raises(ConfigError, match="target #2 is NaN"):
        validate_targets([5e-6, 6e-6, float("nan")], win)
    with pytest.raises(ConfigError, match="target #0 is infinite"):
        validate_targets([float("inf")])
    with pytest.raises(ConfigError, match="1-D"):
        validate_targets(np.full((2, 2), 5e-6), win)
    with pytest.raises(ConfigError, match="3 targets for 4 cells"):
        validate_targets([5e-6] * 3, win, n_cells=4)
    with pytest.raises(ConfigError, match="1.5 µS is outside"):
        validate_targets([1.5e-6], win)


def test_format_us():
    assert format_us(2e-6) == "2.0"
    assert format_us(20.05e-6) == "20.05"
    assert format_us(25e-6) == "25.0"
