"""Paths to conversion and the journey distributions: tables of cases, then both databases.

The expected values are written out by hand here; the report page's test recomputes them on
generated data with pandas (``report_ui/test_report_view.py``).
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from ihc_attribution import schema
from ihc_attribution.db import Database
from ihc_attribution.journey_stats import (
    LENGTH_BUCKETS,
    TIME_BUCKETS,
    collapse,
    journeys,
    read_journey_stats,
    summarize,
)

CONV_TS = "2024-01-10 12:00:00"


def row(conv: str, session: str, ts: str, channel: str, *, conv_ts: str | None = CONV_TS,
        micros: int = 10_000_000) -> tuple:
    """A credit row as :func:`journeys` reads it."""
    return (conv, conv_ts, ts, session, channel, micros)


def counts(buckets) -> dict[str, int]:
    return {b.label: b.conversions for b in buckets if b.conversions}


@pytest.mark.parametrize(("channels", "path"), [
    ([], ()),
    (["A"], ("A",)),
    (["A", "A", "A"], ("A",)),
    (["A", "B", "A"], ("A", "B", "A")),
    (["A", "A", "B", "B", "A", "C", "C"], ("A", "B", "A", "C")),
    (["", "", "Email"], ("", "Email")),
])
def test_consecutive_repeats_collapse_into_one_step(channels, path):
    assert collapse(channels) == path


def test_sessions_are_ordered_by_timestamp_then_id_whatever_the_row_order():
    rows = [
        row("c1", "s3", "2024-01-09 08:00:00", "Email"),
        row("c1", "s9", "2024-01-10 11:00:00", "Direct"),
        row("c1", "s10", "2024-01-10 11:00:00", "Paid Search"),  # same time: "s10" sorts before "s9"
        row("c1", "s1", "2024-01-02 08:00:00", "Email"),
        row("c1", "s2", "2024-01-05 08:00:00", "Email"),
    ]
    for seed in range(5):
        random.Random(seed).shuffle(rows)
        (journey,) = journeys(rows)
        assert journey.path == ("Email", "Paid Search", "Direct")
        assert journey.sessions == 5
        assert journey.seconds == (8 * 86400 + 4 * 3600)  # from 2024-01-02 08:00 to the conversion


@pytest.mark.parametrize(("seconds", "label"), [
    (0, "under 1 hour"), (3599, "under 1 hour"), (3600, "1 to 24 hours"), (86399, "1 to 24 hours"),
    (86400, "1 to 7 days"), (7 * 86400 - 1, "1 to 7 days"), (7 * 86400, "7 to 30 days"),
    (30 * 86400 - 1, "7 to 30 days"), (30 * 86400, "30 days or more"), (400 * 86400, "30 days or more"),
])
def test_a_time_bucket_includes_its_lower_bound(seconds, label):
    first = dt.datetime.fromisoformat(CONV_TS) - dt.timedelta(seconds=seconds)
    stats = summarize(journeys([row("c1", "s1", first.isoformat(sep=" "), "Email")]))
    assert counts(stats.times) == {label: 1}
    assert [b.label for b in stats.times] == [label for _, label in TIME_BUCKETS], "every bucket, empty ones too"


@pytest.mark.parametrize(("sessions", "label"), [
    (1, "1"), (2, "2"), (3, "3"), (4, "4-5"), (5, "4-5"), (6, "6-10"), (10, "6-10"), (11, "11-20"),
    (20, "11-20"), (21, "21 or more"), (170, "21 or more"),
])
def test_journey_length_counts_every_session_repeats_included(sessions, label):
    rows = [row("c1", f"s{i:03d}", f"2024-01-10 {i // 60:02d}:{i % 60:02d}:00", "Email") for i in range(sessions)]
    stats = summarize(journeys(rows))
    assert counts(stats.lengths) == {label: 1}
    assert [b.label for b in stats.lengths] == [label for _, label in LENGTH_BUCKETS]
    assert [p.channels for p in stats.paths] == [("Email",)]


def test_a_conversion_without_a_timestamp_counts_everywhere_but_in_time():
    stats = summarize(journeys([row("c1", "s1", "2024-01-10 09:00:00", "Email", conv_ts=None),
                                row("c2", "s2", "2024-01-10 11:30:00", "Email")]))
    assert stats.conversions == 2 and stats.untimed == 1
    assert counts(stats.times) == {"under 1 hour": 1}
    assert counts(stats.lengths) == {"1": 2}


def test_paths_rank_by_conversions_then_revenue_then_channels():
    rows = [
        row("c1", "s1", "2024-01-10 09:00:00", "B", micros=5_000_000),
        row("c2", "s2", "2024-01-10 09:00:00", "A", micros=5_000_000),
        row("c3", "s3", "2024-01-09 09:00:00", "A", micros=1_000_000),
        row("c3", "s4", "2024-01-10 09:00:00", "B", micros=1_000_000),
        row("c4", "s5", "2024-01-10 09:00:00", "C", micros=9_000_000),
        row("c5", "s6", "2024-01-09 09:00:00", "A", micros=1_000_000),
        row("c5", "s7", "2024-01-10 09:00:00", "B", micros=1_000_000),
    ]
    stats = summarize(journeys(rows))
    assert [(p.channels, p.conversions, p.revenue_micros) for p in stats.paths] == [
        (("A", "B"), 2, 2_000_000), (("C",), 1, 9_000_000), (("A",), 1, 5_000_000), (("B",), 1, 5_000_000)]
    assert [p.label for p in stats.top(2)] == ["A > B", "C"]
    assert stats.share(2) == Decimal("40.0")


def test_revenue_counts_once_per_conversion_exactly():
    rows = [row("c1", f"s{i}", f"2024-01-10 0{i}:00:00", "Email", micros=12_345_678) for i in range(3)]
    rows += [row("c2", "s9", "2024-01-10 09:00:00", "Email", micros=1)]
    stats = summarize(journeys(rows))
    assert stats.revenue_micros == 12_345_679
    assert stats.revenue == Decimal("12.35") and stats.paths[0].revenue == Decimal("12.35")


# --- the database ------------------------------------------------------------------------------

CREDIT_COLUMNS = ("conv_id, conv_date, conv_ts, session_id, session_ts, date, channel_name, revenue_micros, ihc_e4, "
                  "ihc_revenue_micros, first_touch_e4, last_touch_e4, linear_e4, position_e4")
# c1 converts on 2024-01-05 after a session four days earlier; c2 on 2024-01-07; c3 on 2024-01-05
# with two sessions at the same second, whose ids sort differently under a linguistic collation.
JOURNEYS = [
    ("c1", "2024-01-05 10:00:00", "s1", "2024-01-01 09:00:00", "Email", 20_000_000),
    ("c1", "2024-01-05 10:00:00", "s2", "2024-01-05 09:30:00", "Paid Search", 20_000_000),
    ("c2", "2024-01-07 18:00:00", "s3", "2024-01-07 17:45:00", "Direct", 7_500_000),
    ("c3", "2024-01-05 23:00:00", "B1", "2024-01-05 20:00:00", "Direct", 1_000_000),
    ("c3", "2024-01-05 23:00:00", "a2", "2024-01-05 20:00:00", "Email", 1_000_000),
]


def credit_rows() -> list[tuple]:
    return [(conv, conv_ts[:10], conv_ts, session, ts, ts[:10], channel, micros, 10_000, micros, 0, 0, 0, 0)
            for conv, conv_ts, session, ts, channel, micros in JOURNEYS]


def fill(db: Database) -> None:
    db.executescript(schema.challenge_ddl())
    schema.ensure_schema(db)
    with db.transaction():
        db.executemany(f"INSERT INTO attribution_credit ({CREDIT_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                       credit_rows())


@pytest.fixture
def lite(tmp_path: Path) -> Database:
    db = Database.connect_sqlite(str(tmp_path / "credit.db"))
    fill(db)
    yield db
    db.close()


def test_the_selection_is_by_conversion_date_with_whole_journeys(lite):
    stats = read_journey_stats(lite, "2024-01-05", "2024-01-05")
    assert {p.channels: p.conversions for p in stats.paths} == {("Email", "Paid Search"): 1, ("Direct", "Email"): 1}
    assert counts(stats.times) == {"1 to 7 days": 1, "1 to 24 hours": 1}
    assert stats.revenue_micros == 21_000_000
    assert read_journey_stats(lite, "2024-01-01", "2024-01-04").conversions == 0, "sessions' dates do not select"


@pytest.mark.parametrize(("channels", "paths"), [
    (["Email"], {("Email", "Paid Search"), ("Direct", "Email")}),
    (["Paid Search"], {("Email", "Paid Search")}),
    (["Direct", "Paid Search"], {("Email", "Paid Search"), ("Direct", "Email"), ("Direct",)}),
    (["Nobody"], set()),
])
def test_a_channel_keeps_the_conversions_it_touched_with_their_whole_paths(lite, channels, paths):
    stats = read_journey_stats(lite, "2024-01-01", "2024-01-31", channels)
    assert {p.channels for p in stats.paths} == paths


def test_postgres_gives_the_same_stats_as_sqlite(lite):
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    name = "journey_stats_" + uuid.uuid4().hex[:10]
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
        cur.execute(f"SET search_path TO {name}")
    try:
        pg = Database(conn)
        fill(pg)
        for channels in ((), ("Email",), ("Direct", "Paid Search")):
            assert read_journey_stats(pg, "2024-01-01", "2024-01-31", channels) == \
                read_journey_stats(lite, "2024-01-01", "2024-01-31", channels)
        assert ("Direct", "Email") in {p.channels for p in read_journey_stats(pg, "2024-01-05", "2024-01-05").paths}
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        conn.close()


def test_sqlite_reads_through_the_report_pages_read_only_connection(tmp_path, lite):
    from ihc_attribution.report_ui.sources import ReportDb

    path = lite.sqlite_file()
    ro = ReportDb(sqlite3.connect(f"file:{path}?mode=ro", uri=True), "test")
    try:
        assert read_journey_stats(ro, "2024-01-01", "2024-01-31") == read_journey_stats(lite, "2024-01-01", "2024-01-31")
    finally:
        ro.close()
