"""Journey extraction: strict before, repeat buyers, ties, look-back, and malformed input."""

from __future__ import annotations

import sqlite3

import pytest

from ihc_attribution import journeys, schema
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from tests.helpers import make_db

RANGE = range_from_params({"start_date": "2024-01-10", "end_date": "2024-01-10"})


def extract(path, lookback_days=None):
    db = Database.connect_sqlite(str(path))
    schema.ensure_schema(db)
    summary = journeys.extract_journeys(db, "r1", RANGE, lookback_days=lookback_days)
    staged = db.query(
        "SELECT conv_id, session_id, conversion FROM attribution_stg_sessions WHERE run_id = 'r1' "
        "ORDER BY conv_id, event_ts, session_id"
    )
    issues = dict(
        ((c, r), d) for c, r, d in db.query("SELECT conv_id, reason, detail FROM attribution_stg_issues")
    )
    db.close()
    by_conv: dict[str, list[tuple[str, int]]] = {}
    for conv, sid, flag in staged:
        by_conv.setdefault(conv, []).append((sid, flag))
    return summary, by_conv, issues


def test_strictly_before_and_conversion_flag_on_latest(tmp_path):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[
            ("s1", "u1", "2024-01-01", "10:00:00", "Direct Traffic"),
            ("s2", "u1", "2024-01-10", "09:59:59", "Referral"),
            ("s3", "u1", "2024-01-10", "10:00:00", "Referral"),  # equal timestamp: not before
            ("s4", "u1", "2024-01-10", "11:00:00", "Referral"),  # after
            ("s5", "u2", "2024-01-09", "10:00:00", "Referral"),  # other user
        ],
        conversions=[("c1", "u1", "2024-01-10", "10:00:00", 50.0)],
    )
    summary, by_conv, _ = extract(path)
    assert by_conv == {"c1": [("s1", 0), ("s2", 1)]}
    assert summary.journeys == 1 and summary.sessions == 2


def test_repeat_buyer_sessions_belong_to_several_journeys(tmp_path):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[
            ("s1", "u1", "2024-01-05", "10:00:00", "Direct Traffic"),
            ("s2", "u1", "2024-01-10", "08:00:00", "Referral"),
            ("s3", "u1", "2024-01-10", "12:00:00", "Referral"),
        ],
        conversions=[
            ("c1", "u1", "2024-01-10", "09:00:00", 10.0),
            ("c2", "u1", "2024-01-10", "13:00:00", 20.0),
            ("c0", "u1", "2024-01-09", "13:00:00", 20.0),  # outside the range
        ],
    )
    _, by_conv, _ = extract(path)
    assert by_conv == {
        "c1": [("s1", 0), ("s2", 1)],
        "c2": [("s1", 0), ("s2", 0), ("s3", 1)],
    }


def test_tied_latest_sessions_flag_exactly_one_deterministically(tmp_path):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[
            ("sa", "u1", "2024-01-09", "10:00:00", "Referral"),
            ("sb", "u1", "2024-01-09", "10:00:00", "Direct Traffic"),
        ],
        conversions=[("c1", "u1", "2024-01-10", "10:00:00", 5.0)],
    )
    _, by_conv, _ = extract(path)
    assert by_conv == {"c1": [("sa", 0), ("sb", 1)]}


def test_lookback_window_limits_the_journey(tmp_path):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[
            ("old", "u1", "2023-12-01", "10:00:00", "Referral"),
            ("edge", "u1", "2024-01-03", "10:00:00", "Referral"),
            ("new", "u1", "2024-01-09", "10:00:00", "Referral"),
        ],
        conversions=[("c1", "u1", "2024-01-10", "10:00:00", 5.0)],
    )
    _, by_conv, _ = extract(path, lookback_days=7)
    assert [s for s, _ in by_conv["c1"]] == ["edge", "new"]


def test_conversion_without_earlier_sessions_is_recorded(tmp_path):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[("s1", "u1", "2024-01-10", "12:00:00", "Referral")],
        conversions=[("c1", "u1", "2024-01-10", "10:00:00", 5.0)],
    )
    summary, by_conv, issues = extract(path)
    assert by_conv == {}
    assert summary.no_sessions == 1
    assert ("c1", journeys.NO_SESSIONS) in issues


@pytest.mark.parametrize(
    ("session", "problem"),
    [
        (("bad", "u1", "2024-1-05", "10:00:00", "Referral", 1, 1, 0), "event_date"),
        (("bad", "u1", "2024-02-30", "10:00:00", "Referral", 1, 1, 0), "event_date"),
        (("bad", "u1", "2024-01-05", "25:00:00", "Referral", 1, 1, 0), "event_time"),
        (("bad", "u1", "2024-01-05", "10:00", "Referral", 1, 1, 0), "event_time"),
        (("bad", "u1", "2024-01-05", "10:00:00", None, 1, 1, 0), "channel_name"),
        (("bad", "u1", "2024-01-05", "10:00:00", "", 1, 1, 0), "channel_name"),
        (("bad", "u1", "2024-01-05", "10:00:00", "Referral", 2, 1, 0), "holder_engagement"),
        (("bad", "u1", "2024-01-05", "10:00:00", "Referral", 1, None, 0), "closer_engagement"),
        (("bad", "u1", "2024-01-05", "10:00:00", "Referral", 1, 1, "yes"), "impression_interaction"),
    ],
)
def test_malformed_session_quarantines_the_conversion(tmp_path, session, problem):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[("ok", "u1", "2024-01-04", "10:00:00", "Referral"), session,
                  ("ok2", "u2", "2024-01-04", "10:00:00", "Referral")],
        conversions=[("c1", "u1", "2024-01-10", "10:00:00", 5.0), ("c2", "u2", "2024-01-10", "10:00:00", 5.0)],
    )
    summary, by_conv, issues = extract(path)
    assert "c1" not in by_conv, "a conversion with a malformed session must never be sent"
    assert list(by_conv) == ["c2"]
    detail = issues[("c1", journeys.INVALID_INPUT)]
    assert "session bad" in detail and problem in detail
    assert summary.invalid_input == 1


def test_malformed_session_after_the_conversion_does_not_matter(tmp_path):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[
            ("ok", "u1", "2024-01-04", "10:00:00", "Referral"),
            ("late", "u1", "2024-01-12", "10:00:00", "Referral", 7, 1, 0),
        ],
        conversions=[("c1", "u1", "2024-01-10", "10:00:00", 5.0)],
    )
    _, by_conv, issues = extract(path)
    assert by_conv == {"c1": [("ok", 1)]}
    assert issues == {}


@pytest.mark.parametrize(
    ("conversion", "reason"),
    [
        (("c1", "u1", "2024-01-10", "7:00", 5.0), journeys.INVALID_INPUT),
        (("c1", "u1", "2024-01-10", "10:00:00", None), journeys.INVALID_INPUT),
        (("c1", "u1", "2024-01-10", "10:00:00", -3.0), journeys.INVALID_INPUT),
        (("c1", None, "2024-01-10", "10:00:00", 5.0), journeys.INVALID_INPUT),
        (("c1", "u1", "2024/01/10", "10:00:00", 5.0), journeys.INVALID_INPUT),
        (("c1", "u1", "2024.01.10", "10:00:00", 5.0), journeys.INVALID_INPUT),
        (("c1", "u1", "yesterday", "10:00:00", 5.0), journeys.UNPLACEABLE),
        (("c1", "u1", None, "10:00:00", 5.0), journeys.UNPLACEABLE),
    ],
)
def test_malformed_conversion_is_recorded_not_sent(tmp_path, conversion, reason):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[("s1", "u1", "2024-01-04", "10:00:00", "Referral")],
        conversions=[conversion],
    )
    _, by_conv, issues = extract(path)
    assert by_conv == {}
    assert ("c1", reason) in issues


def test_malformed_conversion_of_another_range_is_left_to_its_run(tmp_path):
    path = make_db(tmp_path / "db.sqlite", conversions=[("c1", "u1", "2024/03/10", "10:00:00", 5.0)])
    _, _, issues = extract(path)
    assert issues == {}


def test_extraction_is_idempotent(tmp_path):
    path = make_db(
        tmp_path / "db.sqlite",
        sessions=[("s1", "u1", "2024-01-04", "10:00:00", "Referral")],
        conversions=[("c1", "u1", "2024-01-10", "10:00:00", 5.0), ("c2", "u9", "2024-01-10", "10:00:00", 5.0)],
    )
    first = extract(path)
    second = extract(path)
    assert first[1:] == second[1:]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attribution_stg_conversions").fetchone()[0] == 2
