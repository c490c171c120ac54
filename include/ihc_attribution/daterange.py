"""The range of conversions a run handles.

A run handles the conversions whose timestamp falls in a half-open interval ``[start, end)``.
Scheduled runs take it from Airflow's data interval; manual runs give inclusive dates in the
params ``start_date`` and ``end_date`` (``end_date`` 2024-01-31 means up to 2024-02-01 00:00:00).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ihc_attribution.errors import PermanentError

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")

#: The longest look-back accepted (100 years): beyond it, date arithmetic leaves the calendar
#: (SQLite's datetime() gives NULL), and "unlimited" (no value) says what is meant.
MAX_LOOKBACK_DAYS = 36_600


class RangeError(PermanentError, ValueError):
    """The run's range cannot be determined, or a date param is invalid."""


class ParamError(PermanentError, ValueError):
    """A param of the run has a value the pipeline does not accept."""


def parse_lookback_days(value: Any) -> int | None:
    """The ``lookback_days`` param: None (unlimited) when not given, else whole days in [1, 36600].

    :raises ParamError: for anything else (fractions, booleans, 0, text that is not a whole number):
        a typo must not silently change whose sessions a journey holds.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    days = int(value) if isinstance(value, float) and value.is_integer() else value
    text = str(days).strip()
    whole = isinstance(days, (int, str)) and not isinstance(days, bool) and re.fullmatch(r"[0-9]+", text)
    if not whole or not 1 <= int(text) <= MAX_LOOKBACK_DAYS:
        raise ParamError(
            f"param lookback_days={value!r} must be a whole number of days from 1 to {MAX_LOOKBACK_DAYS}, "
            "or empty for an unlimited look-back"
        )
    return int(text)


@dataclass(frozen=True)
class RunRange:
    """A half-open UTC interval ``[start, end)`` of conversion timestamps (naive, UTC)."""

    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise RangeError(f"empty range: end {self.end} is not after start {self.start}")

    # ``YYYY-MM-DD HH:MM:SS``, as the database compares them. Not strftime: its %Y does not pad
    # years before 1000 to four digits on every platform.
    @property
    def start_ts(self) -> str:
        return self.start.isoformat(sep=" ", timespec="seconds")

    @property
    def end_ts(self) -> str:
        return self.end.isoformat(sep=" ", timespec="seconds")

    @property
    def first_date(self) -> dt.date:
        return self.start.date()

    @property
    def last_date(self) -> dt.date:
        """The last calendar date the range touches (inclusive)."""
        return (self.end - dt.timedelta(microseconds=1)).date()

    def dates(self) -> list[str]:
        days = (self.last_date - self.first_date).days
        return [(self.first_date + dt.timedelta(days=i)).isoformat() for i in range(days + 1)]

    @property
    def label(self) -> str:
        """Used in file names."""
        return f"{self.first_date}_{self.last_date}"


def parse_date_param(name: str, value: Any) -> dt.date | None:
    """An inclusive ``YYYY-MM-DD`` date param, None when not given (RangeError names a bad one)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    text = str(value).strip()  # a date gives its YYYY-MM-DD
    if not _DATE_RE.fullmatch(text):
        raise RangeError(f"param {name}={value!r} is not a date in the form YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise RangeError(f"param {name}={value!r} is not a valid calendar date: {exc}") from None


def as_naive_utc(value: Any) -> dt.datetime:
    """A datetime, pendulum DateTime or ISO text as a plain naive UTC datetime (whole seconds)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    # A pendulum DateTime is a datetime subclass; keep a plain datetime.
    return dt.datetime(value.year, value.month, value.day, value.hour, value.minute, value.second)


def range_from_params(params: Mapping[str, Any]) -> RunRange | None:
    """The range of the ``start_date``/``end_date`` params, or None if neither is set (RangeError if they are wrong)."""
    start = parse_date_param("start_date", params.get("start_date"))
    end = parse_date_param("end_date", params.get("end_date"))
    if start is None and end is None:
        return None
    if start is None or end is None:
        missing = "start_date" if start is None else "end_date"
        raise RangeError(f"param {missing} is missing: give both start_date and end_date, or neither")
    if start > end:
        raise RangeError(f"param start_date={start} is after end_date={end}")
    if end == dt.date.max:
        raise RangeError(f"param end_date={end} is too late: the range would end after the last representable date")
    return RunRange(dt.datetime.combine(start, dt.time()), dt.datetime.combine(end + dt.timedelta(days=1), dt.time()))


def day_before(moment: Any, late_days: int = 0) -> RunRange:
    """The calendar day (UTC) before ``moment``'s day, and the ``late_days`` before it: a scheduled run's
    range, whatever the time it started (by its schedule or its loader's asset)."""
    end = dt.datetime.combine(as_naive_utc(moment).date(), dt.time())
    return RunRange(end - dt.timedelta(days=1 + late_days), end)


def resolve_run_range(
    params: Mapping[str, Any] | None, data_interval_start: Any = None, data_interval_end: Any = None
) -> RunRange:
    """The run's range: the params when given, else the data interval (RangeError, saying what to do, if neither)."""
    if from_params := range_from_params(params or {}):
        return from_params
    if data_interval_start is None or data_interval_end is None:
        raise RangeError(
            "this run has no data interval and no start_date/end_date params: trigger it with "
            'params, e.g. {"start_date": "2024-01-01", "end_date": "2024-01-31"}'
        )
    start, end = as_naive_utc(data_interval_start), as_naive_utc(data_interval_end)
    if end <= start:
        raise RangeError(
            f"the data interval [{start}, {end}) is empty: schedule the DAG with a "
            "CronDataIntervalTimetable, or give start_date/end_date params"
        )
    return RunRange(start, end)


#: The most calendar dates a run's range may touch (10 years): each one is a report date, with a
#: row per run in the package's tables, whether it holds data or not.
MAX_RANGE_DAYS = 3_660


def check_range_length(run_range: RunRange) -> None:
    """Refuse, with a RangeError naming the dates and the limit, a range over :data:`MAX_RANGE_DAYS` dates."""
    days = (run_range.last_date - run_range.first_date).days + 1
    if days > MAX_RANGE_DAYS:
        raise RangeError(
            f"the range {run_range.first_date}..{run_range.last_date} touches {days:,} dates, more than the "
            f"{MAX_RANGE_DAYS:,} (10 years) a run accepts: split it into several runs"
        )
