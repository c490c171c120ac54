"""Load: the run's answers replace the attribution and issues of its conversions, or nothing is published."""

from __future__ import annotations


import pytest

from ihc_attribution import api_stage, journeys, load, schema
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from tests.helpers import FakeIhcClient, make_db

RANGE = range_from_params({"start_date": "2024-01-10", "end_date": "2024-01-10"})
SESSIONS = [("s1", "u1", "2024-01-05", "10:00:00", "Referral"), ("s2", "u1", "2024-01-08", "10:00:00", "Referral"),
            ("s3", "u2", "2024-01-07", "10:00:00", "Direct Traffic")]
CONVERSIONS = [("c1", "u1", "2024-01-10", "12:00:00", 10.0), ("c2", "u2", "2024-01-10", "12:00:00", 5.0),
               ("c3", "u3", "2024-01-10", "12:00:00", 7.0)]


@pytest.fixture
def db(tmp_path):
    database = Database.connect_sqlite(str(make_db(tmp_path / "db.sqlite", SESSIONS, CONVERSIONS)))
    schema.ensure_schema(database)
    yield database
    database.close()


def _stage(db, client=None):
    journeys.extract_journeys(db, "r1", RANGE)
    api_stage.pack_requests(db, "r1", max_journeys=1, max_sessions=10)
    api_stage.send_requests(db, "r1", client or FakeIhcClient(), max_sessions=10)


def _rows(db, sql):
    return db.query(sql)


def test_load_publishes_answers_issues_and_the_dates_to_rebuild(db):
    _stage(db)
    summary = load.load_attribution(db, "r1", RANGE, recorded_at="2024-02-01 00:00:00")
    assert (summary.conversions_attributed, summary.rows, summary.issues) == (2, 3, 1)
    assert _rows(db, "SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2") == [
        ("c1", "s1", 0.5), ("c1", "s2", 0.5), ("c2", "s3", 1.0)]
    assert _rows(db, "SELECT conv_id, reason, run_id FROM attribution_issues") == [("c3", "no_sessions", "r1")]
    dates = [d for (d,) in _rows(db, "SELECT report_date FROM attribution_stg_report_dates ORDER BY 1")]
    assert dates == ["2024-01-05", "2024-01-07", "2024-01-08", "2024-01-10"], "credited dates and the run's own"


def test_a_reload_after_a_source_change_replaces_rows_and_rebuilds_the_dates_that_lost_credit(db):
    _stage(db)
    load.load_attribution(db, "r1", RANGE)
    db.execute("UPDATE session_sources SET event_date = '2024-01-09' WHERE session_id = 's1'")
    _stage(db)
    load.load_attribution(db, "r1", RANGE)
    assert _rows(db, "SELECT COUNT(*) FROM attribution_customer_journey WHERE conv_id = 'c1'") == [(2,)]
    dates = {d for (d,) in _rows(db, "SELECT report_date FROM attribution_stg_report_dates")}
    assert {"2024-01-05", "2024-01-09"} <= dates, "the date that lost its credit is rebuilt too"


def test_nothing_is_published_while_a_request_is_unanswered(db, tmp_path):
    journeys.extract_journeys(db, "r1", RANGE)
    api_stage.pack_requests(db, "r1", max_journeys=1, max_sessions=10)
    with pytest.raises(load.LoadError, match="2 API requests of run r1 have no answer"):
        load.load_attribution(db, "r1", RANGE)
    assert _rows(db, "SELECT COUNT(*) FROM attribution_customer_journey") == [(0,)]
    assert _rows(db, "SELECT COUNT(*) FROM attribution_issues") == [(0,)]


def test_a_journey_that_does_not_sum_to_one_stops_the_load(db):
    _stage(db)
    db.execute("UPDATE attribution_stg_results SET ihc = 0.7 WHERE session_id = 's1'")
    with pytest.raises(load.LoadError, match="1 journeys do not sum to 1, e.g. c1"):
        load.load_attribution(db, "r1", RANGE)
    assert _rows(db, "SELECT COUNT(*) FROM attribution_customer_journey") == [(0,)]
