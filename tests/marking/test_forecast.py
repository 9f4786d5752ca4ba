"""The evidence forecast: what the measured power curve says about a copy's marked samples."""

from tracemark.marking.forecast import forecast, power_curve
from tracemark.marking.protect import DEFAULT_MIN_MARKED, marked_count, selection_rate


def test_power_curve_ships_with_its_provenance():
    curve = power_curve()
    assert curve["whitebox"] and curve["blackbox"]
    for row in curve["whitebox"] + curve["blackbox"]:
        assert row["source"] and isinstance(row["n_marked"], int) and "/" in row["tpr_1e-3"]


def test_forecast_tells_a_small_owner_plainly_and_finds_the_measured_count():
    one = forecast(1)
    assert not one.enough and "below anything measured" in one.whitebox and one.needed == DEFAULT_MIN_MARKED
    assert "no detection measured" in one.blackbox
    assert not forecast(40).enough and "3/5" in forecast(40).whitebox
    ok = forecast(DEFAULT_MIN_MARKED)
    assert ok.enough and "5/5" in ok.whitebox
    assert "not measured" in forecast(500).whitebox  # no claim beyond the curve


def test_marked_count_is_the_rate_raised_to_min_marked_within_ten_percent():
    assert marked_count(40, 0.02, 50) == 4  # a 40-photo owner: capped, the forecast says why
    assert marked_count(1000, 0.02, 50) == 50
    assert marked_count(10_000, 0.02, 50) == 200
    assert marked_count(1000, 0.2, 50) == 200
    assert marked_count(1000, 0.02, 0) == 20
    assert marked_count(3, 0.02, 0) == 1
    for n in (7, 40, 333, 1000, 12345):  # the selection functions get back exactly this count
        assert max(1, int(round(selection_rate(n, 0.02, 50) * n))) == marked_count(n, 0.02, 50)
