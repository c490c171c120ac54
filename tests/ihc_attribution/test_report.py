"""channel_reporting: no cost fan-out, sessions without cost, touched dates, ratios."""

from __future__ import annotations

import sqlite3

import pytest

from tests.helpers import expected_report, make_db, read_table, run_pipeline

SESSIONS = [
    # a session in three journeys (repeat buyer): its cost must be counted once
    ("s1", "u1", "2024-01-08", "10:00:00", "Paid Search Brand"),
    ("s2", "u1", "2024-01-09", "10:00:00", "FB & IG Ads"),
    ("s3", "u1", "2024-01-10", "08:00:00", "FB & IG Ads"),
    # sessions that never convert still count for cost
    ("s4", "u2", "2024-01-08", "11:00:00", "Paid Search Brand"),
    ("s5", "u3", "2024-01-10", "11:00:00", "Organic Traffic"),  # no cost row
    ("s6", "u3", "2024-01-10", "12:00:00", "Organic Traffic"),  # NULL cost
]
CONVERSIONS = [
    ("c1", "u1", "2024-01-09", "12:00:00", 100.0),
    ("c2", "u1", "2024-01-10", "09:00:00", 40.0),
    ("c3", "u1", "2024-01-10", "18:00:00", 60.0),
]
COSTS = [("s1", 2.5), ("s2", 1.25), ("s3", 0.75), ("s4", 4.0), ("s6", None)]


def report(path) -> dict[tuple[str, str], tuple[float, float, float]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting").fetchall()
    return {(ch, d): (c, i, r) for ch, d, c, i, r in rows}


def test_report_values_by_hand(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    got = report(path)
    # c1: s1, s2 (0.5 each); c2: s1, s2, s3 (0.3333, 0.3333, 0.3334); c3: same as c2
    assert got[("Paid Search Brand", "2024-01-08")] == pytest.approx((6.5, 0.5 + 0.3333 * 2, 50 + 0.3333 * 100))
    assert got[("FB & IG Ads", "2024-01-09")] == pytest.approx((1.25, 0.5 + 0.3333 * 2, 50 + 0.3333 * 100))
    assert got[("FB & IG Ads", "2024-01-10")] == pytest.approx((0.75, 0.3334 * 2, 0.3334 * 100))
    assert got[("Organic Traffic", "2024-01-10")] == (0.0, 0.0, 0.0)
    assert len(got) == 4


def test_report_matches_independent_recomputation(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    expected = expected_report(path)
    got = read_table(path, "channel_reporting")
    merged = expected.merge(got, on=["channel_name", "date"], suffixes=("_exp", "_got"), how="outer")
    assert len(merged) == len(expected) == len(got)
    for col in ("cost", "ihc", "ihc_revenue"):
        assert merged[f"{col}_exp"].to_numpy() == pytest.approx(merged[f"{col}_got"].to_numpy(), abs=1e-9)


def test_report_rebuilds_dates_outside_the_range_that_lose_credit(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    # The user's first session is re-assigned to another user in the source: re-running must take
    # its credit away from 2024-01-08, a date outside the range.
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE session_sources SET user_id = 'u9' WHERE session_id = 's1'")
    run_pipeline(path, "r2", "2024-01-09", "2024-01-10")
    got = report(path)
    assert got[("Paid Search Brand", "2024-01-08")] == (6.5, 0.0, 0.0)


def test_cost_is_not_multiplied_by_journeys(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    got = report(path)
    total_cost = sum(v[0] for v in got.values())
    assert total_cost == pytest.approx(2.5 + 1.25 + 0.75 + 4.0)


# --- when the sources change between runs (docs/configuration.md, "When source data changes") -----------------


def _reporting(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT channel_name, date, cost, ihc, ihc_revenue FROM channel_reporting ORDER BY 1, 2").fetchall()


def _fresh_run(tmp_path, change_sql: str, start="2024-01-09", end="2024-01-10"):
    """The report of a database that had the change before its first run."""
    path = make_db(tmp_path / "fresh.sqlite", SESSIONS, CONVERSIONS, COSTS)
    with sqlite3.connect(path) as conn:
        conn.execute(change_sql)
    run_pipeline(path, "r1", start, end)
    return _reporting(path)


def test_a_corrected_cost_of_a_run_s_own_date_is_taken_in_by_re_running_that_date(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    change = "UPDATE session_costs SET cost = 3.5 WHERE session_id = 's3'"  # 2024-01-10
    with sqlite3.connect(path) as conn:
        conn.execute(change)
    run_pipeline(path, "r2", "2024-01-10", "2024-01-10")
    assert _reporting(path) == _fresh_run(tmp_path, change)
    assert report(path)[("FB & IG Ads", "2024-01-10")][0] == 3.5


def test_a_corrected_cost_of_an_earlier_date_waits_for_a_run_of_that_date_or_refresh_spend(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    change = "UPDATE session_costs SET cost = 9.0 WHERE session_id = 's1'"  # 2024-01-08, credited, not in the range
    with sqlite3.connect(path) as conn:
        conn.execute(change)
    run_pipeline(path, "r2", "2024-01-09", "2024-01-10")
    assert report(path)[("Paid Search Brand", "2024-01-08")][0] == 6.5, "as of the last run that read 2024-01-08"
    run_pipeline(path, "r3", "2024-01-09", "2024-01-10", refresh_spend=True)
    assert report(path)[("Paid Search Brand", "2024-01-08")][0] == 13.0
    assert _reporting(path) == _fresh_run(tmp_path, change)


def test_a_late_session_extends_the_journey_when_the_conversion_s_day_is_re_run(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    late = "INSERT INTO session_sources VALUES ('s9', 'u1', '2024-01-09', '11:00:00', 'Email', 0, 1, 0)"
    with sqlite3.connect(path) as conn:
        conn.execute(late)
    run_pipeline(path, "r2", "2024-01-09", "2024-01-10")
    assert _reporting(path) == _fresh_run(tmp_path, late)
    assert report(path)[("Email", "2024-01-09")][1] > 0


def test_a_deleted_conversion_loses_its_credit_on_the_next_run_of_any_range(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    refund = "DELETE FROM conversions WHERE conv_id = 'c1'"  # a refund, on 2024-01-09
    with sqlite3.connect(path) as conn:
        conn.execute(refund)
    run_pipeline(path, "r2", "2024-01-10", "2024-01-10")  # a later day's run
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attribution_customer_journey WHERE conv_id = 'c1'").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM attribution_credit WHERE conv_id = 'c1'").fetchone() == (0,)
    assert _reporting(path) == _fresh_run(tmp_path, refund)


def test_a_conversion_loaded_after_its_days_run_is_attributed_by_the_next_run_reaching_back(tmp_path):
    """What the scheduled runs' late-data window does: the next runs cover the last days again,
    attribute what arrived late and send nothing for journeys that did not change."""
    from tests.helpers import FakeIhcClient

    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS[:2], COSTS)
    run_pipeline(path, "scheduled__2024-01-10", "2024-01-07", "2024-01-10")
    with sqlite3.connect(path) as conn:  # c3 of 2024-01-10, loaded after that day's run
        conn.execute("INSERT INTO conversions VALUES ('c3', 'u1', '2024-01-10', '18:00:00', 60.0)")
    client = FakeIhcClient()
    run_pipeline(path, "scheduled__2024-01-11", "2024-01-08", "2024-01-11", client)  # 3 days back
    sent = {row["conversion_id"] for request in client.sent for row in request.rows}
    assert sent == {"c3"}, "only the late conversion is sent; unchanged journeys reuse their answers"
    fresh = make_db(tmp_path / "fresh.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(fresh, "r1", "2024-01-08", "2024-01-11")
    assert _reporting(path) == _reporting(fresh)


def test_a_conversion_moved_to_another_day_leaves_with_a_re_run_of_its_old_day(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    moved = "UPDATE conversions SET conv_date = '2024-01-12' WHERE conv_id = 'c1'"  # was 2024-01-09
    with sqlite3.connect(path) as conn:
        conn.execute(moved)
    run_pipeline(path, "r2", "2024-01-09", "2024-01-09")  # its old day alone
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attribution_customer_journey WHERE conv_id = 'c1'").fetchone() == (0,)
    assert _reporting(path) == _fresh_run(tmp_path, moved)
    run_pipeline(path, "r3", "2024-01-12", "2024-01-12")  # and its new day
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attribution_customer_journey WHERE conv_id = 'c1'").fetchone() == (3,)


def test_a_session_row_duplicated_after_attribution_credits_nothing_twice(tmp_path):
    """Sources without keys, as exports often are: a copy of a credited session's row."""
    from tests.helpers import source_ddl

    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS, ddl=source_ddl(keys=False))
    run_pipeline(path, "r1", "2024-01-09", "2024-01-10")
    before = report(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO session_sources SELECT * FROM session_sources WHERE session_id = 's1'")
        conn.execute("INSERT INTO session_costs SELECT * FROM session_costs WHERE session_id = 's1'")
    run_pipeline(path, "r2", "2024-01-11", "2024-01-11", refresh_spend=True)  # another day's run reads all spend
    assert report(path) == before, "the copy adds neither spend nor credit"


def test_a_late_session_of_an_attributed_day_is_named_by_a_later_run_and_cleared_by_re_running_that_day(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-09")  # c1 of u1
    with sqlite3.connect(path) as conn:
        # a session of u1 loaded late, before c1; and u1 converts again on 2024-01-12
        conn.execute("INSERT INTO session_sources VALUES ('s9', 'u1', '2024-01-09', '09:00:00', 'Email', 0, 1, 0)")
        conn.execute("INSERT INTO conversions VALUES ('c9', 'u1', '2024-01-12', '10:00:00', 25.0)")
    later = run_pipeline(path, "r2", "2024-01-12", "2024-01-12")
    assert later.changed_days == ["2024-01-09"]
    with sqlite3.connect(path) as conn:
        (detail,) = conn.execute("SELECT detail FROM attribution_drift WHERE conv_id = 'c1'").fetchone()
    assert "attributed over 2 sessions; the sources now hold 3" in detail
    assert "CHANGED" in later.render() and "2024-01-09" in later.render()
    again = run_pipeline(path, "r3", "2024-01-09", "2024-01-09")
    assert again.changed_days == []


def test_unchanged_journeys_of_other_days_are_not_named(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "r1", "2024-01-09", "2024-01-09")
    assert run_pipeline(path, "r2", "2024-01-10", "2024-01-10").changed_days == []
