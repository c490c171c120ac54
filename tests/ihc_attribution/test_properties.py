"""Property-based tests: range semantics, journeys, the report and convergence on random data.

Dates come from 1990 to 2030 and from the edges of months, years and leap days, not only from
the demo's 2024; the databases hold ties, repeat buyers and odd costs. Settings come from the
hypothesis profile loaded in tests/conftest.py (derandomised by default).
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ihc_attribution import journeys
from ihc_attribution.daterange import RangeError, RunRange, range_from_params, resolve_run_range
from tests.helpers import (
    CHANNELS,
    EDGE_DATES,
    TIMES,
    FakeIhcClient,
    SourceData,
    expected_credit,
    expected_journey_order,
    expected_report,
    make_db,
    read_table,
    run_pipeline,
    source_data,
    source_ddl,
)

# A pipeline example runs several whole runs on SQLite: fewer of them than of the pure ones.
PIPELINE_EXAMPLES = max(5, settings.default.max_examples * 3 // 5)

DAY = dt.timedelta(days=1)
SECOND = dt.timedelta(seconds=1)

dates = st.one_of(st.dates(dt.date(1990, 1, 1), dt.date(2030, 12, 31)), st.sampled_from(EDGE_DATES))
# Month ends and leap days of every year, and their neighbours.
month_edges = st.builds(
    lambda year, month, shift: dt.date(year, month % 12 + 1, 1) - DAY + shift * DAY if month < 12
    else dt.date(year, 12, 31) + shift * DAY,
    st.integers(1990, 2030), st.integers(1, 12), st.integers(-1, 1),
)
any_date = st.one_of(dates, month_edges)
# Every year the YYYY-MM-DD params accept (0001-9999), for the pure range functions.
all_years = st.one_of(any_date, st.dates(max_value=dt.date(9998, 12, 31)))


def _ts(value: dt.datetime) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}:{value.second:02d}"


def timestamps_near(day: dt.date, span_days: int):
    """Whole-second timestamps from a day before ``day`` to a day after ``day + span_days``,
    with extra weight on midnights and on the second before them."""
    midnight = dt.datetime.combine(day, dt.time())
    offsets = st.integers(-1, span_days + 1)
    return st.one_of(
        st.builds(lambda d: midnight + d * DAY, offsets),
        st.builds(lambda d: midnight + d * DAY - SECOND, offsets),
        st.builds(lambda s: midnight + s * SECOND, st.integers(-86_400, (span_days + 2) * 86_400)),
    )


# --- 1. range semantics ---------------------------------------------------------------------------


@given(start=all_years, length=st.integers(0, 400), data=st.data())
def test_params_give_the_half_open_range_of_the_inclusive_days(start, length, data):
    end = start + length * DAY
    rng = resolve_run_range({"start_date": start.isoformat(), "end_date": end.isoformat()})
    assert rng.start == dt.datetime.combine(start, dt.time())
    assert rng.end == dt.datetime.combine(end + DAY, dt.time()), "end_date is inclusive: up to the next midnight"
    assert rng.start_ts == f"{start.isoformat()} 00:00:00"
    assert rng.end_ts == f"{(end + DAY).isoformat()} 00:00:00"
    assert rng.dates() == [(start + i * DAY).isoformat() for i in range(length + 1)]
    assert rng.label == f"{start.isoformat()}_{end.isoformat()}"
    # A timestamp is in the range exactly when its day is one of the inclusive days, both as a
    # datetime and as the text the database compares.
    for t in data.draw(st.lists(timestamps_near(start, length), min_size=1, max_size=20)):
        inside = start <= t.date() <= end
        assert (rng.start <= t < rng.end) == inside
        assert (rng.start_ts <= _ts(t) < rng.end_ts) == inside


@given(
    start=st.dates(), end=st.dates(), padded=st.booleans()
)
def test_any_pair_of_calendar_dates_gives_a_range_or_a_range_error(start, end, padded):
    params = {"start_date": start.isoformat(), "end_date": end.isoformat()}
    if padded:
        params = {k: f" {v} " for k, v in params.items()}
    if start > end:
        with pytest.raises(RangeError, match="is after"):
            range_from_params(params)
        return
    try:
        rng = range_from_params(params)
    except RangeError as exc:
        assert end == dt.date.max and "end_date" in str(exc)
        return
    assert rng.first_date == start and rng.last_date == end
    assert rng.start_ts == f"{start.isoformat()} 00:00:00"
    assert rng.end_ts == f"{(end + DAY).isoformat()} 00:00:00"


@given(start=all_years, back=st.integers(1, 4000))
def test_start_after_end_is_refused(start, back):
    end = start - back * DAY
    with pytest.raises(RangeError, match="is after"):
        range_from_params({"start_date": start.isoformat(), "end_date": end.isoformat()})


@given(day=any_date, given_name=st.sampled_from(["start_date", "end_date"]), blank=st.sampled_from([None, "", "  "]))
def test_half_given_params_are_refused(day, given_name, blank):
    other = "end_date" if given_name == "start_date" else "start_date"
    params = {given_name: day.isoformat(), other: blank}
    with pytest.raises(RangeError, match=f"{other} is missing"):
        resolve_run_range(params, dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2))


@given(
    start=st.builds(dt.datetime.combine, any_date, st.times().map(lambda t: t.replace(microsecond=0))),
    length=st.integers(1, 5 * 86_400),
    offset_hours=st.integers(-12, 14),
)
def test_data_interval_is_half_open_and_lists_the_days_it_touches(start, length, offset_hours):
    end = start + length * SECOND
    tz = dt.timezone(dt.timedelta(hours=offset_hours))
    # The same instants in another time zone: the range is in UTC whatever zone they carry.
    local_start = start.replace(tzinfo=dt.timezone.utc).astimezone(tz)
    local_end = end.replace(tzinfo=dt.timezone.utc).astimezone(tz)
    rng = resolve_run_range({}, local_start, local_end)
    assert (rng.start, rng.end) == (start, end)
    touched = rng.dates()
    assert touched == sorted(set(touched))
    first, last = dt.date.fromisoformat(touched[0]), dt.date.fromisoformat(touched[-1])
    assert touched == [(first + i * DAY).isoformat() for i in range((last - first).days + 1)]
    for day in [first - DAY, *map(dt.date.fromisoformat, touched), last + DAY]:
        day_start = dt.datetime.combine(day, dt.time())
        overlaps = day_start < end and start < day_start + DAY
        assert overlaps == (day.isoformat() in touched)


@given(start=any_date, length=st.integers(0, 40), data=st.data())
def test_a_daily_split_covers_exactly_the_range(start, length, data):
    end = start + length * DAY
    whole = range_from_params({"start_date": start.isoformat(), "end_date": end.isoformat()})
    days = [start + i * DAY for i in range(length + 1)]
    by_params = [range_from_params({"start_date": d.isoformat(), "end_date": d.isoformat()}) for d in days]
    # A scheduled daily run's data interval is the same day as a one-day manual run.
    by_interval = [
        resolve_run_range({}, dt.datetime.combine(d, dt.time()), dt.datetime.combine(d + DAY, dt.time()))
        for d in days
    ]
    assert by_params == by_interval
    assert by_params[0].start == whole.start and by_params[-1].end == whole.end
    assert all(a.end == b.start for a, b in zip(by_params, by_params[1:])), "no gap, no overlap"
    for t in data.draw(st.lists(timestamps_near(start, length), min_size=1, max_size=30)):
        text = _ts(t)
        hits = sum(r.start_ts <= text < r.end_ts for r in by_params)
        assert hits == (1 if whole.start_ts <= text < whole.end_ts else 0)


@given(start=st.datetimes(dt.datetime(1990, 1, 1), dt.datetime(2030, 12, 31)))
def test_an_empty_range_is_refused(start):
    with pytest.raises(RangeError, match="empty"):
        RunRange(start, start)
    with pytest.raises(RangeError, match="empty"):
        resolve_run_range({}, start, start - SECOND)


# --- 2. journeys, report and convergence over random databases -----------------------------------


def result_tables(path: Path) -> dict[str, list[tuple]]:
    """The outputs that must converge, in a canonical order (float sums rounded)."""
    with sqlite3.connect(path) as conn:
        return {
            "attribution": conn.execute(
                "SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2"
            ).fetchall(),
            "reporting": conn.execute(
                "SELECT channel_name, date, round(cost, 6), round(ihc, 6), round(ihc_revenue, 6) "
                "FROM channel_reporting ORDER BY 1, 2"
            ).fetchall(),
            "issues": conn.execute("SELECT conv_id, reason, detail FROM attribution_issues ORDER BY 1, 2").fetchall(),
        }


def build(tmp: str, data: SourceData, name: str = "db.sqlite") -> Path:
    return make_db(Path(tmp) / name, data.sessions, data.conversions, data.costs)


def conversions_in_range(path: Path, start_ts: str, end_ts: str) -> set[str]:
    c = read_table(path, "conversions")
    ts = c["conv_date"] + " " + c["conv_time"]
    return set(c.loc[(ts >= start_ts) & (ts < end_ts), "conv_id"])


def assert_report_matches(path: Path, report_dates: set[str]) -> None:
    expected = expected_report(path, report_dates)
    got = read_table(path, "channel_reporting")
    exp = {(r.channel_name, r.date): (r.cost, r.ihc, r.ihc_revenue) for r in expected.itertuples()}
    out = {(r.channel_name, r.date): (r.cost, r.ihc, r.ihc_revenue) for r in got.itertuples()}
    assert out.keys() == exp.keys()
    for key, values in exp.items():
        assert out[key] == pytest.approx(values, abs=1e-9), key


def test_a_conversion_before_the_year_1000_is_handled_by_its_run(tmp_path):
    # Regression: the range's timestamps were written "999-01-01 00:00:00", so this conversion
    # was compared against them as text, fell outside, and was silently not handled.
    path = make_db(
        tmp_path / "db.sqlite",
        [("s1", "u1", "0999-01-01", "10:00:00", "Direct Traffic")],
        [("c1", "u1", "0999-01-02", "10:00:00", 5.0)],
        [("s1", 1.0)],
    )
    summary = run_pipeline(path, "r1", "0999-01-01", "0999-01-02")
    assert (summary.conversions, summary.attributed) == (1, 1)
    assert read_table(path, "channel_reporting").values.tolist() == [["Direct Traffic", "0999-01-01", 1.0, 1.0, 5.0]]


@pytest.mark.slow
@settings(max_examples=PIPELINE_EXAMPLES)
@given(data=source_data())
def test_one_run_matches_the_independent_recomputation(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = build(tmp, data)
        client = FakeIhcClient()
        summary = run_pipeline(
            path, "r1", data.start_date, data.end_date, client, max_journeys=3, lookback_days=data.lookback_days
        )
        order = expected_journey_order(path, data.start_ts, data.end_ts, data.lookback_days)
        credit = expected_credit(path, data.start_ts, data.end_ts, data.lookback_days)

        got = read_table(path, "attribution_customer_journey")
        assert {(r.conv_id, r.session_id): r.ihc for r in got.itertuples()} == credit

        # The conversion flag sent: exactly one per journey, on the latest session (ties: the
        # larger session id).
        sent: dict[str, list[dict]] = {}
        for request in client.sent:
            for row in request.rows:
                sent.setdefault(row["conversion_id"], []).append(row)
        assert sent.keys() == {cid for cid, sids in order.items() if sids}
        for cid, rows in sent.items():
            latest = max(rows, key=lambda r: (r["timestamp"], r["session_id"]))
            event(f"latest session tied: {sum(r['timestamp'] == latest['timestamp'] for r in rows) > 1}")
            assert [r["session_id"] for r in rows if r["conversion"] == 1] == [latest["session_id"]], cid

        issues = read_table(path, "attribution_issues")
        assert dict(zip(issues["conv_id"], issues["reason"])) == {
            cid: journeys.NO_SESSIONS for cid, sids in order.items() if not sids
        }

        # Report rows: the run's own days, and every day its conversions credited.
        sessions = read_table(path, "session_sources").set_index("session_id")
        credited = {sessions.at[sid, "event_date"] for _, sid in credit}
        assert_report_matches(path, set(data.days()) | credited)

        assert summary.conversions == len(order)
        event(f"journeys attributed: {min(len(sent), 5)}{'+' if len(sent) >= 5 else ''}")
        event(f"sessions credited on days outside the range: {bool(credited - set(data.days()))}")
        assert summary.attributed == sum(1 for sids in order.values() if sids)


@pytest.mark.slow
@settings(max_examples=PIPELINE_EXAMPLES)
@given(data=source_data(), order=st.randoms(use_true_random=False), repeats=st.lists(st.integers(0, 4), max_size=4))
def test_daily_runs_in_any_order_and_repeated_equal_one_run_over_the_range(data, order, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        base = build(tmp, data, "base.sqlite")
        whole = Path(tmp) / "whole.sqlite"
        shutil.copy(base, whole)
        run_pipeline(whole, "range", data.start_date, data.end_date, lookback_days=data.lookback_days)

        daily = Path(tmp) / "daily.sqlite"
        shutil.copy(base, daily)
        days = data.days()
        shuffled = days[:]
        order.shuffle(shuffled)
        for day in shuffled:
            run_pipeline(daily, f"scheduled__{day}", day, day, max_journeys=2, lookback_days=data.lookback_days)
        after_one_pass = result_tables(daily)
        for i in repeats:
            day = days[i % len(days)]
            run_pipeline(daily, f"scheduled__{day}", day, day, lookback_days=data.lookback_days)
        assert result_tables(daily) == after_one_pass, "re-running a day changes nothing"
        expected = result_tables(whole)
        assert after_one_pass["attribution"] == expected["attribution"]
        assert after_one_pass["reporting"] == expected["reporting"]
        assert [i[:2] for i in after_one_pass["issues"]] == [i[:2] for i in expected["issues"]]


@pytest.mark.slow
@settings(max_examples=PIPELINE_EXAMPLES)
@given(data=source_data(), max_sessions=st.sampled_from([2, 3, 3000]), policy=st.sampled_from(["truncate", "skip"]))
def test_every_conversion_of_the_range_is_attributed_or_recorded(data, max_sessions, policy):
    with tempfile.TemporaryDirectory() as tmp:
        path = build(tmp, data)
        client = FakeIhcClient()
        run_pipeline(
            path, "r1", data.start_date, data.end_date, client,
            max_sessions=max_sessions, policy=policy, lookback_days=data.lookback_days,
        )
        in_range = conversions_in_range(path, data.start_ts, data.end_ts)
        attribution = read_table(path, "attribution_customer_journey")
        sums = attribution.groupby("conv_id")["ihc"].sum()
        issues = read_table(path, "attribution_issues")
        assert issues["reason"].notna().all() and issues["reason"].str.len().gt(0).all()
        recorded = set(issues["conv_id"])
        attributed = set(sums.index)
        assert attributed | recorded == in_range, "each conversion of the range and no other"
        assert sums.sub(1).abs().le(1e-9).all(), "an attributed journey's credit sums to 1"
        both = attributed & recorded
        assert set(issues.loc[issues["conv_id"].isin(both), "reason"]) <= {journeys.OVERSIZED}
        if policy == "skip":
            assert not both, "a skipped journey is not attributed"
        sent = {len({r["session_id"] for r in req.rows}) for req in client.sent}
        assert all(n <= max_sessions for n in sent)


@pytest.mark.slow
@settings(max_examples=PIPELINE_EXAMPLES)
@given(data=source_data(), run_id=st.sampled_from(["manual__1", "scheduled__x"]))
def test_rerunning_a_run_changes_nothing(data, run_id):
    with tempfile.TemporaryDirectory() as tmp:
        path = build(tmp, data)
        # Another run's outputs are in place first, so the re-run has something to disturb.
        other_end = dt.date.fromisoformat(data.end_date) + 3 * DAY
        run_pipeline(path, "other", data.start_date, other_end.isoformat(), lookback_days=data.lookback_days)
        first = run_pipeline(path, run_id, data.start_date, data.end_date, lookback_days=data.lookback_days)
        tables = result_tables(path)
        again = FakeIhcClient()
        second = run_pipeline(path, run_id, data.start_date, data.end_date, again, lookback_days=data.lookback_days)
        assert result_tables(path) == tables
        assert again.sent == [], "answers of unchanged journeys are reused"
        assert (second.conversions, second.attributed, second.issues_by_reason) == (
            first.conversions, first.attributed, first.issues_by_reason,
        )


# Changes a loader or a correction makes between runs, each applied to a row picked by number.
CHANGE_KINDS = (
    "delete session", "insert session", "session date", "session user", "channel", "cost", "revenue",
    "conversion date", "conversion user", "delete conversion", "insert conversion", "duplicate session",
    "duplicate conversion", "duplicate cost",
)


def _change_source(conn: sqlite3.Connection, kind: str, pick: int, shift: int, n: int) -> None:
    """Apply one change of ``kind`` (a duplicate is a no-op where the source has its key)."""
    sessions = [r for r in conn.execute("SELECT session_id, user_id, event_date FROM session_sources ORDER BY rowid")]
    convs = [r for r in conn.execute("SELECT conv_id, user_id, conv_date FROM conversions ORDER BY rowid")]
    sid, user, date = sessions[pick % len(sessions)] if sessions else ("none", "u0", "2024-01-01")
    other_user = sessions[(pick * 7 + 3) % len(sessions)][1] if sessions else "u0"
    conv_id, _, conv_date = convs[pick % len(convs)] if convs else ("none", "u0", date)
    days = f"{shift:+d} days"
    statements = {
        "delete session": [("DELETE FROM session_sources WHERE session_id = ?", (sid,))],
        "insert session": [
            ("INSERT INTO session_sources VALUES (?, ?, date(?, ?), ?, ?, 1, 0, 0)",
             (f"new{n}", user, conv_date, days, TIMES[pick % len(TIMES)], CHANNELS[pick % len(CHANNELS)])),
            ("INSERT INTO session_costs VALUES (?, ?)", (f"new{n}", 0.5 * (pick % 5))),
        ],
        "session date": [("UPDATE session_sources SET event_date = date(event_date, ?) WHERE session_id = ?", (days, sid))],
        "session user": [("UPDATE session_sources SET user_id = ? WHERE session_id = ?", (other_user, sid))],
        "channel": [("UPDATE session_sources SET channel_name = ? WHERE session_id = ?", (f"Changed {pick % 2}", sid))],
        "cost": [("DELETE FROM session_costs WHERE session_id = ?", (sid,)),
                 ("INSERT INTO session_costs VALUES (?, ?)", (sid, 7.25 + shift))],
        "revenue": [("UPDATE conversions SET revenue = revenue + ? WHERE conv_id = ?", (10.5 + shift, conv_id))],
        "conversion date": [("UPDATE conversions SET conv_date = date(conv_date, ?) WHERE conv_id = ?", (days, conv_id))],
        "conversion user": [("UPDATE conversions SET user_id = ? WHERE conv_id = ?", (other_user, conv_id))],
        "delete conversion": [("DELETE FROM conversions WHERE conv_id = ?", (conv_id,))],
        "insert conversion": [("INSERT INTO conversions VALUES (?, ?, date(?, ?), '23:59:59', 33.3)",
                               (f"cnew{n}", user, conv_date, f"{abs(shift) - 1:+d} days"))],
        "duplicate session": [("INSERT OR IGNORE INTO session_sources SELECT * FROM session_sources WHERE session_id = ?",
                               (sid,))],
        "duplicate conversion": [("INSERT OR IGNORE INTO conversions SELECT * FROM conversions WHERE conv_id = ?",
                                  (conv_id,))],
        "duplicate cost": [("INSERT OR IGNORE INTO session_costs SELECT * FROM session_costs WHERE session_id = ?",
                            (sid,))],
    }
    for sql, params in statements[kind]:
        conn.execute(sql, params)


def _attribution_by_conversion(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT a.conv_id, a.session_id, a.ihc, c.date, c.channel_name, c.revenue_micros "
            "FROM attribution_customer_journey a JOIN attribution_credit c USING (conv_id, session_id) ORDER BY 1, 2"
        ).fetchall()
    out: dict[str, list[tuple]] = {}
    for conv_id, *rest in rows:
        out.setdefault(conv_id, []).append(tuple(rest))
    return out


@pytest.mark.slow
@settings(max_examples=PIPELINE_EXAMPLES)
@given(
    data=source_data(),
    keys=st.booleans(),
    changes=st.lists(st.tuples(st.sampled_from(CHANGE_KINDS), st.integers(0, 100), st.sampled_from([-2, -1, 1, 2])),
                     min_size=1, max_size=5),
    pick_day=st.integers(0, 10),
)
def test_random_source_changes_then_re_running_the_reported_days_equals_a_fresh_run(data, keys, changes, pick_day):
    """After any changes to the sources, one day's run with ``reattribute_drift`` leaves every
    attributed conversion as a fresh run on the changed sources attributes it (what it does not
    re-attribute did not change), and re-running the reported days leaves the tables of that
    fresh run, exactly."""
    with tempfile.TemporaryDirectory() as tmp:
        ddl = source_ddl(keys=keys)
        rerun = make_db(Path(tmp) / "rerun.sqlite", data.sessions, data.conversions, data.costs, ddl=ddl)
        fresh = make_db(Path(tmp) / "fresh.sqlite", data.sessions, data.conversions, data.costs, ddl=ddl)
        options = {"lookback_days": data.lookback_days}
        run_pipeline(rerun, "r1", data.start_date, data.end_date, **options)
        for path in (rerun, fresh):
            with sqlite3.connect(path) as conn:
                for n, (kind, pick, shift) in enumerate(changes):
                    _change_source(conn, kind, pick, shift, n)
        run_pipeline(fresh, "r1", data.start_date, data.end_date, **options)
        expected = _attribution_by_conversion(fresh)

        day = data.days()[pick_day % len(data.days())]
        one_day = run_pipeline(rerun, f"day_{day}", day, day, reattribute_drift=True, **options)
        event(f"days re-attributed: {min(len(one_day.reattributed_days), 2)}")
        assert one_day.changed_days == []
        for conv_id, rows in _attribution_by_conversion(rerun).items():
            assert rows == expected.get(conv_id), f"{conv_id} changed and was not re-attributed"

        run_pipeline(rerun, "again", data.start_date, data.end_date, refresh_spend=True, reattribute_drift=True,
                     **options)
        got, want = result_tables(rerun), result_tables(fresh)
        assert got["attribution"] == want["attribution"]
        assert got["issues"] == want["issues"]
        assert _attribution_by_conversion(rerun) == expected
        # Every report row is up to date; dates earlier runs credited and none credits now keep a
        # row of spend only.
        assert set(want["reporting"]) <= set(got["reporting"])
        dates = set(read_table(rerun, "channel_reporting")["date"])
        assert_report_matches(rerun, dates)
