"""The stages together, without Airflow: partial failures, resumable API stage, oversized
journeys, idempotence and convergence."""

from __future__ import annotations

import random
import shutil
import sqlite3

import pytest

from ihc_attribution import api_stage, journeys, schema
from ihc_attribution.checks import CheckError, check_run
from ihc_attribution.daterange import range_from_params
from ihc_attribution.db import Database
from ihc_attribution.ihc.errors import IhcRetriesExhaustedError
from ihc_attribution.load import LoadError, load_attribution
from tests.helpers import FakeIhcClient, expected_journeys, make_db, random_db, read_table, run_pipeline


def result_tables(path):
    with sqlite3.connect(path) as conn:
        attribution = conn.execute(
            "SELECT conv_id, session_id, ihc FROM attribution_customer_journey ORDER BY 1, 2"
        ).fetchall()
        reporting = conn.execute(
            "SELECT channel_name, date, round(cost, 6), round(ihc, 6), round(ihc_revenue, 6) "
            "FROM channel_reporting ORDER BY 1, 2"
        ).fetchall()
    return attribution, reporting


def test_every_journey_attributed_once_and_matches_recomputation(tmp_path):
    path = random_db(tmp_path / "db.sqlite", seed=1)
    summary = run_pipeline(path, "r1", "2024-01-01", "2024-01-10", max_journeys=3, max_sessions=8)
    expected = expected_journeys(path, "2024-01-01 00:00:00", "2024-01-11 00:00:00")
    got = read_table(path, "attribution_customer_journey")
    by_conv = got.groupby("conv_id")["session_id"].apply(set).to_dict()
    issues = read_table(path, "attribution_issues")
    assert by_conv == {c: s for c, s in expected.items() if s}
    assert set(issues["conv_id"]) == {c for c, s in expected.items() if not s}
    assert set(issues["reason"]) <= {journeys.NO_SESSIONS}
    assert got.groupby("conv_id")["ihc"].sum().round(9).eq(1).all()
    assert summary.conversions == len(expected)
    assert summary.attributed == len(by_conv)


def test_convergence_daily_runs_in_any_order_equal_one_range_run(tmp_path):
    base = random_db(tmp_path / "base.sqlite", seed=7)
    whole = tmp_path / "whole.sqlite"
    shutil.copy(base, whole)
    run_pipeline(whole, "range", "2024-01-01", "2024-01-10")

    daily = tmp_path / "daily.sqlite"
    shutil.copy(base, daily)
    days = [f"2024-01-{d:02d}" for d in range(1, 11)]
    order = days[:]
    random.Random(3).shuffle(order)
    for day in order + days[:3]:  # shuffled, then some days again
        # other limits pack other requests; journeys (at most 8 sessions) are never cut
        run_pipeline(daily, f"scheduled__{day}", day, day, max_journeys=2, max_sessions=8)
    assert result_tables(daily) == result_tables(whole)
    assert result_tables(whole)[0], "the comparison must not be vacuous"


def test_rerunning_the_same_run_is_idempotent(tmp_path):
    path = random_db(tmp_path / "db.sqlite", seed=2)
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10")
    first = result_tables(path)
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10")
    assert result_tables(path) == first


def test_partial_failures_are_recorded_and_the_rest_kept(tmp_path):
    path = random_db(tmp_path / "db.sqlite", seed=3)
    expected = expected_journeys(path, "2024-01-01 00:00:00", "2024-01-11 00:00:00")
    rejected = sorted(c for c, s in expected.items() if s)[:3]
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10", FakeIhcClient(reject=rejected), max_journeys=2)
    issues = read_table(path, "attribution_issues")
    attributed = set(read_table(path, "attribution_customer_journey")["conv_id"])
    assert set(issues.loc[issues["reason"] == journeys.API_REJECTED, "conv_id"]) == set(rejected)
    assert attributed == {c for c, s in expected.items() if s} - set(rejected)


def test_api_stage_resumes_without_resending_answered_requests(tmp_path):
    path = random_db(tmp_path / "db.sqlite", seed=4)
    rng = range_from_params({"start_date": "2024-01-01", "end_date": "2024-01-10"})
    db = Database.connect_sqlite(str(path))
    schema.ensure_schema(db)
    journeys.extract_journeys(db, "r1", rng)
    plan = api_stage.pack_requests(db, "r1", max_journeys=2, max_sessions=10)
    assert plan.requests > 4
    with pytest.raises(IhcRetriesExhaustedError):
        api_stage.send_requests(db, "r1", FakeIhcClient(fail_after=3), max_sessions=10)
    states = dict(db.query("SELECT status, COUNT(*) FROM attribution_stg_requests GROUP BY status"))
    assert states["done"] == 3
    with pytest.raises(LoadError, match="no answer"):
        load_attribution(db, "r1", rng)
    second = FakeIhcClient()
    summary = api_stage.send_requests(db, "r1", second, max_sessions=10)
    assert len(second.sent) == plan.requests - 3, "answered requests must not be sent again"
    assert summary.requests_already_done == 3
    load_attribution(db, "r1", rng)
    db.close()


@pytest.mark.parametrize(("policy", "attributed"), [("truncate", True), ("skip", False)])
def test_oversized_journey_policy(tmp_path, policy, attributed):
    sessions = [(f"s{i:02d}", "u1", "2024-01-01", f"10:{i:02d}:00", "Referral") for i in range(12)]
    path = make_db(tmp_path / "db.sqlite", sessions, [("c1", "u1", "2024-01-02", "10:00:00", 9.0)])
    client = FakeIhcClient()
    run_pipeline(path, "r1", "2024-01-02", "2024-01-02", client, max_sessions=5, policy=policy)
    issues = read_table(path, "attribution_issues")
    assert list(issues["reason"]) == [journeys.OVERSIZED]
    rows = read_table(path, "attribution_customer_journey")
    if attributed:
        assert sorted(rows["session_id"]) == ["s07", "s08", "s09", "s10", "s11"], "the latest sessions are kept"
        assert "truncated" in issues["detail"][0]
        sent = client.sent[0].rows
        assert [r["conversion"] for r in sent] == [0, 0, 0, 0, 1]
    else:
        assert rows.empty and not client.sent


def test_check_fails_when_a_conversion_is_lost(tmp_path):
    path = random_db(tmp_path / "db.sqlite", seed=5)
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10")
    with sqlite3.connect(path) as conn:
        victim = conn.execute("SELECT conv_id FROM attribution_customer_journey LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM attribution_customer_journey WHERE conv_id = ?", (victim,))
    db = Database.connect_sqlite(str(path))
    with pytest.raises(CheckError, match="neither attributed nor recorded"):
        check_run(db, "r1", range_from_params({"start_date": "2024-01-01", "end_date": "2024-01-10"}))
    db.close()


def test_source_tables_are_never_modified(tmp_path):
    path = random_db(tmp_path / "db.sqlite", seed=6)
    def dump():
        with sqlite3.connect(path) as conn:
            return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in schema.SOURCE_TABLES}

    before = dump()
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10")
    assert dump() == before
    assert all(before.values())


def test_empty_database_and_range_without_conversions(tmp_path):
    path = make_db(tmp_path / "db.sqlite")
    summary = run_pipeline(path, "r1", "2024-01-01", "2024-01-01", output_dir=tmp_path / "out")
    assert (summary.conversions, summary.attributed, summary.requests) == (0, 0, 0)
    csv = (tmp_path / "out" / "channel_reporting_2024-01-01_2024-01-01.csv").read_text()
    assert csv == "channel_name,date,cost,ihc,ihc_revenue,CPO,ROAS\n"


def test_old_staging_is_purged_and_results_kept(tmp_path):
    path = random_db(tmp_path / "db.sqlite", seed=8)
    run_pipeline(path, "old", "2024-01-01", "2024-01-05")
    run_pipeline(path, "new", "2024-01-06", "2024-01-10")
    db = Database.connect_sqlite(str(path))
    db.execute("UPDATE attribution_runs SET created_at = '2020-01-01 00:00:00' WHERE run_id = 'old'")
    before = result_tables(path)
    assert schema.purge_staging(db, "2021-01-01 00:00:00", keep_run_id="new") == 1
    for table in schema.STAGING_TABLES:
        runs = {r for (r,) in db.query(f"SELECT DISTINCT run_id FROM {table}")}
        assert "old" not in runs
    assert db.scalar("SELECT COUNT(*) FROM attribution_stg_conversions WHERE run_id = 'new'") > 0
    db.close()
    assert result_tables(path) == before


def test_redoing_a_run_resends_only_journeys_that_changed(tmp_path):
    path = random_db(tmp_path / "db.sqlite", seed=9)
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10", max_journeys=3)
    first = result_tables(path)
    again = FakeIhcClient()
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10", again, max_journeys=3)
    assert again.sent == [], "answers of unchanged journeys are reused"
    assert result_tables(path) == first

    with sqlite3.connect(path) as conn:  # one journey changes: its latest session moves channel
        conv, session = conn.execute(
            "SELECT conv_id, session_id FROM attribution_customer_journey ORDER BY conv_id LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE session_sources SET channel_name = 'Changed' WHERE session_id = ?", (session,))
        users_sessions = conn.execute(
            "SELECT COUNT(DISTINCT conv_id) FROM attribution_customer_journey WHERE session_id = ?", (session,)
        ).fetchone()[0]
    changed = FakeIhcClient()
    run_pipeline(path, "r1", "2024-01-01", "2024-01-10", changed, max_journeys=3)
    resent = {row["conversion_id"] for request in changed.sent for row in request.rows}
    assert conv in resent and len(resent) == users_sessions
    assert read_table(path, "channel_reporting").channel_name.eq("Changed").any()


@pytest.mark.parametrize("encoding", ["UTF-16le", "UTF-16be"])
def test_a_utf16_database_gives_the_tables_of_a_utf8_one(tmp_path, encoding):
    results = {}
    for name in ("utf8", encoding):
        path = tmp_path / f"{name}.sqlite"
        conn = sqlite3.connect(path)
        if name != "utf8":  # the encoding of a database is set before its first table
            conn.execute(f"PRAGMA encoding = '{encoding}'")
        conn.executescript("CREATE TABLE encoded (x); DROP TABLE encoded;")
        conn.close()
        random_db(path, seed=4, users=120)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA encoding").fetchone()[0] == ("UTF-8" if name == "utf8" else encoding)
        run_pipeline(path, "r1", "2024-01-01", "2024-01-10")
        results[name] = result_tables(path)
    attribution, reporting = results["utf8"]
    assert attribution and {row[0] for row in reporting} == {
        "Direct Traffic", "Paid Search Brand", "FB & IG Ads", "Organic Traffic", "Referral, Partner"
    }
    assert results[encoding] == results["utf8"]
