"""The final check: every conversion attributed or recorded, and what a range covered."""

from __future__ import annotations

import sqlite3

import pytest

from ihc_attribution import checks
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from tests.helpers import make_db, run_pipeline

SESSIONS = [("s1", "u1", "2023-09-02", "10:00:00", "Referral"), ("s2", "u1", "2023-09-20", "10:00:00", "Referral")]
CONVERSIONS = [("c1", "u1", "2023-09-05", "10:00:00", 10.0), ("c2", "u1", "2023-09-25", "10:00:00", 20.0)]


@pytest.mark.parametrize(
    ("start", "end", "says"),
    [
        ("2022-01-01", "2022-01-31", "lies before the first conversion in the data (2023-09-05)"),
        ("2024-01-01", "2024-01-02", "lies after the last conversion in the data (2023-09-25)"),
        ("2023-09-10", "2023-09-12", "the data holds conversions from 2023-09-05 to 2023-09-25"),
    ],
)
def test_a_range_without_conversions_says_so(tmp_path, start, end, says):
    db = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS + [("bad", "u1", "0000-00-00", "10:00:00", 1.0)])
    summary = run_pipeline(db, "r1", start, end)
    assert summary.conversions == 0
    assert summary.note.startswith("no conversions in this range") and says in summary.note
    assert "NOTE: no conversions in this range" in summary.render()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT conversions, note FROM attribution_run_results WHERE run_id = 'r1'").fetchone() == (
            0, summary.note)


def test_a_range_with_conversions_has_no_note_and_records_its_outcome(tmp_path):
    db = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS)
    summary = run_pipeline(db, "r1", "2023-09-01", "2023-09-30")
    assert (summary.conversions, summary.attributed, summary.note) == (2, 2, "")
    run_pipeline(db, "r1", "2023-09-01", "2023-09-30")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT run_id, conversions, attributed, issues, note FROM attribution_run_results").fetchall()
    assert rows == [("r1", 2, 2, 0, None)], "a re-run replaces its row"


def test_empty_conversions_table(tmp_path):
    db = make_db(tmp_path / "db.sqlite", SESSIONS, [])
    assert run_pipeline(db, "r1", "2023-09-01", "2023-09-30").note.endswith("the conversions table is empty")


def test_a_conversion_neither_attributed_nor_recorded_fails_the_check(tmp_path):
    db = make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS)
    run_pipeline(db, "r1", "2023-09-01", "2023-09-30")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM attribution_customer_journey WHERE conv_id = 'c2'")
    database = Database.connect_sqlite(str(db))
    try:
        with pytest.raises(checks.CheckError, match="1 conversions of the run are neither attributed nor recorded: c2"):
            checks.check_run(database, "r1", range_from_params({"start_date": "2023-09-01", "end_date": "2023-09-30"}))
    finally:
        database.close()
