import math

import pytest

from hil import stats


def test_wilson_matches_the_textbook_value():
    # 95 of 100: Wilson 95% interval is [0.8882, 0.9785] (Newcombe 1998, method 3)
    iv = stats.wilson(95, 100)
    assert iv.value == 0.95
    assert iv.lo == pytest.approx(0.8882, abs=1e-4)
    assert iv.hi == pytest.approx(0.9785, abs=1e-4)


def test_wilson_edges_stay_inside_zero_one():
    assert stats.wilson(0, 10).lo == 0.0 and stats.wilson(10, 10).hi == 1.0
    assert math.isnan(stats.wilson(0, 0).value)
    with pytest.raises(ValueError):
        stats.wilson(11, 10)


def test_thousand_digits_give_about_plus_minus_point_six():
    iv = stats.accuracy_interval(0.97, 1000)
    assert 0.009 < iv.hi - iv.lo < 0.025
    assert not stats.differs(stats.accuracy_interval(0.962, 1000), stats.accuracy_interval(0.958, 1000))
    assert stats.differs(stats.accuracy_interval(0.99, 1000), stats.accuracy_interval(0.95, 1000))


def test_over_seeds_and_parse_seeds():
    s = stats.over_seeds([0.9, 0.92, 0.94])
    assert s.mean == pytest.approx(0.92) and s.sd == pytest.approx(0.02) and s.n == 3
    assert stats.over_seeds([0.5]).sd == 0.0
    assert stats.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert stats.parse_seeds("0-2,9") == [0, 1, 2, 9]
    for bad in ("", "a", "4-2", "1,1", "-3"):
        with pytest.raises(ValueError):
            stats.parse_seeds(bad)
