"""The run's range from params or the data interval."""

from __future__ import annotations

import datetime as dt
import re

import pendulum
import pytest

from ihc_attribution.daterange import (
    MAX_RANGE_DAYS,
    ParamError,
    RangeError,
    check_range_length,
    parse_lookback_days,
    resolve_run_range,
)


def test_params_are_inclusive_dates():
    rng = resolve_run_range({"start_date": "2024-01-01", "end_date": "2024-01-31"})
    assert (rng.start_ts, rng.end_ts) == ("2024-01-01 00:00:00", "2024-02-01 00:00:00")
    assert rng.label == "2024-01-01_2024-01-31"
    assert len(rng.dates()) == 31


def test_params_win_over_the_data_interval():
    start = pendulum.datetime(2024, 5, 1, tz="UTC")
    rng = resolve_run_range({"start_date": "2024-01-01", "end_date": "2024-01-01"}, start, start.add(days=1))
    assert rng.start_ts == "2024-01-01 00:00:00"


def test_data_interval_is_half_open_and_utc():
    start = pendulum.datetime(2024, 3, 10, 1, tz="Europe/Berlin")
    rng = resolve_run_range({}, start, start.add(days=1))
    assert (rng.start_ts, rng.end_ts) == ("2024-03-10 00:00:00", "2024-03-11 00:00:00")
    assert rng.dates() == ["2024-03-10"]


def test_manual_run_without_range_fails_clearly():
    with pytest.raises(RangeError, match="no data interval and no start_date/end_date"):
        resolve_run_range({}, None, None)


def test_zero_length_interval_is_refused():
    t = pendulum.datetime(2024, 1, 1, tz="UTC")
    with pytest.raises(RangeError, match="empty"):
        resolve_run_range({}, t, t)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start_date": "2024-1-01", "end_date": "2024-01-02"}, "start_date"),
        ({"start_date": "2024-01-01", "end_date": "2024-02-30"}, "end_date"),
        ({"start_date": "2024-01-05", "end_date": "2024-01-02"}, "start_date=2024-01-05 is after"),
        ({"start_date": "2024-01-01"}, "end_date is missing"),
        ({"end_date": "2024-01-01"}, "start_date is missing"),
        ({"start_date": "2024-01-01'; DROP TABLE conversions; --", "end_date": "2024-01-02"}, "start_date"),
        ({"start_date": "2024-01-01", "end_date": "2024-01-02 OR 1=1"}, "end_date"),
    ],
)
def test_bad_params_name_the_param(params, message):
    with pytest.raises(RangeError, match=message):
        resolve_run_range(params, dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2))


def test_one_day_and_one_year_ranges():
    assert len(resolve_run_range({"start_date": "2024-02-29", "end_date": "2024-02-29"}).dates()) == 1
    assert len(resolve_run_range({"start_date": "2024-01-01", "end_date": "2024-12-31"}).dates()) == 366


def test_years_before_1000_are_padded_in_the_compared_text():
    rng = resolve_run_range({"start_date": "0999-01-01", "end_date": "0999-12-31"})
    assert (rng.start_ts, rng.end_ts) == ("0999-01-01 00:00:00", "1000-01-01 00:00:00")
    assert rng.start_ts <= "0999-01-02 10:00:00" < rng.end_ts


def test_the_last_representable_end_date_is_refused_as_a_param_error():
    with pytest.raises(RangeError, match="end_date=9999-12-31"):
        resolve_run_range({"start_date": "9999-12-01", "end_date": "9999-12-31"})
    assert resolve_run_range({"start_date": "9999-12-30", "end_date": "9999-12-30"}).end_ts == "9999-12-31 00:00:00"


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        ("1990-01-01", "1990-01-01", 1),
        ("1999-12-31", "2000-01-01", 2),
        ("2000-02-28", "2000-03-01", 3),  # 2000 is a leap year
        ("1900-02-28", "1900-03-01", 2),  # 1900 is not
        ("2023-02-28", "2023-03-01", 2),
        ("2023-12-31", "2023-12-31", 1),
    ],
)
def test_historical_and_edge_ranges(start, end, days):
    rng = resolve_run_range({"start_date": start, "end_date": end})
    assert rng.dates()[0] == start and rng.dates()[-1] == end and len(rng.dates()) == days
    next_midnight = dt.date.fromisoformat(end) + dt.timedelta(days=1)
    assert rng.end_ts == f"{next_midnight.isoformat()} 00:00:00"


def test_a_range_of_up_to_10_years_is_accepted_and_a_longer_one_refused_in_one_line():
    first = dt.date(2015, 1, 1)
    longest = resolve_run_range({"start_date": first, "end_date": first + dt.timedelta(days=MAX_RANGE_DAYS - 1)})
    check_range_length(longest)
    assert len(longest.dates()) == MAX_RANGE_DAYS
    with pytest.raises(RangeError, match="2015-01-01..2025-01-08 touches 3,661 dates") as refused:
        check_range_length(resolve_run_range({"start_date": first, "end_date": first + dt.timedelta(days=MAX_RANGE_DAYS)}))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("given", "days"), [(None, None), ("", None), (" ", None), (7, 7), (7.0, 7), (" 30 ", 30), ("36600", 36600)]
)
def test_lookback_days_is_whole_days_or_unlimited(given, days):
    assert parse_lookback_days(given) == days


@pytest.mark.parametrize(("given", "shown"), [(0, "0"), (0.0, "0.0"), (1.5, "1.5"), (True, "True"), ("7d", "'7d'"),
                                              (-3, "-3"), (1e20, "1e+20"), (36601, "36601")])
def test_a_bad_lookback_days_is_refused_naming_the_value_given(given, shown):
    message = rf"^param lookback_days={re.escape(shown)} must be a whole number of days from 1 to 36600"
    with pytest.raises(ParamError, match=message):
        parse_lookback_days(given)
