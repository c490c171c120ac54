"""Bad and awkward input, one case per row: a correct result, or a recorded reason that the run
summary counts. Nothing is dropped silently and the source tables are never modified.

Every case runs all stages against the local IHC server over HTTP and is checked twice: against
what the case says (journeys, issues, warnings) and against invariants that hold for any input
(report equal to an independent recomputation, every conversion attributed or recorded, the
CSV equal to the report, source tables unchanged).
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import pytest
from ihc_attribution.errors import PermanentFailure

from ihc_attribution import schema, tasks
from ihc_attribution.daterange import RangeError
from ihc_attribution.errors import PermanentError
from ihc_attribution.ihc.client import IhcClient
from ihc_attribution_dev.server.config import ServerConfig
from ihc_attribution_dev.server.testing import serve
from tests.helpers import expected_report, make_db, read_table, run_pipeline, source_ddl
from tests.reliability.support import API_KEY, db_digest, source_tables

DAY = "2024-01-10"
NO_WARNINGS = {
    "sessions_without_cost_row": 0,
    "null_costs": 0,
    "negative_costs": 0,
    "unusable_costs": 0,
    "sessions_without_channel": 0,
    "duplicated_session_ids": 0,
}


@dataclass
class Case:
    """Source rows, the run's range, and what must come out."""

    sessions: list[tuple] = field(default_factory=list)
    conversions: list[tuple] = field(default_factory=list)
    #: None: every session gets a cost row of 1.0.
    costs: list[tuple] | None = None
    start: str = DAY
    end: str = DAY
    max_sessions: int = 3000
    #: conv_id -> session ids of its attributed journey
    attributed: dict[str, set[str]] = field(default_factory=dict)
    #: conv_id -> reason recorded in attribution_issues
    issues: dict[str, str] = field(default_factory=dict)
    #: source_warnings that are not 0
    warnings: dict[str, int] = field(default_factory=dict)
    check: Callable | None = None
    #: the schema of the source tables (default: the challenge DDL)
    ddl: str | None = None


def s(session_id, user, date, time, channel="Referral", holder=1, closer=1, impression=0):
    return (session_id, user, date, time, channel, holder, closer, impression)


def conv(conv_id, user, date=DAY, time="12:00:00", revenue=10.0):
    return (conv_id, user, date, time, revenue)


AWKWARD_CHANNELS = [
    "Paid, Search", 'Say "hi"', "multi\nline", "Ünïcødé Ådş 広告", "=HYPERLINK(\"x\")", "+49 Call", "-minus",
    "@handle", "'quoted'",
]


def _check_awkward_channels(db, rows):
    stored = {name for (name,) in sqlite3.connect(db).execute("SELECT DISTINCT channel_name FROM channel_reporting")}
    assert stored == set(AWKWARD_CHANNELS), "channel names are stored exactly"
    assert {r["channel_name"] for r in rows} == set(AWKWARD_CHANNELS), "and written to the CSV exactly"
    assert all(r["ihc"] != "0.0000" for r in rows), "every awkward channel got its credit"


def assert_rows(rows, expected):
    assert sorted((r["channel_name"], r["cost"]) for r in rows) == expected


def _check_negative_and_null_costs(db, rows):
    assert [(r["channel_name"], r["cost"]) for r in rows] == [("Referral", "-1.50")]
    assert rows[0]["ROAS"] != "" and rows[0]["CPO"] != ""


def _check_spend_only(db, rows):
    assert rows and all(r["ihc"] == "0.0000" and r["CPO"] == "" for r in rows)


def _check_year(db, rows):
    assert {r["date"] for r in rows} == {"2024-01-01", "2024-06-15", "2024-12-31"}


CASES = {
    # --- malformed values: recorded with the reason, never sent ---
    "conversion-date-malformed": Case(
        [s("s1", "u1", "2024-01-05", "10:00:00"), s("s2", "u2", "2024-01-05", "10:00:00")],
        [conv("c1", "u1", date="2024/01/10"), conv("c2", "u2")],
        attributed={"c2": {"s2"}}, issues={"c1": "invalid_input"},
    ),
    "conversion-date-impossible": Case(
        [s("s1", "u1", "2024-02-20", "10:00:00")],
        [conv("c1", "u1", date="2024-02-30")],
        start="2024-02-29", end="2024-03-01", issues={"c1": "invalid_input"},
    ),
    "conversion-dates-impossible": Case(
        [s("s1", "u1", "2023-09-05", "10:00:00"), s("s2", "u2", "2023-09-05", "10:00:00")],
        [conv("sep31", "u1", date="2023-09-31"), conv("month13", "u1", date="2023-13-01"),
         conv("zeros", "u1", date="0000-00-00"), conv("fullwidth", "u1", date="２０２３-０９-１０"),
         conv("ok", "u2", date="2023-09-10")],
        start="2023-09-01", end="2023-09-30",
        attributed={"ok": {"s2"}},
        issues={"sep31": "unplaceable_conversion", "month13": "unplaceable_conversion",
                "zeros": "unplaceable_conversion", "fullwidth": "unplaceable_conversion"},
    ),
    "conversion-date-with-a-time-zone": Case(
        [s("s1", "u1", "2024-01-05", "10:00:00"), s("s2", "u2", "2024-01-05", "10:00:00")],
        [conv("tz", "u1", date="2024-01-10T10:00:00Z"), conv("later", "u1", date="2024-03-05", time="10:00:00+01:00"),
         conv("c2", "u2")],
        attributed={"c2": {"s2"}}, issues={"tz": "invalid_input"},
    ),
    "conversion-without-id": Case(
        [s("s1", "u1", "2024-01-05", "10:00:00"), s("s2", "u2", "2024-01-05", "10:00:00")],
        [conv(None, "u1"), conv("c2", "u2")],
        attributed={"c2": {"s2"}}, issues={"(no conv_id #1: user u1 at 2024-01-10 12:00:00)": "invalid_input"},
    ),
    "conversion-id-present-twice": Case(
        [s("s1", "u1", "2024-01-05", "10:00:00"), s("s2", "u2", "2024-01-05", "10:00:00")],
        [conv("twice", "u1"), conv("twice", "u1", revenue=20.0), conv("c2", "u2")],
        attributed={"c2": {"s2"}}, issues={"twice": "duplicate_conversion"},
        ddl=source_ddl(keys=False),
    ),
    "conversion-id-present-twice-once-outside-the-range": Case(
        [s("s1", "u1", "2024-01-05", "10:00:00"), s("s2", "u2", "2024-01-05", "10:00:00")],
        [conv("twice", "u1"), conv("twice", "u1", date="2024-02-01"), conv("c2", "u2")],
        attributed={"c2": {"s2"}}, issues={"twice": "duplicate_conversion"},
        ddl=source_ddl(keys=False),
    ),
    "session-without-id": Case(
        [s(None, "u1", "2024-01-05", "10:00:00"), s("s1", "u1", "2024-01-06", "10:00:00"),
         s("s2", "u2", "2024-01-05", "10:00:00")],
        [conv("c1", "u1"), conv("c2", "u2")],
        costs=[("s1", 1.0), ("s2", 1.0)],
        attributed={"c2": {"s2"}}, issues={"c1": "invalid_input"},
    ),
    "session-id-present-twice-in-a-journey": Case(
        [s("s1", "u1", "2024-01-05", "10:00:00"), s("s1", "u1", "2024-01-05", "10:00:00"),
         s("s2", "u2", "2024-01-05", "10:00:00")],
        [conv("c1", "u1"), conv("c2", "u2")],
        costs=[("s1", 1.0), ("s2", 1.0)],
        attributed={"c2": {"s2"}}, issues={"c1": "invalid_input"},
        ddl=source_ddl(keys=False),
    ),
    "session-and-cost-rows-present-twice-outside-any-journey": Case(
        [s("s1", "u1", DAY, "08:00:00"), s("twice", "u9", DAY, "09:00:00"), s("twice", "u9", DAY, "09:00:00")],
        [conv("c1", "u1")],
        costs=[("s1", 1.0), ("twice", 0.75), ("twice", 0.75)],
        attributed={"c1": {"s1"}},
        warnings={"duplicated_session_ids": 1},
        check=lambda db, rows: assert_rows(rows, [("Referral", "1.75")]),
        ddl=source_ddl(keys=False),
    ),
    "integer-ids": Case(
        [s(1, 10, "2024-01-05", "10:00:00"), s(2, 10, "2024-01-09", "10:00:00"), s(3, 20, "2024-01-05", "10:00:00")],
        [conv(100, 10), conv(200, 20), conv(300, 30)],
        attributed={"100": {"1", "2"}, "200": {"3"}}, issues={"300": "no_sessions"},
        ddl=source_ddl(id_type="INTEGER"),
    ),
    "conversion-date-unreadable": Case(
        [s("s1", "u1", "2024-01-05", "10:00:00")],
        [conv("c1", "u1", date="last tuesday")],
        issues={"c1": "unplaceable_conversion"},
    ),
    "conversion-time-malformed": Case(
        [s("s1", "u1", "2024-01-05", "10:00:00")],
        [conv("c1", "u1", time="7:00")],
        issues={"c1": "invalid_input"},
    ),
    "session-date-and-time-malformed": Case(
        [s("ok1", "u1", "2024-01-05", "10:00:00"), s("bad1", "u1", "2024-1-06", "10:00:00"),
         s("ok2", "u2", "2024-01-05", "10:00:00"), s("bad2", "u2", "2024-01-06", "24:00:00"),
         s("ok3", "u3", "2024-01-05", "10:00:00")],
        [conv("c1", "u1"), conv("c2", "u2"), conv("c3", "u3")],
        attributed={"c3": {"ok3"}}, issues={"c1": "invalid_input", "c2": "invalid_input"},
    ),
    "flags-not-0-or-1": Case(
        [s("a", "u1", "2024-01-05", "10:00:00", holder=2), s("b", "u2", "2024-01-05", "10:00:00", closer=None),
         s("c", "u3", "2024-01-05", "10:00:00", impression="yes"), s("d", "u4", "2024-01-05", "10:00:00", holder=-1),
         s("e", "u5", "2024-01-05", "10:00:00", holder=1.0, closer=0.0)],
        [conv("c1", "u1"), conv("c2", "u2"), conv("c3", "u3"), conv("c4", "u4"), conv("c5", "u5")],
        attributed={"c5": {"e"}},
        issues={"c1": "invalid_input", "c2": "invalid_input", "c3": "invalid_input", "c4": "invalid_input"},
    ),
    # --- costs: reported as the design says, and counted ---
    "null-and-negative-costs": Case(
        [s("s1", "u1", DAY, "08:00:00"), s("s2", "u1", DAY, "09:00:00"), s("s3", "u2", DAY, "09:00:00")],
        [conv("c1", "u1")],
        costs=[("s1", None), ("s2", -2.5), ("s3", 1.0)],
        attributed={"c1": {"s1", "s2"}},
        warnings={"null_costs": 1, "negative_costs": 1},
        check=_check_negative_and_null_costs,
    ),
    "cost-row-without-session": Case(
        [s("s1", "u1", DAY, "08:00:00")],
        [conv("c1", "u1")],
        costs=[("s1", 2.0), ("ghost", 99.0)],
        attributed={"c1": {"s1"}},
    ),
    "session-without-cost-row-or-channel": Case(
        [s("s1", "u1", DAY, "08:00:00"), s("s2", "u9", DAY, "08:00:00", channel=None)],
        [conv("c1", "u1")],
        costs=[("s2", 4.0)],
        attributed={"c1": {"s1"}},
        warnings={"sessions_without_cost_row": 1, "sessions_without_channel": 1},
    ),
    "session-with-empty-channel-name": Case(
        [s("s1", "u1", DAY, "08:00:00"), s("s2", "u9", DAY, "08:00:00", channel="")],
        [conv("c1", "u1")],
        costs=[("s1", 1.0), ("s2", 4.0)],
        attributed={"c1": {"s1"}},
        warnings={"sessions_without_channel": 1},
        check=lambda db, rows: assert_rows(rows, [("", "4.00"), ("Referral", "1.00")]),
    ),
    "session-date-malformed-outside-any-journey": Case(
        [s("s1", "u1", DAY, "08:00:00"), s("lost", "u9", "2024/01/10", "08:00:00")],
        [conv("c1", "u1")],
        costs=[("s1", 1.0), ("lost", 7.0)],
        attributed={"c1": {"s1"}},
    ),
    # --- journey boundaries ---
    "session-at-the-conversion-time": Case(
        [s("before", "u1", DAY, "11:59:59"), s("same", "u1", DAY, "12:00:00"), s("only-same", "u2", DAY, "12:00:00")],
        [conv("c1", "u1"), conv("c2", "u2")],
        attributed={"c1": {"before"}}, issues={"c2": "no_sessions"},
    ),
    "sessions-after-the-conversion": Case(
        [s("s1", "u1", "2024-01-09", "10:00:00"), s("s2", "u1", DAY, "12:00:01"),
         s("s3", "u1", "2024-01-11", "00:00:00")],
        [conv("c1", "u1")],
        attributed={"c1": {"s1"}},
    ),
    "conversion-without-earlier-sessions": Case(
        [s("s1", "u2", "2024-01-09", "10:00:00")],
        [conv("c1", "u1")],
        issues={"c1": "no_sessions"},
    ),
    "journey-over-the-session-limit": Case(
        [s(f"s{i}", "u1", "2024-01-09", f"1{i}:00:00") for i in range(6)],
        [conv("c1", "u1")],
        max_sessions=4,
        attributed={"c1": {"s2", "s3", "s4", "s5"}}, issues={"c1": "oversized_journey"},
    ),
    "duplicate-timestamps": Case(
        [s("sa", "u1", "2024-01-09", "10:00:00"), s("sb", "u1", "2024-01-09", "10:00:00", "Direct Traffic"),
         s("sc", "u1", "2024-01-09", "10:00:00", "Direct Traffic")],
        [conv("c1", "u1"), conv("c2", "u1", time="12:00:01")],
        attributed={"c1": {"sa", "sb", "sc"}, "c2": {"sa", "sb", "sc"}},
    ),
    "awkward-channel-names": Case(
        [s(f"s{i}", f"u{i}", DAY, "08:00:00", name) for i, name in enumerate(AWKWARD_CHANNELS)],
        [conv(f"c{i}", f"u{i}") for i in range(len(AWKWARD_CHANNELS))],
        attributed={f"c{i}": {f"s{i}"} for i in range(len(AWKWARD_CHANNELS))},
        check=_check_awkward_channels,
    ),
    # --- empty things and range sizes ---
    "empty-database": Case(),
    "range-without-conversions": Case(
        [s("s1", "u1", DAY, "08:00:00"), s("s2", "u2", DAY, "09:00:00", "Direct Traffic")],
        [conv("c1", "u1", date="2024-01-11")],
        check=_check_spend_only,
    ),
    "one-day-range-is-half-open": Case(
        [s("s1", "u1", "2024-01-09", "08:00:00")],
        [conv("first", "u1", time="00:00:00"), conv("last", "u1", time="23:59:59"),
         conv("next-day", "u1", date="2024-01-11", time="00:00:00"), conv("day-before", "u1", date="2024-01-09",
                                                                          time="23:59:59")],
        attributed={"first": {"s1"}, "last": {"s1"}},
    ),
    "one-year-range": Case(
        [s("s1", "u1", "2024-01-01", "00:00:00"), s("s2", "u1", "2024-06-15", "12:00:00"),
         s("s3", "u1", "2024-12-31", "23:00:00"), s("s4", "u1", "2023-12-31", "23:00:00")],
        [conv("jan", "u1", date="2024-01-01", time="00:00:01"), conv("dec", "u1", date="2024-12-31", time="23:59:59"),
         conv("next-year", "u1", date="2025-01-01", time="00:00:00")],
        start="2024-01-01", end="2024-12-31",
        attributed={"jan": {"s1", "s4"}, "dec": {"s1", "s2", "s3", "s4"}},
        check=_check_year,
    ),
}


@pytest.fixture(scope="module")
def client():
    with serve(ServerConfig(api_keys=(API_KEY,))) as url:
        ihc = IhcClient(url, API_KEY, "demo", max_retries=0)
        yield ihc
        ihc.close()


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
def test_bad_input(case: Case, client, tmp_path):
    costs = case.costs if case.costs is not None else [(row[0], 1.0) for row in case.sessions]
    db = make_db(tmp_path / "db.sqlite", case.sessions, case.conversions, costs, ddl=case.ddl)
    sources = source_tables(db)

    summary = run_pipeline(db, "r1", case.start, case.end, client, max_journeys=2,
                           max_sessions=case.max_sessions, output_dir=tmp_path / "out")

    assert source_tables(db) == sources, "the source tables are never modified"
    # journeys: exactly the expected sessions, each journey summing to 1
    attribution = read_table(db, "attribution_customer_journey")
    assert attribution.groupby("conv_id")["session_id"].apply(set).to_dict() == case.attributed
    assert attribution.groupby("conv_id")["ihc"].sum().sub(1).abs().le(1e-6).all()
    # issues: the expected reasons, and the summary counts them
    issues = read_table(db, "attribution_issues")
    assert dict(zip(issues["conv_id"], issues["reason"])) == case.issues
    assert issues["detail"].str.len().gt(0).all(), "every issue says what is wrong"
    assert summary.issues_by_reason == dict(Counter(case.issues.values()))
    assert summary.attributed == len(case.attributed)
    assert summary.source_warnings == {**NO_WARNINGS, **case.warnings}

    # the report equals an independent recomputation over the range's dates
    dates = {d.strftime("%Y-%m-%d") for d in pd.date_range(case.start, case.end)}
    expected = expected_report(db)
    expected = expected[expected["date"].isin(dates)].sort_values(["channel_name", "date"]).reset_index(drop=True)
    report = read_table(db, "channel_reporting")
    report = report[report["date"].isin(dates)].sort_values(["channel_name", "date"]).reset_index(drop=True)
    assert list(zip(report.channel_name, report.date)) == list(zip(expected.channel_name, expected.date))
    for column in ("cost", "ihc", "ihc_revenue"):
        assert (report[column] - expected[column]).abs().le(1e-9).all(), column

    # the CSV holds the same rows
    path = tmp_path / "out" / f"channel_reporting_{case.start}_{case.end}.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(report)
    if case.check:
        case.check(db, rows)


# --- params: refused before any work, naming the param -------------------------------------------

BAD_PARAMS = [
    pytest.param({"start_date": "2024-13-01", "end_date": "2024-01-31"}, RangeError, "start_date", id="month-13"),
    pytest.param({"start_date": "2024-01-01", "end_date": "31/01/2024"}, RangeError, "end_date", id="day-first"),
    pytest.param({"start_date": "2024-01-05", "end_date": "2024-01-02"}, RangeError, "start_date=2024-01-05 is after",
                 id="start-after-end"),
    pytest.param({"start_date": "2024-01-01' OR '1'='1", "end_date": "2024-01-02"}, RangeError, "start_date",
                 id="sql-in-start"),
    pytest.param({"start_date": "2024-01-01", "end_date": "2024-01-02; DROP TABLE conversions"}, RangeError,
                 "end_date", id="sql-in-end"),
    pytest.param({"start_date": "2024-01-01", "end_date": "2024-01-02", "lookback_days": "7; DROP TABLE conversions"},
                 ValueError, "lookback_days", id="sql-in-lookback"),
    pytest.param({"start_date": "2024-01-01", "end_date": "2024-01-02", "lookback_days": 0}, ValueError,
                 "lookback_days", id="lookback-zero"),
    pytest.param({"start_date": "2024-01-01", "end_date": "2024-01-02", "lookback_days": 2.5}, ValueError,
                 "lookback_days", id="lookback-fraction"),
    pytest.param({"start_date": "2024-01-01", "end_date": "2024-01-02", "lookback_days": "abc"}, ValueError,
                 "lookback_days", id="lookback-text"),
    pytest.param({"start_date": "2024-01-01", "end_date": "2024-01-02", "lookback_days": 99999999}, ValueError,
                 "lookback_days.*36600", id="lookback-beyond-the-calendar"),
    pytest.param({"start_date": "2024-01-01", "end_date": "2024-01-02", "lookback_days": True}, ValueError,
                 "lookback_days", id="lookback-boolean"),
    pytest.param({"start_date": "2024-01-01"}, RangeError, "end_date is missing", id="start-only"),
    pytest.param({"start_date": "0001-01-01", "end_date": "9999-12-30"}, RangeError,
                 r"touches 3,652,058 dates, more than the 3,660 \(10 years\)", id="range-beyond-10-years"),
]


@pytest.mark.parametrize(("params", "error", "message"), BAD_PARAMS)
def test_bad_params_are_refused_before_any_work(params, error, message, tmp_path, monkeypatch):
    db = make_db(tmp_path / "db.sqlite", [s("s1", "u1", "2024-01-01", "10:00:00")], [conv("c1", "u1")])
    monkeypatch.setenv("AIRFLOW_CONN_ATTRIBUTION_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    before = db_digest(db)
    with pytest.raises(PermanentFailure, match=message) as failure:
        tasks.setup_tables({"run_id": "manual", "params": params})
    assert isinstance(failure.value.__cause__, error), "the cause names the param"
    assert isinstance(failure.value.__cause__, PermanentError), "a bad param is not retried"
    assert db_digest(db) == before, "nothing may happen before the params are known to be good"


def test_run_id_with_sql_is_only_data(tmp_path, client):
    db = make_db(tmp_path / "db.sqlite", [s("s1", "u1", "2024-01-09", "10:00:00")], [conv("c1", "u1")])
    sources = source_tables(db)
    run_id = "manual__x'); DROP TABLE conversions; --"
    run_pipeline(db, run_id, DAY, DAY, client)
    assert source_tables(db) == sources
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT DISTINCT run_id FROM attribution_stg_conversions").fetchall() == [(run_id,)]
    assert set(schema.SOURCE_TABLES) <= {
        name for (name,) in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }


def test_channel_name_that_is_not_utf8_is_quarantined_and_exported_verbatim(client, tmp_path):
    raw = b"Caf\xe9 Ads"  # Latin-1, not UTF-8
    db = make_db(
        tmp_path / "db.sqlite",
        [s("s1", "u1", "2024-01-05", "10:00:00"), s("s2", "u2", "2024-01-05", "10:00:00"),
         s("s3", "u9", DAY, "10:00:00")],
        [conv("c1", "u1"), conv("c2", "u2")],
        [("s1", 1.0), ("s2", 1.0), ("s3", 2.5)],
    )
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE session_sources SET channel_name = CAST(? AS TEXT) WHERE session_id IN ('s1', 's3')", (raw,))
    summary = run_pipeline(db, "r1", DAY, DAY, client, output_dir=tmp_path / "out")

    issues = read_table(db, "attribution_issues")
    assert dict(zip(issues.conv_id, issues.reason)) == {"c1": "invalid_input"}
    assert "channel_name is not valid UTF-8" in issues.detail.iloc[0]
    assert summary.attributed == 1
    with sqlite3.connect(db) as conn:
        conn.text_factory = bytes
        stored = dict(conn.execute("SELECT channel_name, cost FROM channel_reporting WHERE date = ?", (DAY,)))
    assert stored == {raw: 2.5}, "the session outside any journey keeps its spend, under its own bytes"
    lines = (tmp_path / "out" / f"channel_reporting_{DAY}_{DAY}.csv").read_bytes().splitlines()
    assert lines[1].startswith(raw + b"," + DAY.encode() + b",2.50,"), "the CSV holds the name's bytes unchanged"
