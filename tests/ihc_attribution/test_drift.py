"""Drift: attributed journeys that no longer match the sources are named by any later run, and a
run with ``reattribute_drift`` handles their days as runs of those days would.

The history attributes the conversions of 2024-01-05 and 2024-01-06; after a change of the
sources a run of 2024-01-09 follows, whose only buyer (u3) is none of the users concerned: the
comparison covers every attributed journey, not only those of the run's users.
"""

from __future__ import annotations

import sqlite3

import pytest

from ihc_attribution import buyers, drift, journeys
from tests.helpers import expected_report, make_db, read_table, run_pipeline, source_ddl

SESSIONS = [
    ("s11", "u1", "2024-01-03", "10:00:00", "Paid Search Brand"),
    ("s12", "u1", "2024-01-04", "12:00:00", "FB & IG Ads"),
    ("s13", "u1", "2024-01-07", "09:00:00", "Email"),  # after u1's conversion
    ("s21", "u2", "2024-01-05", "09:00:00", "Organic Traffic"),
    ("s22", "u2", "2024-01-06", "08:00:00", "Email"),
    ("s31", "u3", "2024-01-08", "10:00:00", "Direct Traffic"),
    ("s41", "u4", "2024-01-05", "11:00:00", "Referral"),  # u4 never converts
]
CONVERSIONS = [
    ("c1", "u1", "2024-01-05", "15:00:00", 50.0),
    ("c2", "u2", "2024-01-06", "10:00:00", 20.0),
    ("c3", "u3", "2024-01-09", "12:00:00", 30.0),
]
COSTS = [("s11", 2.5), ("s12", 1.25), ("s13", 0.5), ("s21", 4.0), ("s22", 1.0), ("s31", 3.0), ("s41", 0.75)]
HISTORY = [("2024-01-05", "2024-01-06")]
LATER = ("2024-01-09", "2024-01-09")

# change -> (the days named, what the record says)
CHANGES = {
    "late session": ("INSERT INTO session_sources VALUES ('s14', 'u1', '2024-01-04', '18:00:00', 'Email', 1, 1, 0)",
                     ["2024-01-05"], "attributed over 2 sessions; the sources now hold 3"),
    "channel changed in place": ("UPDATE session_sources SET channel_name = 'Display' WHERE session_id = 's12'",
                                 ["2024-01-05"], "1 of the 2 sessions it credited changed"),
    "session deleted": ("DELETE FROM session_sources WHERE session_id = 's21'",
                        ["2024-01-06"], "attributed over 2 sessions; the sources now hold 1"),
    "session re-dated": ("UPDATE session_sources SET event_date = '2024-01-02' WHERE session_id = 's11'",
                         ["2024-01-05"], "1 of the 2 sessions it credited changed"),
    "session re-dated into the journey": (
        "UPDATE session_sources SET event_date = '2024-01-04' WHERE session_id = 's13'",
        ["2024-01-05"], "the sources now hold 3"),
    "session moved to another user": ("UPDATE session_sources SET user_id = 'u1' WHERE session_id = 's21'",
                                      ["2024-01-05", "2024-01-06"], ""),
    "users merged": ("UPDATE session_sources SET user_id = 'u1' WHERE user_id = 'u4'",
                     ["2024-01-05"], "the sources now hold 3"),
    "revenue corrected": ("UPDATE conversions SET revenue = 25.5 WHERE conv_id = 'c2'",
                          ["2024-01-06"], "the conversion changed in the sources: its revenue"),
    "conversion moved to another day": ("UPDATE conversions SET conv_date = '2024-01-07' WHERE conv_id = 'c1'",
                                        ["2024-01-05"], "its time (now 2024-01-07 15:00:00)"),
    "conversion's user corrected": ("UPDATE conversions SET user_id = 'u4' WHERE conv_id = 'c2'",
                                    ["2024-01-06"], "its user_id"),
    "session re-timed within its day": ("UPDATE session_sources SET event_time = '11:00:00' WHERE session_id = 's11'",
                                        ["2024-01-05"], "1 of the 2 sessions it credited changed"),
}
UNCHANGED = {
    "a session after the conversions": "INSERT INTO session_sources VALUES ('s15', 'u1', '2024-01-08', '09:00:00', "
                                       "'Email', 0, 0, 0)",
    "a session of a user who never converted": "UPDATE session_sources SET channel_name = 'Display' "
                                               "WHERE session_id = 's41'",
    "a corrected cost": "UPDATE session_costs SET cost = 9.0 WHERE session_id = 's12'",
    "a conversion of another day": "INSERT INTO conversions VALUES ('c4', 'u4', '2024-01-07', '10:00:00', 5.0)",
}


def tables(path) -> dict[str, list[tuple]]:
    """What a run publishes, exactly (no rounding), and the package's own credit and drift records."""
    with sqlite3.connect(path) as conn:
        return {
            "attribution": conn.execute("SELECT * FROM attribution_customer_journey ORDER BY 1, 2").fetchall(),
            "reporting": conn.execute("SELECT * FROM channel_reporting ORDER BY 1, 2").fetchall(),
            "issues": conn.execute("SELECT conv_id, reason, detail FROM attribution_issues ORDER BY 1, 2").fetchall(),
            "credit": conn.execute("SELECT * FROM attribution_credit ORDER BY 1, 5").fetchall(),
            "drift": conn.execute("SELECT conv_id FROM attribution_drift").fetchall(),
        }


def assert_report_matches(path, dates: set[str]) -> None:
    """The report rows of ``dates`` equal an independent recomputation from the sources."""
    expected = {(r.channel_name, r.date): (r.cost, r.ihc, r.ihc_revenue) for r in expected_report(path, dates).itertuples()}
    got = read_table(path, "channel_reporting")
    got = {(r.channel_name, r.date): (r.cost, r.ihc, r.ihc_revenue) for r in got.itertuples() if r.date in dates}
    assert got == expected


def assert_same_outcome(path, fresh) -> None:
    """Equal tables, exactly. The report may hold more dates than the fresh run's: dates the
    earlier runs credited and no journey credits now keep a row, of spend only, read again."""
    got, expected = tables(path), tables(fresh)
    report, expected_rows = got.pop("reporting"), expected.pop("reporting")
    assert got == expected
    assert set(expected_rows) <= set(report)
    extra = [row for row in report if row not in expected_rows]
    assert all(ihc == 0 and revenue == 0 for *_, ihc, revenue in extra), extra
    dates = {row[1] for row in extra}
    assert_report_matches(path, dates)


def _history(tmp_path, name: str, *, keys: bool = True):
    path = make_db(tmp_path / name, SESSIONS, CONVERSIONS, COSTS, ddl=None if keys else source_ddl(keys=False))
    for first, last in HISTORY:
        run_pipeline(path, "history", first, last)
    return path


def _change(path, sql: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql)


def _fresh(tmp_path, sql: str, *, keys: bool = True):
    """The same days run on a copy of the changed sources that never held a result."""
    path = make_db(tmp_path / "fresh.sqlite", SESSIONS, CONVERSIONS, COSTS, ddl=None if keys else source_ddl(keys=False))
    _change(path, sql)
    for first, last in [*HISTORY, LATER]:
        run_pipeline(path, f"fresh_{first}", first, last)
    return path


@pytest.mark.parametrize("case", list(CHANGES))
def test_a_changed_journey_of_another_user_is_named_by_any_later_run(tmp_path, case):
    change, days, detail = CHANGES[case]
    path = _history(tmp_path, "db.sqlite")
    _change(path, change)
    later = run_pipeline(path, "later", *LATER)
    assert later.changed_days == days
    with sqlite3.connect(path) as conn:
        details = [d for (d,) in conn.execute("SELECT detail FROM attribution_drift")]
    assert any(detail in d for d in details), details
    assert "CHANGED" in later.render() and all(day in later.render() for day in days)


@pytest.mark.parametrize("case", list(CHANGES))
def test_reattribute_drift_equals_a_fresh_run_of_the_same_days_on_the_changed_sources(tmp_path, case):
    change = CHANGES[case][0]
    path = _history(tmp_path, "db.sqlite")
    _change(path, change)
    later = run_pipeline(path, "later", *LATER, reattribute_drift=True)
    assert later.reattributed_days == CHANGES[case][1] and later.changed_days == []
    assert "re-attributed the conversions of" in later.render() and "CHANGED" not in later.render()
    assert_same_outcome(path, _fresh(tmp_path, change))


@pytest.mark.parametrize("case", list(UNCHANGED))
def test_what_changes_no_attributed_journey_is_not_named(tmp_path, case):
    path = _history(tmp_path, "db.sqlite")
    _change(path, UNCHANGED[case])
    later = run_pipeline(path, "later", *LATER, reattribute_drift=True)
    assert later.changed_days == [] and later.reattributed_days == []


def test_a_session_row_copied_in_a_source_without_keys_names_the_journeys_holding_it(tmp_path):
    copy = "INSERT INTO session_sources SELECT * FROM session_sources WHERE session_id = 's12'"
    path = _history(tmp_path, "db.sqlite", keys=False)
    _change(path, copy)
    later = run_pipeline(path, "later", *LATER, reattribute_drift=True)
    assert later.reattributed_days == ["2024-01-05"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT reason FROM attribution_issues WHERE conv_id = 'c1'").fetchall() == [
            (journeys.INVALID_INPUT,)
        ], "its journey is now ambiguous: quarantined, as a fresh run quarantines it"
    assert_same_outcome(path, _fresh(tmp_path, copy, keys=False))


def test_a_re_run_of_a_named_day_clears_its_record_and_the_comparison_holds_no_lock(tmp_path):
    path = _history(tmp_path, "db.sqlite")
    _change(path, CHANGES["late session"][0])
    assert run_pipeline(path, "later", *LATER).changed_days == ["2024-01-05"]
    assert run_pipeline(path, "again", "2024-01-05", "2024-01-05").changed_days == []
    # The comparison writes only a temporary table: with another connection holding the write
    # lock it still runs (the extraction waits for the lock only to publish).
    from ihc_attribution.db import Database

    db = Database.connect_sqlite(str(path))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        buyers.stage_buyer_sessions(db)
        assert drift.detect(db) == 0
    finally:
        other.execute("ROLLBACK")
        other.close()
        db.close()


def test_a_journey_attributed_with_a_look_back_is_compared_within_its_window(tmp_path):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    run_pipeline(path, "history", "2024-01-05", "2024-01-06", lookback_days=2)  # c1: s12 only (s11 is 2+ days back)
    _change(path, "UPDATE session_sources SET channel_name = 'Display' WHERE session_id = 's11'")  # outside it
    assert run_pipeline(path, "later", *LATER).changed_days == [], "a run without a look-back compares the window"
    _change(path, "INSERT INTO session_sources VALUES ('s14', 'u1', '2024-01-04', '18:00:00', 'Email', 1, 1, 0)")
    assert run_pipeline(path, "later", *LATER, lookback_days=2).changed_days == ["2024-01-05"]


def test_a_truncated_journey_is_named_when_the_sessions_it_would_send_change(tmp_path):
    sessions = [(f"s{i}", "u1", f"2024-01-0{i}", "10:00:00", "Email") for i in range(1, 5)]
    conversions = [("c1", "u1", "2024-01-05", "10:00:00", 10.0), ("c9", "u9", "2024-01-09", "10:00:00", 1.0)]
    path = make_db(tmp_path / "db.sqlite", [*sessions, ("s9", "u9", "2024-01-08", "10:00:00", "Email")], conversions)
    run_pipeline(path, "history", "2024-01-05", "2024-01-05", max_sessions=2)  # sends s3, s4
    _change(path, "UPDATE session_sources SET channel_name = 'Display' WHERE session_id = 's1'")  # not sent
    assert run_pipeline(path, "later", *LATER, max_sessions=2).changed_days == []
    _change(path, "UPDATE session_sources SET event_date = '2024-01-04', event_time = '11:00:00' WHERE session_id = 's1'")
    later = run_pipeline(path, "later", *LATER, max_sessions=2)
    assert later.changed_days == ["2024-01-05"], "s1 is now among the latest two: what is sent changes"
    with sqlite3.connect(path) as conn:
        assert "ranks among the latest 2" in conn.execute("SELECT detail FROM attribution_drift").fetchone()[0]


def test_a_conversion_loaded_while_the_run_reads_gets_its_whole_journey(tmp_path, monkeypatch):
    """A loader commits a new user's sessions and conversion between the copy and the staging."""
    path = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS, COSTS)
    detect = drift.detect

    def loader_commits_meanwhile(*args, **kwargs):
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO session_sources VALUES ('s51', 'u5', '2024-01-09', '08:00:00', 'Email', 0, 1, 0)")
            conn.execute("INSERT INTO conversions VALUES ('c5', 'u5', '2024-01-09', '09:00:00', 12.0)")
        return detect(*args, **kwargs)

    monkeypatch.setattr(drift, "detect", loader_commits_meanwhile)
    summary = run_pipeline(path, "r1", *LATER)
    monkeypatch.undo()
    assert (summary.conversions, summary.attributed) == (2, 2)
    fresh = make_db(tmp_path / "fresh.sqlite", SESSIONS, CONVERSIONS, COSTS)
    _change(fresh, "INSERT INTO session_sources VALUES ('s51', 'u5', '2024-01-09', '08:00:00', 'Email', 0, 1, 0)")
    _change(fresh, "INSERT INTO conversions VALUES ('c5', 'u5', '2024-01-09', '09:00:00', 12.0)")
    run_pipeline(fresh, "r1", *LATER)
    assert tables(path) == tables(fresh)


def test_the_sources_read_in_slices_of_rowids_give_the_tables_of_one_read(tmp_path, monkeypatch):
    """The extraction's pass and the spend read each statement a slice of rows (short shared locks)."""
    from ihc_attribution import schema

    whole = _history(tmp_path, "whole.sqlite")
    run_pipeline(whole, "later", *LATER, refresh_spend=True)
    monkeypatch.setattr(schema, "SLICE_ROWS", 2)
    sliced = _history(tmp_path, "sliced.sqlite")
    run_pipeline(sliced, "later", *LATER, refresh_spend=True)
    assert tables(sliced) == tables(whole)
    with sqlite3.connect(sliced) as conn:
        assert len(schema.rowid_slices(drift.Database(conn), "session_sources")) == 4


@pytest.mark.parametrize("change", [
    "UPDATE conversions SET conv_date = '2024-01-07' WHERE conv_id = 'c9'",  # moved to another day
    "DELETE FROM conversions WHERE conv_id = 'c9'",  # refunded
])
def test_an_issue_of_a_conversion_that_left_its_day_goes_with_the_re_run_of_that_day(tmp_path, change):
    path = make_db(tmp_path / "db.sqlite", SESSIONS, [*CONVERSIONS, ("c9", "u9", "2024-01-05", "10:00:00", 5.0)], COSTS)
    run_pipeline(path, "history", "2024-01-05", "2024-01-05")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT reason, conv_date FROM attribution_issues WHERE conv_id = 'c9'").fetchall() == [
            (journeys.NO_SESSIONS, "2024-01-05")]
    _change(path, change)
    run_pipeline(path, "again", "2024-01-05", "2024-01-05")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM attribution_issues WHERE conv_id = 'c9'").fetchone() == (0,)


def test_an_upgrade_records_the_journeys_of_the_attribution_already_stored(tmp_path):
    """A database of schema version 2 has credit but no attribution_journeys: the first run fills them."""
    path = _history(tmp_path, "db.sqlite")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE attribution_journeys")
        conn.execute("DELETE FROM attribution_schema_version WHERE version > 2")
    assert run_pipeline(path, "later", *LATER).changed_days == [], "the journeys stored are the sources' journeys"
    with sqlite3.connect(path) as conn:
        assert {c for (c,) in conn.execute("SELECT conv_id FROM attribution_journeys")} == {"c1", "c2", "c3"}
    _change(path, CHANGES["channel changed in place"][0])
    assert run_pipeline(path, "later", *LATER).changed_days == ["2024-01-05"]


def test_integer_session_ids_tied_at_a_second_are_cut_and_compared_as_text_ids_are(tmp_path):
    """Sessions 9 and 10 tie at the earliest second of a truncated journey: the cut keeps the one
    that sorts last as text ('9'), as with TEXT ids and on PostgreSQL, and a later run, comparing
    the journey with the sources, finds it unchanged."""
    sessions = [(9, "u1", "2024-01-01", "10:00:00", "Email"), (10, "u1", "2024-01-01", "10:00:00", "Direct Traffic"),
                (11, "u1", "2024-01-02", "10:00:00", "Email"), (20, "u2", "2024-01-05", "10:00:00", "Email")]
    conversions = [(1, "u1", "2024-01-03", "10:00:00", 10.0), (2, "u2", "2024-01-06", "10:00:00", 5.0)]
    sent = {}
    for id_type in ("TEXT", "INTEGER"):
        path = make_db(tmp_path / f"{id_type}.sqlite", sessions, conversions, [(11, 1.5)],
                       ddl=source_ddl(id_type=id_type))
        run_pipeline(path, "history", "2024-01-03", "2024-01-03", max_sessions=2)
        assert run_pipeline(path, "later", "2024-01-06", "2024-01-06", max_sessions=2).changed_days == [], id_type
        with sqlite3.connect(path) as conn:
            sent[id_type] = conn.execute(
                "SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2").fetchall()
    assert sent["INTEGER"] == sent["TEXT"] == [("1", "11", 0.5), ("1", "9", 0.5), ("2", "20", 1.0)]
